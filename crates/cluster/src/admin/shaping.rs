//! The sending-limits part of the Admin API: requests checked and turned into
//! [`ShapingCommand`]s, records and counters turned into API messages.

use skein_proto::admin::*;
use skein_queue::{IpStatus, ShapingCommand, ShapingOutcome, ShapingState};
use skein_shaping::{
    check_name, IpMode, IpRecord, Provider, Schedule, Step, SuspendKind, Suspension,
};

use crate::ClusterError;

/// The first format that has sending limits.
pub(super) const SHAPING_FORMAT: u32 = 4;

fn invalid(field: &'static str, reason: impl Into<String>) -> ClusterError {
    ClusterError::Invalid {
        field,
        reason: reason.into(),
    }
}

/// Refuses sending-limit changes until every node reads them.
pub(super) fn check_format(format: u32) -> Result<(), ClusterError> {
    ClusterError::require_format(format, SHAPING_FORMAT, "sending limits")
}

pub(super) use skein_queue::POOL_CHOICE_FORMAT;

/// A pool or schedule name, `""` meaning the default.
fn name_or_default(field: &'static str, name: &str) -> Result<String, ClusterError> {
    if name.is_empty() {
        return Ok(skein_shaping::DEFAULT_POOL.into());
    }
    check_name(field, name).map_err(|e| invalid(field, e.reason))?;
    Ok(name.into())
}

/// An IP address in its one spelling.
pub(super) fn check_ip(ip: &str) -> Result<String, ClusterError> {
    ip.parse::<std::net::IpAddr>()
        .map(|a| a.to_string())
        .map_err(|_| invalid("ip", format!("{ip:?} is not an IP address")))
}

/// The record an AddIp request makes at `now_ms`.
pub(super) fn ip_record(
    r: &AddIpRequest,
    schedule: &Schedule,
    now_ms: i64,
) -> Result<IpRecord, ClusterError> {
    if !skein_config::sender::is_hostname(&r.hostname) {
        return Err(invalid(
            "hostname",
            format!("{:?} is not a host name", r.hostname),
        ));
    }
    let mode = if r.warm {
        IpMode::Warm
    } else {
        IpMode::Warming
    };
    Ok(IpRecord {
        ip: check_ip(&r.ip)?,
        hostname: r.hostname.to_ascii_lowercase(),
        pool: name_or_default("pool", &r.pool)?,
        schedule: schedule.name.clone(),
        mode,
        resume_to: mode,
        start_day: schedule.day(now_ms),
        sending_days: 0,
        last_sent_day: None,
        reason: clip(&r.reason),
        added_at_ms: now_ms,
    })
}

/// The schedule an AddIp request names (`""`: the default).
pub(super) fn schedule_name(r: &AddIpRequest) -> Result<String, ClusterError> {
    if r.schedule.is_empty() {
        return Ok(skein_shaping::DEFAULT_SCHEDULE.into());
    }
    check_name("schedule", &r.schedule).map_err(|e| invalid("schedule", e.reason))?;
    Ok(r.schedule.clone())
}

fn clip(reason: &str) -> String {
    reason
        .chars()
        .filter(|c| !c.is_control())
        .take(300)
        .collect()
}

/// The command a SetIpState request makes, given the IP's current record.
pub(super) fn ip_state_command(
    r: &SetIpStateRequest,
    current: &IpRecord,
) -> Result<ShapingCommand, ClusterError> {
    let (ip, reason) = (current.ip.clone(), clip(&r.reason));
    let mode = match IpAction::try_from(r.action) {
        Ok(IpAction::Pause) => IpMode::Paused,
        Ok(IpAction::Resume) if current.mode == IpMode::Paused => current.resume_to,
        Ok(IpAction::Resume) => {
            return Err(ClusterError::FailedPrecondition {
                reason: format!("{ip} is not paused"),
            })
        }
        Ok(IpAction::CompleteWarmup) => IpMode::Warm,
        Ok(IpAction::RestartWarmup) => return Ok(ShapingCommand::RestartWarmup { ip, reason }),
        Ok(IpAction::Unspecified) | Err(_) => {
            return Err(invalid(
                "action",
                "one of pause, resume, complete-warmup, restart-warmup",
            ))
        }
    };
    Ok(ShapingCommand::SetIpMode { ip, mode, reason })
}

/// The error for an outcome other than `Done`. `subject` names what the command was about:
/// the IP, or the schedule (AddIp), or the suspended thing (Resume).
pub(super) fn outcome(o: ShapingOutcome, ip: &str, subject: &str) -> Result<(), ClusterError> {
    match o {
        ShapingOutcome::Done => Ok(()),
        ShapingOutcome::IpExists => Err(ClusterError::AlreadyExists {
            what: format!("IP {ip}"),
        }),
        ShapingOutcome::IpNotFound => Err(ClusterError::NotFound {
            what: format!("IP {ip}"),
        }),
        ShapingOutcome::NotSuspended => Err(ClusterError::NotFound {
            what: format!("suspension of {subject}"),
        }),
        ShapingOutcome::ScheduleNotFound => Err(no_schedule(subject)),
    }
}

/// The error for a schedule that does not exist.
pub(super) fn no_schedule(name: &str) -> ClusterError {
    invalid(
        "schedule",
        format!("no schedule named {name:?} (skeinctl schedule list)"),
    )
}

