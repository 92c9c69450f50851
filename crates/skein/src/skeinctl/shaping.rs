//! `skeinctl ip|pool|schedule|provider`: the sending limits.

use clap::Subcommand;
use skein_proto::admin::*;

use super::status;

/// `skeinctl ip ...`
#[derive(Subcommand)]
pub enum IpCmd {
    /// Add a source IP (senders that can bind it then get work for it).
    Add {
        ip: String,
        /// Its EHLO name (its PTR record should give it).
        #[arg(long)]
        hostname: String,
        #[arg(long, default_value = "")]
        pool: String,
        /// Warm-up schedule ("default": the seed table).
        #[arg(long, default_value = "")]
        schedule: String,
        /// Already warm: full quota from the start.
        #[arg(long)]
        warm: bool,
        #[arg(long, default_value = "")]
        reason: String,
    },
    /// Remove an IP: it gets no new work.
    Remove { ip: String },
    /// Stop giving an IP work.
    Pause {
        ip: String,
        #[arg(long, default_value = "")]
        reason: String,
    },
    /// Give a paused IP work again.
    Resume {
        ip: String,
        #[arg(long, default_value = "")]
        reason: String,
    },
    /// Treat an IP as warm from now (full quota, warm provider limits).
    CompleteWarmup {
        ip: String,
        #[arg(long, default_value = "")]
        reason: String,
    },
    /// Start an IP's warm-up over from day 1.
    RestartWarmup {
        ip: String,
        #[arg(long, default_value = "")]
        reason: String,
    },
    /// IPs with today's cap and use, and this hour's use per provider.
    Show {
        /// Only this pool's.
        #[arg(long, default_value = "")]
        pool: String,
    },
}

/// `skeinctl pool ...`
#[derive(Subcommand)]
pub enum PoolCmd {
    /// Send a tenant's mail from a pool ("default" to go back).
    Assign { tenant: String, pool: String },
    /// Let a tenant's messages choose these pools with an `X-Skein-Pool: NAME` header (the
    /// edge strips it); none: its own pool only.
    Allow {
        tenant: String,
        #[arg(value_delimiter = ',')]
        pools: Vec<String>,
    },
}

/// `skeinctl schedule ...`
#[derive(Subcommand)]
pub enum ScheduleCmd {
    /// Add or replace a warm-up schedule.
    Set {
        name: String,
        /// Steps as DAY:DAILY, e.g. 1:1000 4:5000 7:10000 (the last is the full quota).
        #[arg(required = true, num_args = 1..)]
        steps: Vec<String>,
        /// Count only days with sending.
        #[arg(long)]
        sending_days: bool,
        /// Idle this many days: warm up again (0: never).
        #[arg(long, default_value_t = 30)]
        idle_days: u32,
        /// Where days begin, minutes east of UTC.
        #[arg(long, default_value_t = 0, allow_hyphen_values = true)]
        utc_offset_minutes: i32,
    },
    /// Every schedule.
    List,
}

/// `skeinctl provider ...`
#[derive(Subcommand)]
pub enum ProviderCmd {
    /// Add a provider, or change one (flags not given keep its current values).
    Set {
        name: String,
        /// Recipient domains it receives for (replaces the list).
        #[arg(long, value_delimiter = ',')]
        domains: Option<Vec<String>>,
        /// MX host suffixes that mean it receives a domain's mail (replaces the list).
        #[arg(long, value_delimiter = ',')]
        mx: Option<Vec<String>>,
        /// Messages an hour per IP while the IP warms up.
        #[arg(long)]
        warming_hourly: Option<u64>,
        /// Messages an hour per IP once warm.
        #[arg(long)]
        warm_hourly: Option<u64>,
        #[arg(long)]
        max_connections: Option<u32>,
        #[arg(long)]
        max_per_connection: Option<u32>,
    },
    /// Every provider with its rules and limits.
    List,
}

use super::Client;

