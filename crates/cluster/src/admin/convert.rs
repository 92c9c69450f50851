//! Replicated records as Admin API messages.

use skein_proto::admin::*;
use skein_queue::{
    AttemptResult, DkimKeyRecord, MessageRecord, RcptRecord, RcptState, SuppressionEntry,
    TenantRecord,
};

pub(super) fn to_proto(m: MessageRecord, data: Option<Vec<u8>>) -> Message {
    Message {
        recipients: Vec::new(),
        dsn_for: m.dsn_for.unwrap_or_default(),
        remaining: m.remaining,
        id: m.id,
        tenant: m.tenant,
        mail_from: m.mail_from,
        rcpt_to: m.rcpt_to,
        size: m.size,
        received_at_ms: m.received_at_ms,
        client_ip: m.client_ip,
        helo: m.helo,
        edge: m.edge,
        log_index: m.log_index,
        data: data.unwrap_or_default(),
    }
}

pub(super) fn tenant_proto(t: TenantRecord) -> Tenant {
    Tenant {
        name: t.name,
        username: t.username,
        enabled: t.enabled,
        created_at_ms: t.created_at_ms,
        dsn: t.dsn,
    }
}

pub(super) fn rcpt_proto(r: RcptRecord) -> RecipientStatus {
    let (sender, source_ip) = match &r.state {
        RcptState::Leased(l) => (l.sender.clone(), l.source_ip.clone()),
        _ => Default::default(),
    };
    RecipientStatus {
        address: r.address,
        state: r.state.name().into(),
        attempts: r.attempts,
        due_ms: if r.state.is_final() { 0 } else { r.due_ms },
        final_at_ms: r.final_at_ms.unwrap_or(0),
        sender,
        source_ip,
        history: r
            .history
            .into_iter()
            .map(|a| Attempt {
                at_ms: a.at_ms,
                sender: a.sender,
                source_ip: a.source_ip,
                mx: a.mx,
                code: u32::from(a.reply.code),
                enhanced: a.reply.enhanced,
                text: a.reply.text,
                result: match a.result {
                    AttemptResult::Delivered => "delivered",
                    AttemptResult::Transient => "transient",
                    AttemptResult::Permanent => "permanent",
                    AttemptResult::Throttled => "throttled",
                }
                .into(),
            })
            .collect(),
        note: String::new(),
    }
}

pub(super) fn suppression_proto(e: SuppressionEntry) -> Suppression {
    let s = e.record;
    Suppression {
        tenant: s.tenant,
        address: s.address,
        reason: s.reason,
        at_ms: s.at_ms,
        expires_at_ms: e.expires_at_ms.unwrap_or(0),
    }
}

pub(super) fn dkim_key_proto(k: DkimKeyRecord) -> DkimKey {
    DkimKey {
        dns_name: format!("{}._domainkey.{}", k.selector, k.domain),
        tenant: k.tenant,
        domain: k.domain,
        selector: k.selector,
        algorithm: k.algorithm,
        dns_record: k.dns_record,
        created_at_ms: k.created_at_ms,
    }
}

/// The note `skeinctl message` shows for a recipient: the suppression list entry that
/// stopped a suppressed one, or a bounced one's count towards suppression.
pub(super) fn suppression_note(
    reader: &skein_queue::QueueReader,
    r: &RcptRecord,
) -> Result<String, crate::ClusterError> {
    let tenant = skein_queue::skein_shaping::base_tenant(&r.tenant);
    let date = skein_core::date::rfc5322;
    let list = match tenant {
        "" => "the suppression list of relayed mail".to_string(),
        t => format!("tenant {t}'s suppression list"),
    };
    Ok(match r.state {
        RcptState::Suppressed => match reader.suppression(tenant, &r.address)? {
            Some(e) => {
                let lapses = match e.expires_at_ms {
                    Some(at) => format!(", until {}", date(at)),
                    None => String::new(),
                };
                format!(
                    "on {list} since {}{lapses}: {}",
                    date(e.record.at_ms),
                    e.record.reason
                )
            }
            None => format!("was on {list} (since removed)"),
        },
        RcptState::Bounced => match reader.strikes(tenant, &r.address)? {
            Some(s) => format!(
                "{} domain-level bounces of this address since {} count towards suppressing it",
                s.count,
                date(s.first_ms)
            ),
            None => String::new(),
        },
        _ => String::new(),
    })
}

/// A tenant's suppression rule as the Admin API shows it (`None`: the configuration's).
pub(super) fn policy_proto(
    tenant: String,
    own: Option<skein_queue::TenantSuppressionPolicy>,
) -> SuppressionPolicy {
    match own {
        Some(p) => SuppressionPolicy {
            tenant,
            own: true,
            domain_failures: p.domain_failures,
            domain_failure_span_ms: p.domain_failure_span_ms as u64,
            domain_failure_window_ms: p.domain_failure_window_ms as u64,
            expire_after_ms: p.expire_after_ms as u64,
        },
        None => SuppressionPolicy {
            tenant,
            ..Default::default()
        },
    }
}
