//! `skeinctl messages|message|queues|retry|bounce`: what is queued, and operators' actions
//! on it.

use skein_proto::admin::*;

use super::{shaping, status};

use super::Client;

/// `skeinctl messages`: one page of stored messages.
#[derive(clap::Args)]
pub struct MessagesArgs {
    /// Start after this message id (a previous listing's last).
    #[arg(long, default_value = "")]
    pub after: String,
    /// How many to show; past 1000 the pages are fetched one after another.
    #[arg(long, default_value_t = 100)]
    pub limit: u32,
    /// Read this node's own state (not forwarded to the leader).
    #[arg(long)]
    pub local: bool,
    /// Only messages with a recipient in this state (queued, leased, deferred, delivered,
    /// bounced, expired, suppressed, deleted), or pending / done.
    #[arg(long)]
    pub state: Option<String>,
    /// Only this tenant's messages ("" for mail relayed by IP address).
    #[arg(long)]
    pub tenant: Option<String>,
    /// Only messages to this address.
    #[arg(long = "rcpt")]
    pub recipient: Option<String>,
    /// Only messages received at least this long ago ("1h", "2d").
    #[arg(long)]
    pub older_than: Option<skein_core::HumanDuration>,
    /// Only messages received at most this long ago.
    #[arg(long)]
    pub newer_than: Option<skein_core::HumanDuration>,
}

/// "delivered 2, deferred 1": how many recipients are in each state, in the order they occur.
fn state_counts(m: &Message) -> String {
    let mut counts: Vec<(&str, usize)> = Vec::new();
    for r in &m.recipients {
        match counts.iter_mut().find(|(s, _)| *s == r.state) {
            Some((_, n)) => *n += 1,
            None => counts.push((&r.state, 1)),
        }
    }
    let parts: Vec<String> = counts.iter().map(|(s, n)| format!("{s} {n}")).collect();
    parts.join(", ")
}

/// `skeinctl queues`: one page of queues, or sums.
#[derive(clap::Args)]
pub struct QueuesArgs {
    /// Only this tenant's ("" for mail relayed by IP address).
    #[arg(long)]
    pub tenant: Option<String>,
    /// Start after this queue (both flags; from a previous page).
    #[arg(long, default_value = "", requires = "after_domain")]
    pub after_tenant: String,
    #[arg(long, default_value = "")]
    pub after_domain: String,
    #[arg(long, default_value_t = 100)]
    pub limit: u32,
    /// Sum by tenant, domain, provider or pool instead (with what is held back).
    #[arg(long, conflicts_with_all = ["tenant", "after_tenant", "after_domain"])]
    pub by: Option<String>,
}

/// `skeinctl message ID`.
#[derive(clap::Args)]
pub struct MessageArgs {
    pub id: String,
    #[arg(long)]
    pub data: bool,
}

/// `skeinctl bounce`: what to bounce, and why.
#[derive(clap::Args)]
pub struct BounceArgs {
    #[command(flatten)]
    pub scope: Scope,
    /// Why: it goes into the DSNs.
    #[arg(long)]
    pub reason: String,
}

/// Which queued mail an action covers.
#[derive(clap::Args)]
pub struct Scope {
    /// One message (queue id).
    #[arg(long, default_value = "")]
    pub message: String,
    /// A tenant's queues ("" for mail relayed by IP address).
    #[arg(long)]
    pub tenant: Option<String>,
    /// Queues for this recipient domain.
    #[arg(long, default_value = "")]
    pub domain: String,
}

impl From<Scope> for QueueScope {
    fn from(s: Scope) -> Self {
        QueueScope {
            message_id: s.message,
            tenant: s.tenant,
            domain: s.domain,
        }
    }
}

/// A message as JSON, recipients and attempts included.
pub fn message_json(m: &Message) -> serde_json::Value {
    let mut v = serde_json::json!({
        "id": m.id, "tenant": m.tenant, "mail_from": m.mail_from, "rcpt_to": m.rcpt_to,
        "size": m.size, "received_at_ms": m.received_at_ms, "client_ip": m.client_ip,
        "helo": m.helo, "edge": m.edge, "log_index": m.log_index, "remaining": m.remaining,
    });
    if !m.dsn_for.is_empty() {
        v["dsn_for"] = m.dsn_for.clone().into();
    }
    if !m.recipients.is_empty() {
        v["recipients"] = m.recipients.iter().map(recipient_json).collect();
    }
    v
}

fn recipient_json(r: &RecipientStatus) -> serde_json::Value {
    let mut v = serde_json::json!({
        "address": r.address, "state": r.state, "attempts": r.attempts, "due_ms": r.due_ms,
        "final_at_ms": r.final_at_ms, "sender": r.sender, "source_ip": r.source_ip,
        "history": r.history.iter().map(|a| serde_json::json!({
            "at_ms": a.at_ms, "sender": a.sender, "source_ip": a.source_ip, "mx": a.mx,
            "code": a.code, "enhanced": a.enhanced, "text": a.text, "result": a.result,
        })).collect::<Vec<_>>(),
    });
    if !r.note.is_empty() {
        v["note"] = r.note.clone().into();
    }
    v
}