fn print_ip(i: &IpInfo, json: bool) {
    if json {
        let providers: Vec<_> = i
            .providers
            .iter()
            .map(|p| {
                serde_json::json!({
                    "provider": p.provider, "hourly_limit": p.hourly_limit,
                    "sent_this_hour": p.sent_this_hour, "backoff_until_ms": p.backoff_until_ms,
                })
            })
            .collect();
        println!(
            "{}",
            serde_json::json!({
                "ip": i.ip, "hostname": i.hostname, "pool": i.pool, "schedule": i.schedule,
                "state": i.state, "warmup_day": i.warmup_day, "cap_today": i.cap_today,
                "sent_today": i.sent_today, "providers": providers, "reason": i.reason,
                "added_at_ms": i.added_at_ms,
            })
        );
        return;
    }
    println!(
        "{:<16} {:<8} {:<12} day {:<3} today {}/{} ({} left)  pool {} schedule {}  {}",
        i.ip,
        i.state,
        i.hostname,
        i.warmup_day,
        i.sent_today,
        i.cap_today,
        i.cap_today.saturating_sub(i.sent_today),
        i.pool,
        i.schedule,
        i.reason
    );
    let hour: Vec<String> = i
        .providers
        .iter()
        .map(|p| {
            let mut s = format!("{} {}/{}", p.provider, p.sent_this_hour, p.hourly_limit);
            if p.backoff_until_ms > 0 {
                s += &format!(" (slow down until {})", ms_utc(p.backoff_until_ms));
            }
            s
        })
        .collect();
    println!("{:<16} this hour: {}", "", hour.join(", "));
}

async fn set(c: &mut Client, r: SetIpStateRequest) -> anyhow::Result<IpInfo> {
    Ok(c.set_ip_state(r).await.map_err(status)?.into_inner())
}

/// Runs an `ip` command.
pub async fn ip(c: &mut Client, cmd: IpCmd, json: bool) -> anyhow::Result<()> {
    let state = |ip: String, action: IpAction, reason: String| SetIpStateRequest {
        ip,
        action: action as i32,
        reason,
    };
    let info = match cmd {
        IpCmd::Add {
            ip,
            hostname,
            pool,
            schedule,
            warm,
            reason,
        } => c
            .add_ip(AddIpRequest {
                ip,
                hostname,
                pool,
                schedule,
                warm,
                reason,
            })
            .await
            .map_err(status)?
            .into_inner(),
        IpCmd::Remove { ip } => {
            c.remove_ip(IpRef { ip: ip.clone() })
                .await
                .map_err(status)?;
            println!("removed {ip}");
            return Ok(());
        }
        IpCmd::Pause { ip, reason } => set(c, state(ip, IpAction::Pause, reason)).await?,
        IpCmd::Resume { ip, reason } => set(c, state(ip, IpAction::Resume, reason)).await?,
        IpCmd::CompleteWarmup { ip, reason } => {
            set(c, state(ip, IpAction::CompleteWarmup, reason)).await?
        }
        IpCmd::RestartWarmup { ip, reason } => {
            set(c, state(ip, IpAction::RestartWarmup, reason)).await?
        }
        IpCmd::Show { pool } => {
            let r = c
                .list_ips(ListIpsRequest { pool })
                .await
                .map_err(status)?
                .into_inner();
            for i in &r.ips {
                print_ip(i, json);
            }
            return Ok(());
        }
    };
    print_ip(&info, json);
    Ok(())
}

