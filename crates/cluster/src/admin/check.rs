//! Checks of Admin requests: each bad field gets INVALID_ARGUMENT naming it.

use skein_config::node::check_tenant_name;
use skein_proto::admin::*;
use skein_queue::DkimKeyRecord;
use tonic::Status;

use crate::ClusterError;

pub(super) fn invalid(field: &'static str, reason: impl ToString) -> Status {
    ClusterError::Invalid {
        field,
        reason: reason.to_string(),
    }
    .into()
}

/// A page size: 1-1000, 0 for the default of 100.
pub(super) fn page_limit(n: u32) -> Result<usize, Status> {
    match n {
        0 => Ok(100),
        1..=1000 => Ok(n as usize),
        n => Err(invalid("limit", format!("{n} is over 1000"))),
    }
}

/// Longest PEM private key accepted (an 8192-bit RSA key is about 6.5 KB).
pub(super) const MAX_PRIVATE_KEY: usize = 16 * 1024;

/// Checks a SetDkimKey request and builds the record (generating a key when asked).
pub(super) fn dkim_record(r: &SetDkimKeyRequest, now_ms: i64) -> Result<DkimKeyRecord, Status> {
    check_tenant_name(&r.tenant).map_err(|e| invalid("tenant", e))?;
    let domain = skein_dkim::check_domain(&r.domain).map_err(|e| invalid("domain", e))?;
    skein_dkim::check_selector(&r.selector).map_err(|e| invalid("selector", e))?;
    let pem = match (r.private_key.is_empty(), r.generate.as_str()) {
        (true, "ed25519") => skein_dkim::generate_ed25519().map_err(|e| invalid("generate", e))?,
        (true, "") => return Err(invalid("private_key", "give a PEM key or set generate")),
        (true, other) => {
            return Err(invalid(
                "generate",
                format!("{other:?}: only \"ed25519\" can be generated; pass RSA keys as PEM"),
            ))
        }
        (false, "") if r.private_key.len() > MAX_PRIVATE_KEY => {
            return Err(invalid("private_key", "longer than 16 KiB"))
        }
        (false, "") => r.private_key.clone(),
        (false, _) => {
            return Err(invalid(
                "generate",
                "give either a key or generate, not both",
            ))
        }
    };
    let key = skein_dkim::PrivateKey::from_pem(&pem).map_err(|e| invalid("private_key", e))?;
    Ok(DkimKeyRecord {
        tenant: r.tenant.clone(),
        domain,
        selector: r.selector.clone(),
        algorithm: key.algorithm().to_string(),
        dns_record: key.dns_record(),
        private_key: pem,
        created_at_ms: now_ms,
    })
}

/// A tenant name in a suppression request: a tenant's, or empty for mail relayed without AUTH.
pub(super) fn check_suppression_tenant(tenant: &str) -> Result<(), Status> {
    if tenant.is_empty() {
        return Ok(());
    }
    check_tenant_name(tenant).map_err(|e| invalid("tenant", e))
}

pub(super) fn check_address(address: &str) -> Result<(), Status> {
    let ok = (3..=320).contains(&address.len())
        && address.contains('@')
        && !address.starts_with('@')
        && !address.ends_with('@')
        && !address
            .chars()
            .any(|c| c.is_whitespace() || c.is_control() || c == '<' || c == '>');
    if ok {
        Ok(())
    } else {
        Err(invalid(
            "address",
            format!("{address:?} is not an email address"),
        ))
    }
}

/// A tenant's own suppression rule from a request, checked: spans within ten years, the
/// window covering the span.
pub(super) fn check_policy(
    r: &skein_proto::admin::SetSuppressionPolicyRequest,
) -> Result<skein_queue::TenantSuppressionPolicy, Status> {
    const TEN_YEARS_MS: u64 = 3650 * 86_400_000;
    for (field, v) in [
        ("domain_failure_span_ms", r.domain_failure_span_ms),
        ("domain_failure_window_ms", r.domain_failure_window_ms),
        ("expire_after_ms", r.expire_after_ms),
    ] {
        if v > TEN_YEARS_MS {
            return Err(invalid(field, "at most ten years"));
        }
    }
    if r.domain_failure_window_ms < r.domain_failure_span_ms {
        return Err(invalid(
            "domain_failure_window_ms",
            "must be at least domain_failure_span_ms",
        ));
    }
    if r.domain_failures > 1000 {
        return Err(invalid("domain_failures", "at most 1000 (0: never)"));
    }
    Ok(skein_queue::TenantSuppressionPolicy {
        domain_failures: r.domain_failures,
        domain_failure_span_ms: r.domain_failure_span_ms as i64,
        domain_failure_window_ms: r.domain_failure_window_ms as i64,
        expire_after_ms: r.expire_after_ms as i64,
    })
}
