//! Replicated records as Admin API messages.

use skein_proto::admin::*;
use skein_queue::{
    AttemptResult, DkimKeyRecord, MessageRecord, RcptRecord, RcptState, SuppressionRecord,
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
    }
}

pub(super) fn suppression_proto(s: SuppressionRecord) -> Suppression {
    Suppression {
        tenant: s.tenant,
        address: s.address,
        reason: s.reason,
        at_ms: s.at_ms,
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