/// Runs a `pool` command.
pub async fn pool(c: &mut Client, cmd: PoolCmd) -> anyhow::Result<()> {
    match cmd {
        PoolCmd::Assign { tenant, pool } => {
            c.set_tenant_pool(SetTenantPoolRequest {
                tenant: tenant.clone(),
                pool: pool.clone(),
            })
            .await
            .map_err(status)?;
            println!("tenant {tenant:?} sends from pool {pool}");
        }
        PoolCmd::Allow { tenant, pools } => {
            let r = c
                .allow_pools(AllowPoolsRequest {
                    tenant: tenant.clone(),
                    pools,
                })
                .await
                .map_err(status)?
                .into_inner();
            println!(
                "tenant {tenant:?} sends from pool {}; by X-Skein-Pool also from: {}",
                r.pool,
                if r.allowed.is_empty() {
                    "none".to_string()
                } else {
                    r.allowed.join(", ")
                }
            );
        }
    }
    Ok(())
}

fn print_schedule(s: &WarmupSchedule, json: bool) {
    let steps: Vec<String> = s
        .steps
        .iter()
        .map(|st| format!("{}:{}", st.from_day, st.daily))
        .collect();
    if json {
        println!(
            "{}",
            serde_json::json!({
                "name": s.name, "steps": steps, "sending_days": s.sending_days,
                "idle_days": s.idle_days, "utc_offset_minutes": s.utc_offset_minutes,
            })
        );
    } else {
        println!(
            "{:<16} {}  ({} days, idle {} days, UTC{:+} min)",
            s.name,
            steps.join(" "),
            if s.sending_days {
                "sending"
            } else {
                "calendar"
            },
            s.idle_days,
            s.utc_offset_minutes
        );
    }
}

/// Parses `DAY:DAILY`.
fn step(s: &str) -> anyhow::Result<WarmupStep> {
    let (day, daily) = s
        .split_once(':')
        .ok_or_else(|| anyhow::anyhow!("step {s:?}: write DAY:DAILY, e.g. 4:5000"))?;
    Ok(WarmupStep {
        from_day: day
            .parse()
            .map_err(|_| anyhow::anyhow!("step {s:?}: {day:?} is not a day number"))?,
        daily: daily
            .replace(['_', ','], "")
            .parse()
            .map_err(|_| anyhow::anyhow!("step {s:?}: {daily:?} is not a number"))?,
    })
}

/// Runs a `schedule` command.
pub async fn schedule(c: &mut Client, cmd: ScheduleCmd, json: bool) -> anyhow::Result<()> {
    match cmd {
        ScheduleCmd::Set {
            name,
            steps,
            sending_days,
            idle_days,
            utc_offset_minutes,
        } => {
            let s = c
                .put_schedule(WarmupSchedule {
                    name,
                    steps: steps.iter().map(|s| step(s)).collect::<Result<_, _>>()?,
                    sending_days,
                    idle_days,
                    utc_offset_minutes,
                })
                .await
                .map_err(status)?
                .into_inner();
            print_schedule(&s, json);
        }
        ScheduleCmd::List => {
            let r = c
                .list_schedules(ListSchedulesRequest {})
                .await
                .map_err(status)?
                .into_inner();
            for s in &r.schedules {
                print_schedule(s, json);
            }
        }
    }
    Ok(())
}

fn print_provider(p: &ProviderLimits, json: bool) {
    if json {
        println!(
            "{}",
            serde_json::json!({
                "name": p.name, "domains": p.domains, "mx_suffixes": p.mx_suffixes,
                "warming_hourly": p.warming_hourly, "warm_hourly": p.warm_hourly,
                "max_connections": p.max_connections, "max_per_connection": p.max_per_connection,
            })
        );
    } else {
        println!(
            "{:<10} {}/h warming, {}/h warm, {} connections x {} messages  domains {}  mx {}",
            p.name,
            p.warming_hourly,
            p.warm_hourly,
            p.max_connections,
            p.max_per_connection,
            p.domains.join(","),
            p.mx_suffixes.join(",")
        );
    }
}