/// An IP as the API shows it, with the (IP, provider) pairs the scheduler has backing off.
pub(super) fn ip_info(
    ip: &IpStatus,
    st: &ShapingState,
    backoffs: &[crate::scheduler::Backoff],
    now_ms: i64,
) -> IpInfo {
    let r = &ip.record;
    IpInfo {
        ip: r.ip.clone(),
        hostname: r.hostname.clone(),
        pool: r.pool.clone(),
        schedule: r.schedule.clone(),
        state: match r.mode {
            IpMode::Paused => "paused",
            _ if ip.warm => "warm",
            _ => "warming",
        }
        .into(),
        warmup_day: r.warmup_day(&ip.schedule, ip.today),
        cap_today: ip.cap,
        sent_today: ip.sent_today,
        providers: st
            .providers
            .iter()
            .map(|p| ProviderUse {
                provider: p.name.clone(),
                hourly_limit: p.hourly(ip.warm),
                sent_this_hour: ip.sent_this_hour.get(&p.name).copied().unwrap_or(0),
                backoff_until_ms: backoffs
                    .iter()
                    .find(|b| b.ip == r.ip && b.provider == p.name && b.until_ms > now_ms)
                    .map_or(0, |b| b.until_ms),
            })
            .collect(),
        reason: r.reason.clone(),
        added_at_ms: r.added_at_ms,
    }
}

/// A schedule from the API, checked.
pub(super) fn schedule(s: &WarmupSchedule) -> Result<Schedule, ClusterError> {
    let s = Schedule {
        name: s.name.clone(),
        steps: s
            .steps
            .iter()
            .map(|st| Step {
                from_day: st.from_day,
                daily: st.daily,
            })
            .collect(),
        sending_days: s.sending_days,
        idle_days: s.idle_days,
        utc_offset_minutes: s.utc_offset_minutes,
    };
    s.validate().map_err(|e| invalid(e.field, e.reason))?;
    Ok(s)
}

/// A schedule as the API shows it.
pub(super) fn schedule_proto(s: Schedule) -> WarmupSchedule {
    WarmupSchedule {
        name: s.name,
        steps: s
            .steps
            .into_iter()
            .map(|st| WarmupStep {
                from_day: st.from_day,
                daily: st.daily,
            })
            .collect(),
        sending_days: s.sending_days,
        idle_days: s.idle_days,
        utc_offset_minutes: s.utc_offset_minutes,
    }
}

/// A provider from the API, checked.
pub(super) fn provider(p: &ProviderLimits) -> Result<Provider, ClusterError> {
    let lower = |v: &[String]| {
        v.iter()
            .map(|d| d.trim_end_matches('.').to_ascii_lowercase())
            .collect()
    };
    let p = Provider {
        name: p.name.clone(),
        domains: lower(&p.domains),
        mx_suffixes: lower(&p.mx_suffixes),
        warming_hourly: p.warming_hourly,
        warm_hourly: p.warm_hourly,
        max_connections: p.max_connections,
        max_per_connection: p.max_per_connection,
    };
    if p.domains.len() + p.mx_suffixes.len() > 1000 {
        return Err(invalid("domains", "at most 1000 rules"));
    }
    p.validate().map_err(|e| invalid(e.field, e.reason))?;
    Ok(p)
}

/// A provider as the API shows it.
pub(super) fn provider_proto(p: Provider) -> ProviderLimits {
    ProviderLimits {
        name: p.name,
        domains: p.domains,
        mx_suffixes: p.mx_suffixes,
        warming_hourly: p.warming_hourly,
        warm_hourly: p.warm_hourly,
        max_connections: p.max_connections,
        max_per_connection: p.max_per_connection,
    }
}

/// A pool name for SetTenantPool (`""` or `default`: the default pool).
pub(super) fn pool(name: &str) -> Result<String, ClusterError> {
    name_or_default("pool", name)
}

/// The kind and name a Suspend or Resume request names, checked.
pub(super) fn suspended(kind: &str, name: &str) -> Result<(SuspendKind, String), ClusterError> {
    let k = SuspendKind::parse(kind).ok_or_else(|| {
        invalid(
            "kind",
            format!("{kind:?}: one of tenant, domain, provider, pool, ip"),
        )
    })?;
    let name = match k {
        SuspendKind::Ip => check_ip(name)?,
        SuspendKind::Domain => {
            let d = name.trim_end_matches('.').to_ascii_lowercase();
            if d.is_empty() || d.len() > 253 || d.contains(|c: char| c.is_whitespace() || c == '@')
            {
                return Err(invalid("name", format!("{name:?} is not a domain")));
            }
            d
        }
        SuspendKind::Tenant => {
            if name.len() > 64 || name.chars().any(char::is_control) {
                return Err(invalid("name", format!("{name:?} is not a tenant name")));
            }
            name.to_string()
        }
        SuspendKind::Provider | SuspendKind::Pool => {
            check_name("name", name).map_err(|e| invalid("name", e.reason))?;
            name.to_string()
        }
    };
    Ok((k, name))
}

/// A suspension as the API shows it.
pub(super) fn suspension_proto(s: Suspension) -> SuspensionInfo {
    SuspensionInfo {
        kind: s.kind.as_str().into(),
        name: s.name,
        until_ms: s.until_ms.unwrap_or(0),
        reason: s.reason,
        at_ms: s.at_ms,
    }
}

/// The suspension a Suspend request makes at `now_ms`.
pub(super) fn suspension(r: &SuspendRequest, now_ms: i64) -> Result<Suspension, ClusterError> {
    let (kind, name) = suspended(&r.kind, &r.name)?;
    if r.for_seconds > 10 * 365 * 86_400 {
        return Err(invalid(
            "for_seconds",
            "at most ten years (0: until resumed)",
        ));
    }
    Ok(Suspension {
        kind,
        name,
        until_ms: (r.for_seconds > 0).then(|| now_ms + r.for_seconds as i64 * 1000),
        reason: clip(&r.reason),
        at_ms: now_ms,
    })
}
