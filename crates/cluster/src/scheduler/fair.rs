//! Which due recipients a scheduling round takes: queue by queue (a queue is a tenant's mail
//! to one destination domain), tenants in turn and each tenant's domains in turn, so one
//! queue's backlog never delays another queue's first attempt.
//!
//! [`fair_order`] is pure; [`select`] reads the queue index through it.

use std::collections::BTreeMap;

use skein_queue::{QueueHead, RcptRecord};

use super::view::QueueView;

/// Most ready queues one round looks at.
pub const MAX_READY_QUEUES: usize = 100_000;

/// Ready queues interleaved for fairness: the first queue of every tenant (tenants in name
/// order), then every tenant's second, and so on.
pub fn fair_order(heads: Vec<QueueHead>) -> Vec<QueueHead> {
    let mut by_tenant: BTreeMap<String, Vec<QueueHead>> = BTreeMap::new();
    for h in heads {
        by_tenant.entry(h.tenant.clone()).or_default().push(h);
    }
    let mut lists: Vec<std::vec::IntoIter<QueueHead>> =
        by_tenant.into_values().map(Vec::into_iter).collect();
    let mut out = Vec::new();
    loop {
        let before = out.len();
        for l in &mut lists {
            out.extend(l.next());
        }
        if out.len() == before {
            return out;
        }
    }
}