/// Runs a `provider` command.
pub async fn provider(c: &mut Client, cmd: ProviderCmd, json: bool) -> anyhow::Result<()> {
    match cmd {
        ProviderCmd::Set {
            name,
            domains,
            mx,
            warming_hourly,
            warm_hourly,
            max_connections,
            max_per_connection,
        } => {
            let current = c
                .list_providers(ListProvidersRequest {})
                .await
                .map_err(status)?
                .into_inner()
                .providers
                .into_iter()
                .find(|p| p.name == name);
            let base = current.unwrap_or(ProviderLimits {
                name: name.clone(),
                max_connections: 10,
                max_per_connection: 100,
                ..Default::default()
            });
            let p = ProviderLimits {
                name,
                domains: domains.unwrap_or(base.domains),
                mx_suffixes: mx.unwrap_or(base.mx_suffixes),
                warming_hourly: warming_hourly.unwrap_or(base.warming_hourly),
                warm_hourly: warm_hourly.unwrap_or(base.warm_hourly),
                max_connections: max_connections.unwrap_or(base.max_connections),
                max_per_connection: max_per_connection.unwrap_or(base.max_per_connection),
            };
            let p = c.put_provider(p).await.map_err(status)?.into_inner();
            print_provider(&p, json);
        }
        ProviderCmd::List => {
            let r = c
                .list_providers(ListProvidersRequest {})
                .await
                .map_err(status)?
                .into_inner();
            for p in &r.providers {
                print_provider(p, json);
            }
        }
    }
    Ok(())
}

fn print_suspension(s: &SuspensionInfo, json: bool) {
    if json {
        println!(
            "{}",
            serde_json::json!({
                "kind": s.kind, "name": s.name, "until_ms": s.until_ms, "reason": s.reason,
                "at_ms": s.at_ms,
            })
        );
    } else {
        let until = match s.until_ms {
            0 => "until resumed".to_string(),
            ms => format!("until {}", ms_utc(ms)),
        };
        println!("{:<8} {:<32} {until}  {}", s.kind, s.name, s.reason);
    }
}

/// Unix ms as `YYYY-MM-DD HH:MM UTC`.
pub fn ms_utc(ms: i64) -> String {
    let (days, rem) = (
        ms.div_euclid(86_400_000),
        ms.rem_euclid(86_400_000) / 60_000,
    );
    // Days to a civil date (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!("{y:04}-{m:02}-{d:02} {:02}:{:02} UTC", rem / 60, rem % 60)
}

/// Runs `suspend`.
pub async fn suspend(c: &mut Client, r: SuspendRequest, json: bool) -> anyhow::Result<()> {
    let s = c.suspend(r).await.map_err(status)?.into_inner();
    print_suspension(&s, json);
    Ok(())
}

/// Runs `resume`.
pub async fn resume(c: &mut Client, kind: String, name: String) -> anyhow::Result<()> {
    c.resume(ResumeRequest {
        kind: kind.clone(),
        name: name.clone(),
    })
    .await
    .map_err(status)?;
    println!("resumed {kind} {name}");
    Ok(())
}

/// Runs `suspensions`.
pub async fn suspensions(c: &mut Client, json: bool) -> anyhow::Result<()> {
    let r = c
        .list_suspensions(ListSuspensionsRequest {})
        .await
        .map_err(status)?
        .into_inner();
    for s in &r.suspensions {
        print_suspension(s, json);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn steps_parse_or_say_what_is_wrong() {
        let s = step("4:5,000").unwrap();
        assert_eq!((s.from_day, s.daily), (4, 5_000));
        assert!(step("4").unwrap_err().to_string().contains("DAY:DAILY"));
        assert!(step("x:1").unwrap_err().to_string().contains("day number"));
    }

    #[test]
    fn times_print_as_utc_dates() {
        assert_eq!(ms_utc(0), "1970-01-01 00:00 UTC");
        // 2026-11-30 09:57 UTC.
        assert_eq!(ms_utc(1_796_032_620_000), "2026-11-30 09:57 UTC");
        assert_eq!(ms_utc(951_782_400_000), "2000-02-29 00:00 UTC");
    }
}
