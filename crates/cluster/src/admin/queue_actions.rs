//! Operators' actions on queued mail: retry now, bounce. Both are ordinary scheduler decisions
//! (`Deliver` entries of `Report` ops without a lease), so they apply like any other outcome:
//! a leased recipient is left to its sender, a bounce gets its DSN.

use skein_proto::admin::{QueueActionResponse, QueueScope};
use skein_queue::{
    AttemptRecord, AttemptResult, DeliveryOp, Disposition, QueueReader, QueueStats, RcptRecord,
    Reply, Request, Response,
};

use crate::route::Cluster;
use crate::ClusterError;

/// Most recipients one call acts on.
pub(super) const MAX_RECIPIENTS: usize = 100_000;
/// Recipients per Raft entry (each bounce may add a DSN: well within an entry's ids).
const PER_ENTRY: usize = 1_000;

fn invalid(field: &'static str, reason: impl Into<String>) -> ClusterError {
    ClusterError::Invalid {
        field,
        reason: reason.into(),
    }
}

/// Checks a scope: a message id, or a tenant and/or a domain.
pub(super) fn check(scope: &QueueScope) -> Result<(), ClusterError> {
    let any = !scope.message_id.is_empty() || scope.tenant.is_some() || !scope.domain.is_empty();
    if !any {
        return Err(invalid(
            "scope",
            "name a message id, a tenant or a domain (all of the queue is not an option)",
        ));
    }
    if scope.message_id.len() > 64 || scope.domain.len() > 253 {
        return Err(invalid("scope", "message id or domain too long"));
    }
    Ok(())
}

/// The unfinished recipients in `scope`, at most `limit`; whether there were more.
pub(super) fn recipients(
    reader: &QueueReader,
    scope: &QueueScope,
    limit: usize,
) -> Result<(Vec<RcptRecord>, bool), ClusterError> {
    let domain = scope.domain.trim_end_matches('.').to_ascii_lowercase();
    let mut out = Vec::new();
    if !scope.message_id.is_empty() {
        if reader.get_message(&scope.message_id, false)?.is_none() {
            return Err(ClusterError::NotFound {
                what: format!("message {}", scope.message_id),
            });
        }
        out = reader
            .rcpts(&scope.message_id)?
            .into_iter()
            .filter(|r| !r.state.is_final())
            .filter(|r| domain.is_empty() || r.domain == domain)
            .filter(|r| scope.tenant.as_ref().is_none_or(|t| &r.tenant == t))
            .collect();
    } else {
        each_queue(reader, |q| {
            let tenant_ok = scope.tenant.as_ref().is_none_or(|t| &q.tenant == t);
            if tenant_ok && (domain.is_empty() || q.domain == domain) {
                let room = limit + 1 - out.len();
                out.extend(reader.queue_due(&q.tenant, &q.domain, i64::MAX, room)?);
            }
            Ok(out.len() <= limit)
        })?;
    }
    let more = out.len() > limit;
    out.truncate(limit);
    Ok((out, more))
}

/// Calls `f` with every queue in order, a page at a time, until it returns `false`.
pub(super) fn each_queue(
    reader: &QueueReader,
    mut f: impl FnMut(QueueStats) -> Result<bool, ClusterError>,
) -> Result<(), ClusterError> {
    let mut after: Option<(String, String)> = None;
    loop {
        let page = reader.queues(after.as_ref().map(|(t, d)| (t.as_str(), d.as_str())), 1000)?;
        let Some(last) = page.last() else {
            return Ok(());
        };
        after = Some((last.tenant.clone(), last.domain.clone()));
        for q in page {
            if !f(q)? {
                return Ok(());
            }
        }
    }
}

/// Proposes `op` for the unfinished recipients in `scope` (at most [`MAX_RECIPIENTS`]): how
/// many it applied to, and whether more remain.
pub(super) async fn act(
    cluster: &Cluster,
    mta: &str,
    scope: &QueueScope,
    op: impl Fn(&RcptRecord, i64) -> DeliveryOp,
) -> Result<QueueActionResponse, ClusterError> {
    let (rcpts, more) = recipients(&cluster.reader, scope, MAX_RECIPIENTS)?;
    let recipients = apply(cluster, mta, &rcpts, op).await?;
    Ok(QueueActionResponse { recipients, more })
}

/// Proposes `op` for every recipient, a thousand per entry; returns how many applied.
pub(super) async fn apply(
    cluster: &Cluster,
    mta: &str,
    rcpts: &[RcptRecord],
    op: impl Fn(&RcptRecord, i64) -> DeliveryOp,
) -> Result<u64, ClusterError> {
    let mut applied = 0;
    for chunk in rcpts.chunks(PER_ENTRY) {
        let now_ms = cluster.clock.now_ms().max(cluster.reader.clock_ms()?);
        let ops = chunk.iter().map(|r| op(r, now_ms)).collect();
        let r = cluster
            .propose(Request::Deliver {
                now_ms,
                mta: mta.to_string(),
                ops,
            })
            .await?;
        match r.data {
            Response::Delivered { applied: a, .. } => applied += a.len() as u64,
            other => return Err(ClusterError::Raft(format!("unexpected response {other:?}"))),
        }
    }
    Ok(applied)
}

/// Due at once, no attempt counted.
pub(super) fn retry_now(r: &RcptRecord, now_ms: i64) -> DeliveryOp {
    DeliveryOp::Report {
        lease: None,
        rcpt: r.key.clone(),
        attempt: None,
        disposition: Disposition::Retry {
            at_ms: now_ms,
            counted: false,
        },
    }
}

/// Deleted by the operator: no attempt, no DSN.
pub(super) fn delete(r: &RcptRecord, _now_ms: i64) -> DeliveryOp {
    DeliveryOp::Report {
        lease: None,
        rcpt: r.key.clone(),
        attempt: None,
        disposition: Disposition::Delete,
    }
}

/// A bounce by the operator, recorded as an attempt so the DSN and the history say why.
pub(super) fn bounce(reason: &str) -> impl Fn(&RcptRecord, i64) -> DeliveryOp + '_ {
    move |r, now_ms| DeliveryOp::Report {
        lease: None,
        rcpt: r.key.clone(),
        attempt: Some(AttemptRecord {
            at_ms: now_ms,
            sender: "operator".into(),
            source_ip: String::new(),
            mx: String::new(),
            reply: Reply {
                code: 550,
                enhanced: "5.0.0".into(),
                text: format!("bounced by the operator: {reason}"),
            },
            result: AttemptResult::Permanent,
        }),
        disposition: Disposition::Bounce { suppress: false },
    }
}