/// Up to `batch` recipients due by `now_ms`, taken queue by queue in [`fair_order`] starting
/// at position `*cursor` (wrapping), each queue giving an equal share but at least `quantum`.
/// They come interleaved (the first of every queue served, then every second, ...), so when
/// senders have room for only a few, those few go to different queues. `*cursor` moves past
/// the queues served (by one when all were), so the next round starts elsewhere. Queues for
/// which `blocked(tenant, domain)` holds are passed over without reading them, and so are those
/// for which `at_share(tenant, domain, ready)` holds, `ready` being the number of queues left
/// with due work (a queue holding its share of the senders' slots waits while others have
/// work; alone, it may have them all).
pub fn select(
    reader: &impl QueueView,
    now_ms: i64,
    batch: usize,
    quantum: usize,
    cursor: &mut usize,
    mut blocked: impl FnMut(&str, &str) -> bool,
    at_share: impl Fn(&str, &str, usize) -> bool,
) -> Result<Vec<RcptRecord>, skein_queue::QueueError> {
    let mut heads = reader.ready_queues(now_ms, MAX_READY_QUEUES)?;
    heads.retain(|h| !blocked(&h.tenant, &h.domain));
    let ready = heads.len();
    heads.retain(|h| !at_share(&h.tenant, &h.domain, ready));
    let order = fair_order(heads);
    if order.is_empty() {
        return Ok(Vec::new());
    }
    let share = (batch / order.len()).max(quantum).max(1);
    let start = *cursor % order.len();
    let mut taken = 0;
    let mut per_queue = Vec::new();
    for q in order.iter().cycle().skip(start).take(order.len()) {
        if taken >= batch {
            break;
        }
        let due = reader.queue_due(&q.tenant, &q.domain, now_ms, share.min(batch - taken))?;
        taken += due.len();
        per_queue.push(due.into_iter());
    }
    let served = per_queue.len();
    *cursor = start + if served < order.len() { served } else { 1 };
    let mut out = Vec::with_capacity(taken);
    while out.len() < taken {
        for q in &mut per_queue {
            out.extend(q.next());
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use openraft::storage::RaftStateMachine;
    use openraft::{CommittedLeaderId, Entry, EntryPayload, LogId};
    use skein_queue::{NewMessage, Request};

    use super::*;

    fn head(tenant: &str, domain: &str) -> QueueHead {
        QueueHead {
            tenant: tenant.into(),
            domain: domain.into(),
            due_ms: 0,
        }
    }

    #[test]
    fn tenants_take_turns_then_their_domains() {
        let order = fair_order(vec![
            head("a", "1.test"),
            head("a", "2.test"),
            head("a", "3.test"),
            head("b", "1.test"),
            head("c", "9.test"),
        ]);
        let got: Vec<String> = order
            .iter()
            .map(|q| format!("{}/{}", q.tenant, q.domain))
            .collect();
        assert_eq!(
            got,
            ["a/1.test", "b/1.test", "c/9.test", "a/2.test", "a/3.test"]
        );
        assert!(fair_order(Vec::new()).is_empty());
    }

    /// `n` messages to `domain` for `tenant`, received at `at_ms`, as one entry.
    fn enqueue(
        index: u64,
        tenant: &str,
        domain: &str,
        n: usize,
        at_ms: i64,
    ) -> Entry<skein_queue::TypeConfig> {
        Entry {
            log_id: LogId::new(CommittedLeaderId::new(1, 1), index),
            payload: EntryPayload::Normal(Request::Enqueue {
                received_at_ms: at_ms,
                messages: (0..n)
                    .map(|i| NewMessage {
                        tenant: tenant.into(),
                        mail_from: "app@example.com".into(),
                        rcpt_to: vec![format!("r{i}@{domain}")],
                        data: b"Subject: x\r\n\r\nx\r\n".to_vec().into(),
                        client_ip: String::new(),
                        helo: String::new(),
                        edge: String::new(),
                        smtputf8: false,
                        body_8bit: false,
                    })
                    .collect(),
            }),
        }
    }

    /// One tenant's backlog of 3,000 recipients for one domain, all due earlier, does not hide
    /// another tenant's one message, nor the first tenant's mail to another domain; and
    /// successive rounds go round every queue.
    #[tokio::test]
    async fn a_backlog_does_not_delay_other_queues() {
        let dir = tempfile::tempdir().unwrap();
        let (_log, mut sm, reader) = skein_queue::open(dir.path()).unwrap();
        sm.apply([enqueue(1, "big", "slow.test", 3_000, 1_000)])
            .await
            .unwrap();
        sm.apply([enqueue(2, "big", "other.test", 1, 5_000)])
            .await
            .unwrap();
        sm.apply([enqueue(3, "small", "fast.test", 1, 9_000)])
            .await
            .unwrap();
        // The global earliest-first index would hand out only the backlog.
        let earliest = reader.due(10_000, 100).unwrap();
        assert!(earliest.iter().all(|r| r.domain == "slow.test"));

        let mut cursor = 0;
        let got = select(
            &reader,
            10_000,
            100,
            50,
            &mut cursor,
            |_, _| false,
            |_, _, _| false,
        )
        .unwrap();
        let count = |d: &str| got.iter().filter(|r| r.domain == d).count();
        assert_eq!(count("fast.test"), 1, "the other tenant's message");
        assert_eq!(count("other.test"), 1, "the same tenant's other domain");
        assert!(count("slow.test") >= 50, "the backlog gets its share too");
        assert!(got.len() <= 100);
        // Interleaved: senders with room for three get one of each queue.
        let first: std::collections::BTreeSet<&str> =
            got[..3].iter().map(|r| r.domain.as_str()).collect();
        assert_eq!(first.len(), 3, "{first:?}");
        // Every round starts at another queue, even when it served them all.
        let starts: std::collections::BTreeSet<String> = (0..3)
            .map(|_| {
                select(
                    &reader,
                    10_000,
                    100,
                    50,
                    &mut cursor,
                    |_, _| false,
                    |_, _, _| false,
                )
                .unwrap()[0]
                    .domain
                    .clone()
            })
            .collect();
        assert_eq!(starts.len(), 3, "{starts:?}");

        // A round too small for every queue: the next starts where it stopped.
        let mut cursor = 0;
        let mut seen = std::collections::BTreeSet::new();
        for _ in 0..3 {
            for r in select(
                &reader,
                10_000,
                1,
                1,
                &mut cursor,
                |_, _| false,
                |_, _, _| false,
            )
            .unwrap()
            {
                seen.insert(r.domain);
            }
        }
        assert_eq!(seen.len(), 3, "{seen:?}");
    }
}