/// Runs `messages`.
pub async fn messages(c: &mut Client, a: MessagesArgs, json: bool) -> anyhow::Result<()> {
    let MessagesArgs {
        mut after,
        limit,
        local,
        state,
        tenant,
        recipient,
        older_than,
        newer_than,
    } = a;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64);
    let ago = |d: Option<skein_core::HumanDuration>| d.map_or(0, |d| now - d.0.as_millis() as i64);
    let mut left = limit.max(1) as usize;
    let mut shown = Vec::new();
    loop {
        let r = c
            .list_messages(ListMessagesRequest {
                after: after.clone(),
                limit: left.min(1000) as u32,
                local,
                state: state.clone().unwrap_or_default(),
                tenant: tenant.clone(),
                recipient: recipient.clone().unwrap_or_default(),
                received_after_ms: ago(newer_than),
                received_before_ms: ago(older_than),
            })
            .await
            .map_err(status)?
            .into_inner();
        left = left.saturating_sub(r.messages.len());
        shown.extend(r.messages);
        if left == 0 || r.next_after.is_empty() {
            if !r.next_after.is_empty() {
                eprintln!("(more: --after {})", r.next_after);
            }
            break;
        }
        after = r.next_after;
    }
    let r = ListMessagesResponse {
        messages: shown,
        next_after: String::new(),
    };
    for m in &r.messages {
        if json {
            println!("{}", message_json(m));
        } else {
            let state = state_counts(m);
            println!(
                "{} {:>8} {:<20} <{}> -> {}",
                m.id,
                m.size,
                state,
                m.mail_from,
                m.rcpt_to.join(", ")
            );
        }
    }
    Ok(())
}

/// Runs `message`.
pub async fn message(c: &mut Client, a: MessageArgs) -> anyhow::Result<()> {
    let MessageArgs { id, data } = a;
    let m = c
        .get_message(GetMessageRequest {
            id,
            include_data: data,
            local: false,
        })
        .await
        .map_err(status)?
        .into_inner();
    println!("{}", serde_json::to_string_pretty(&message_json(&m))?);
    if data && m.data.is_empty() && m.size > 0 {
        // A finished message keeps its envelope and history; its content goes at once.
        eprintln!(
            "skeinctl: the content of {} ({} bytes) is no longer stored: a message's content \
             is dropped once every recipient is final; its envelope and history stay",
            m.id, m.size
        );
    } else if data {
        println!("{}", String::from_utf8_lossy(&m.data));
    }
    Ok(())
}

/// Runs `queues`: per queue, or summed with `--by`.
pub async fn queues(c: &mut Client, a: QueuesArgs, json: bool) -> anyhow::Result<()> {
    let QueuesArgs {
        tenant,
        after_tenant,
        after_domain,
        limit,
        by,
    } = a;
    if let Some(by) = by {
        let r = c
            .queue_summary(QueueSummaryRequest { by: by.clone() })
            .await
            .map_err(status)?
            .into_inner();
        if !json {
            println!(
                "{by:<24} {:>7} {:>10} {:>10}",
                "queues", "recipients", "held"
            );
        }
        for row in &r.rows {
            if json {
                println!(
                    "{}",
                    serde_json::json!({
                        "key": row.key, "queues": row.queues, "recipients": row.recipients,
                        "held": row.held, "first_due_ms": row.first_due_ms,
                    })
                );
            } else {
                let key = if row.key.is_empty() { "-" } else { &row.key };
                println!(
                    "{key:<24} {:>7} {:>10} {:>10}",
                    row.queues, row.recipients, row.held
                );
            }
        }
        return Ok(());
    }
    let r = c
        .list_queues(ListQueuesRequest {
            tenant,
            after_tenant,
            after_domain,
            limit,
        })
        .await
        .map_err(status)?
        .into_inner();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64);
    for q in &r.queues {
        if json {
            println!(
                "{}",
                serde_json::json!({
                    "tenant": q.tenant, "domain": q.domain,
                    "recipients": q.recipients, "first_due_ms": q.first_due_ms,
                    "held_until_ms": q.held_until_ms, "held_by": q.held_by,
                })
            );
        } else {
            let due = match (q.first_due_ms - now) / 1000 {
                s if s <= 0 => "due now".to_string(),
                s => format!("next in {s}s"),
            };
            let tenant = if q.tenant.is_empty() { "-" } else { &q.tenant };
            let held = match (q.held_until_ms, q.held_by.as_str()) {
                (0, _) => String::new(),
                (i64::MAX, why) => format!("  held: {why}"),
                (until, why) => format!("  held: {why} until {}", shaping::ms_utc(until)),
            };
            println!(
                "{tenant:<16} {:<32} {:>8} {due}{held}",
                q.domain, q.recipients
            );
        }
    }
    if r.more && !json {
        println!(
            "(more: --after-tenant {:?} --after-domain {})",
            r.next_after_tenant, r.next_after_domain
        );
    }
    Ok(())
}

/// Runs `retry`.
pub async fn retry(c: &mut Client, scope: Scope) -> anyhow::Result<()> {
    let r = c
        .retry_now(QueueScope::from(scope))
        .await
        .map_err(status)?
        .into_inner();
    print_action(&r, "due now");
    Ok(())
}

/// Runs `bounce`.
pub async fn bounce(c: &mut Client, a: BounceArgs) -> anyhow::Result<()> {
    let BounceArgs { scope, reason } = a;
    let r = c
        .bounce_queued(BounceQueuedRequest {
            scope: Some(scope.into()),
            reason,
        })
        .await
        .map_err(status)?
        .into_inner();
    print_action(&r, "bounced");
    Ok(())
}

/// Runs `delete`.
pub async fn delete(c: &mut Client, scope: Scope) -> anyhow::Result<()> {
    let r = c
        .delete_queued(QueueScope::from(scope))
        .await
        .map_err(status)?
        .into_inner();
    print_action(&r, "deleted");
    Ok(())
}

/// Prints what a queue action did.
fn print_action(r: &QueueActionResponse, done: &str) {
    let more = if r.more {
        " (more remain: run again)"
    } else {
        ""
    };
    println!("{} recipients {done}{more}", r.recipients);
}
