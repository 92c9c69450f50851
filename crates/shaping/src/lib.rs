//! Sending limits as data and pure rules.
//!
//! A source IP warms up day by day along a [`Schedule`] (a daily cap per warm-up day), and
//! sends to each [`Provider`] (Gmail, Yahoo, ...) at most its hourly limit, one limit while
//! the IP warms and another once it is warm. Which provider receives a recipient is decided by
//! [`classify`] from the recipient's domain (and, when known, its MX host).
//!
//! Everything here is a record the cluster replicates or a pure function of records and a
//! time: the queue's state machine re-checks caps with these functions when it applies a
//! lease, and the scheduler plans with the same ones, so both always agree. Times are Unix
//! milliseconds; there is no clock in this crate.
//!
//! The defaults ([`Schedule::default`], [`default_providers`]) follow the seed tables the
//! project grew from: days 1-3 1,000 a day, 4-6 5,000, 7-10 10,000, 11-14 25,000, 15-20
//! 50,000, from day 21 the IP's full quota; Gmail 500 an hour per IP while warming and 5,000
//! warm, Yahoo 1,000 / 10,000, Outlook 500 / 3,000, AOL 500 / 5,000, iCloud 500 / 2,000.
#![forbid(unsafe_code)]
#![warn(missing_docs)]

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// Milliseconds in an hour.
pub const HOUR_MS: i64 = 3_600_000;
/// Milliseconds in a day.
pub const DAY_MS: i64 = 24 * HOUR_MS;

/// The name of the pool IPs and tenants belong to unless told otherwise.
pub const DEFAULT_POOL: &str = "default";
/// Separates a tenant from the pool a message chose (`X-Skein-Pool`): mail of tenant `acme`
/// that asked for pool `bulk` is queued as the stream `acme+bulk` (tenant names never hold a
/// `+`), so it waits in queues of its own and a spent pool never holds the tenant's other mail.
pub const STREAM_SEPARATOR: char = '+';

/// The stream of `tenant`'s mail that asked for `pool`.
pub fn stream(tenant: &str, pool: &str) -> String {
    format!("{tenant}{STREAM_SEPARATOR}{pool}")
}

/// The tenant a queue's tenant (a tenant, or one of its streams) belongs to.
pub fn base_tenant(tenant: &str) -> &str {
    tenant
        .split_once(STREAM_SEPARATOR)
        .map_or(tenant, |(base, _)| base)
}

/// The pool a queue's tenant sends from: a stream's own, else the tenant's (`pools`), else
/// the default pool.
pub fn pool_for<'a>(tenant: &'a str, pools: &'a BTreeMap<String, String>) -> &'a str {
    match tenant.split_once(STREAM_SEPARATOR) {
        Some((_, pool)) => pool,
        None => pools.get(tenant).map_or(DEFAULT_POOL, String::as_str),
    }
}

/// The name of the schedule IPs follow unless told otherwise.
pub const DEFAULT_SCHEDULE: &str = "default";
/// The provider class of every domain no provider claims.
pub const DEFAULT_PROVIDER: &str = "default";

/// One step of a warm-up schedule: from warm-up day `from_day` (1-based) on, `daily` a day.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Step {
    /// First warm-up day this cap applies to (1 = the first day).
    pub from_day: u32,
    /// Messages (recipients) a day.
    pub daily: u64,
}

/// A named warm-up schedule. The last step is the IP's full quota: an IP that reached it is
/// warm.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Schedule {
    /// Name.
    pub name: String,
    /// Steps by increasing `from_day`, the first from day 1.
    pub steps: Vec<Step>,
    /// Count only days on which the IP sent (true) or every calendar day since the start.
    pub sending_days: bool,
    /// An IP that sent nothing for this many days starts warming up again (0: never).
    pub idle_days: u32,
    /// Where days begin: minutes east of UTC (e.g. -300 for New York winter time).
    pub utc_offset_minutes: i32,
}

impl Default for Schedule {
    fn default() -> Self {
        let step = |from_day, daily| Step { from_day, daily };
        Self {
            name: DEFAULT_SCHEDULE.into(),
            steps: vec![
                step(1, 1_000),
                step(4, 5_000),
                step(7, 10_000),
                step(11, 25_000),
                step(15, 50_000),
                step(21, 100_000),
            ],
            sending_days: false,
            idle_days: 30,
            utc_offset_minutes: 0,
        }
    }
}

/// Why a schedule or provider is not acceptable.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Invalid {
    /// The field at fault.
    pub field: &'static str,
    /// What is wrong with it.
    pub reason: String,
}

impl std::fmt::Display for Invalid {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.field, self.reason)
    }
}

impl std::error::Error for Invalid {}

fn invalid(field: &'static str, reason: impl Into<String>) -> Invalid {
    Invalid {
        field,
        reason: reason.into(),
    }
}

/// A name for a pool, schedule or provider: 1-64 of a-z, 0-9, `-`, `_`, `.`.
pub fn check_name(field: &'static str, name: &str) -> Result<(), Invalid> {
    let ok = (1..=64).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"-_.".contains(&b));
    if ok {
        Ok(())
    } else {
        Err(invalid(
            field,
            format!("{name:?}: use 1-64 of a-z, 0-9, '-', '_', '.'"),
        ))
    }
}

impl Schedule {
    /// Checks the schedule: a name, steps from day 1 by strictly increasing day and never
    /// decreasing caps, an offset within a day.
    pub fn validate(&self) -> Result<(), Invalid> {
        check_name("name", &self.name)?;
        let first = self
            .steps
            .first()
            .ok_or_else(|| invalid("steps", "at least one step"))?;
        if first.from_day != 1 {
            return Err(invalid("steps", "the first step must start on day 1"));
        }
        if self.steps.len() > 100 {
            return Err(invalid("steps", "at most 100 steps"));
        }
        for w in self.steps.windows(2) {
            if w[1].from_day <= w[0].from_day {
                return Err(invalid("steps", "days must increase from step to step"));
            }
            if w[1].daily < w[0].daily {
                return Err(invalid("steps", "daily caps must not decrease"));
            }
        }
        if self.steps.iter().any(|s| s.daily == 0) {
            return Err(invalid("steps", "daily caps must be at least 1"));
        }
        if self.utc_offset_minutes.abs() > 14 * 60 {
            return Err(invalid("utc_offset_minutes", "must be within ±840"));
        }
        Ok(())
    }

    /// The day (days since 1970-01-01 in this schedule's offset) that `t_ms` falls in.
    pub fn day(&self, t_ms: i64) -> i64 {
        (t_ms + i64::from(self.utc_offset_minutes) * 60_000).div_euclid(DAY_MS)
    }

    /// When day `day` begins, Unix ms.
    pub fn day_start_ms(&self, day: i64) -> i64 {
        day * DAY_MS - i64::from(self.utc_offset_minutes) * 60_000
    }

    /// The full quota (the last step's cap).
    pub fn full_quota(&self) -> u64 {
        self.steps.last().map_or(0, |s| s.daily)
    }

    /// The cap on warm-up day `warmup_day` (1-based).
    pub fn cap_on(&self, warmup_day: u32) -> u64 {
        self.steps
            .iter()
            .take_while(|s| s.from_day <= warmup_day.max(1))
            .last()
            .map_or(0, |s| s.daily)
    }

    /// The warm-up day on which the full quota begins.
    pub fn warm_from_day(&self) -> u32 {
        self.steps.last().map_or(1, |s| s.from_day)
    }
}

/// Where an IP stands, as an operator set it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum IpMode {
    /// Follows its schedule.
    Warming,
    /// Warm-up completed by an operator: the full quota and warm provider limits.
    Warm,
    /// Gets no work until resumed.
    Paused,
}

/// A source IP as the cluster knows it: the truth about where mail may come from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IpRecord {
    /// The address.
    pub ip: String,
    /// Its EHLO name (and the name its PTR record should give).
    pub hostname: String,
    /// The pool it belongs to.
    pub pool: String,
    /// Its warm-up schedule's name.
    pub schedule: String,
    /// What an operator set.
    pub mode: IpMode,
    /// The mode to return to when resumed.
    pub resume_to: IpMode,
    /// The day (in its schedule's days) its warm-up started.
    pub start_day: i64,
    /// Days on which it sent since then (for schedules that count sending days).
    pub sending_days: u32,
    /// The last day it sent, if it has since its warm-up started.
    pub last_sent_day: Option<i64>,
    /// Why an operator last changed it.
    pub reason: String,
    /// When it was added, Unix ms.
    pub added_at_ms: i64,
}

impl IpRecord {
    /// The warm-up day (1-based) it is on during `today`.
    pub fn warmup_day(&self, s: &Schedule, today: i64) -> u32 {
        if s.sending_days {
            let today_counts = self.last_sent_day != Some(today);
            self.sending_days
                .saturating_add(u32::from(today_counts))
                .max(1)
        } else {
            u32::try_from((today - self.start_day + 1).max(1)).unwrap_or(u32::MAX)
        }
    }

    /// Whether it is idle long enough (by its schedule) that its warm-up starts over today.
    pub fn idle_restart(&self, s: &Schedule, today: i64) -> bool {
        s.idle_days > 0
            && self.mode != IpMode::Paused
            && self
                .last_sent_day
                .is_some_and(|d| today - d > i64::from(s.idle_days))
    }

    /// Whether it counts as warm during `today`: completed by an operator, or past its
    /// schedule's last step.
    pub fn is_warm(&self, s: &Schedule, today: i64) -> bool {
        self.mode == IpMode::Warm
            || (!self.idle_restart(s, today) && self.warmup_day(s, today) >= s.warm_from_day())
    }

    /// Its cap for `today`: nothing while paused, the full quota when warm, else its schedule's
    /// step (day 1 again when idle long enough).
    pub fn daily_cap(&self, s: &Schedule, today: i64) -> u64 {
        match self.mode {
            IpMode::Paused => 0,
            IpMode::Warm => s.full_quota(),
            IpMode::Warming if self.idle_restart(s, today) => s.cap_on(1),
            IpMode::Warming => s.cap_on(self.warmup_day(s, today)),
        }
    }

    /// The record after it sent on `today`: its warm-up restarts first if it was idle long
    /// enough, and a new sending day is counted.
    pub fn sent_on(&self, s: &Schedule, today: i64) -> IpRecord {
        let mut r = self.clone();
        if r.idle_restart(s, today) {
            r.start_day = today;
            r.sending_days = 0;
        }
        if r.last_sent_day != Some(today) {
            r.sending_days = r.sending_days.saturating_add(1);
            r.last_sent_day = Some(today);
        }
        r
    }
}

/// A receiving provider and its limits per source IP.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Provider {
    /// Name (`gmail`, `yahoo`, ...).
    pub name: String,
    /// Recipient domains it receives for (a rule matches the domain and its subdomains).
    pub domains: Vec<String>,
    /// MX host suffixes that mean it receives a domain's mail.
    pub mx_suffixes: Vec<String>,
    /// Messages an hour per IP while the IP warms up.
    pub warming_hourly: u64,
    /// Messages an hour per IP once warm.
    pub warm_hourly: u64,
    /// Connections at once per IP.
    pub max_connections: u32,
    /// Messages per connection.
    pub max_per_connection: u32,
}

impl Provider {
    /// Checks the provider: a name, lower-case rules, limits of at least 1.
    pub fn validate(&self) -> Result<(), Invalid> {
        check_name("name", &self.name)?;
        for d in self.domains.iter().chain(&self.mx_suffixes) {
            if d.is_empty()
                || d.len() > 253
                || d.contains(char::is_whitespace)
                || *d != d.to_ascii_lowercase()
            {
                return Err(invalid(
                    "domains",
                    format!("{d:?} is not a lower-case domain"),
                ));
            }
        }
        if self.warming_hourly == 0 || self.warm_hourly == 0 {
            return Err(invalid("hourly", "hourly limits must be at least 1"));
        }
        if self.max_connections == 0 || self.max_per_connection == 0 {
            return Err(invalid(
                "connections",
                "connection limits must be at least 1",
            ));
        }
        Ok(())
    }

    /// Its hourly limit for an IP that is warm or not.
    pub fn hourly(&self, warm: bool) -> u64 {
        if warm {
            self.warm_hourly
        } else {
            self.warming_hourly
        }
    }
}

/// The providers shipped by default, the default class last.
pub fn default_providers() -> Vec<Provider> {
    let p = |name: &str, domains: &[&str], mx: &[&str], warming, warm| Provider {
        name: name.into(),
        domains: domains.iter().map(|s| s.to_string()).collect(),
        mx_suffixes: mx.iter().map(|s| s.to_string()).collect(),
        warming_hourly: warming,
        warm_hourly: warm,
        max_connections: 10,
        max_per_connection: 100,
    };
    vec![
        p(
            "gmail",
            &["gmail.com", "googlemail.com"],
            &["google.com", "googlemail.com"],
            500,
            5_000,
        ),
        p(
            "yahoo",
            &[
                "yahoo.com",
                "ymail.com",
                "rocketmail.com",
                "yahoo.co.uk",
                "yahoo.fr",
                "yahoo.de",
            ],
            &["yahoodns.net"],
            1_000,
            10_000,
        ),
        p(
            "outlook",
            &[
                "outlook.com",
                "hotmail.com",
                "live.com",
                "msn.com",
                "hotmail.co.uk",
            ],
            &["outlook.com", "olc.protection.outlook.com"],
            500,
            3_000,
        ),
        p("aol", &["aol.com", "aim.com"], &["aol.com"], 500, 5_000),
        p(
            "icloud",
            &["icloud.com", "me.com", "mac.com"],
            &["icloud.com"],
            500,
            2_000,
        ),
        p(DEFAULT_PROVIDER, &[], &[], 1_000, 20_000),
    ]
}

/// The provider receiving mail for `domain` (lower-case), whose MX host is `mx` when known:
/// the provider with the longest domain rule matching it; failing that, the one with the
/// longest MX suffix matching `mx`; failing that, the default class. Operators' providers
/// come in `providers`; the default class is [`DEFAULT_PROVIDER`] if listed, or the shipped one.
pub fn classify<'a>(providers: &'a [Provider], domain: &str, mx: Option<&str>) -> &'a Provider {
    let mx = mx.map(|m| m.trim_end_matches('.').to_ascii_lowercase());
    by_domain(providers, domain)
        .or_else(|| {
            mx.as_deref()
                .and_then(|m| longest_match(providers, |p| &p.mx_suffixes, m))
        })
        .or_else(|| providers.iter().find(|p| p.name == DEFAULT_PROVIDER))
        .unwrap_or_else(|| default_class())
}

/// The provider a domain rule names for `domain` (lower-case), if any: such a domain is
/// classified without knowing its MX host.
pub fn by_domain<'a>(providers: &'a [Provider], domain: &str) -> Option<&'a Provider> {
    longest_match(providers, |p| &p.domains, domain)
}

/// The provider with the longest of its `rules` that `name` is, or is a subdomain of.
fn longest_match<'a>(
    providers: &'a [Provider],
    rules: fn(&Provider) -> &Vec<String>,
    name: &str,
) -> Option<&'a Provider> {
    fn suffix_of(name: &str, rule: &str) -> bool {
        name == rule
            || (name.len() > rule.len()
                && name.ends_with(rule)
                && name.as_bytes()[name.len() - rule.len() - 1] == b'.')
    }
    providers
        .iter()
        .filter_map(|p| {
            rules(p)
                .iter()
                .filter(|r| suffix_of(name, r))
                .map(|r| r.len())
                .max()
                .map(|len| (len, p))
        })
        .max_by_key(|(len, _)| *len)
        .map(|(_, p)| p)
}

/// The shipped default class.
fn default_class() -> &'static Provider {
    static DEFAULT: std::sync::OnceLock<Provider> = std::sync::OnceLock::new();
    DEFAULT.get_or_init(|| {
        default_providers()
            .pop()
            .expect("the default class is shipped")
    })
}

/// What an operator's suspension covers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum SuspendKind {
    /// A tenant's mail ("" for mail relayed by IP address).
    Tenant,
    /// Mail to a recipient domain.
    Domain,
    /// Mail to a provider's domains.
    Provider,
    /// Mail sent from a pool's IPs.
    Pool,
    /// One source IP.
    Ip,
}

impl SuspendKind {
    /// Its name in the API and CLI.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Tenant => "tenant",
            Self::Domain => "domain",
            Self::Provider => "provider",
            Self::Pool => "pool",
            Self::Ip => "ip",
        }
    }

    /// The kind named `s`.
    pub fn parse(s: &str) -> Option<Self> {
        [
            Self::Tenant,
            Self::Domain,
            Self::Provider,
            Self::Pool,
            Self::Ip,
        ]
        .into_iter()
        .find(|k| k.as_str() == s)
    }
}

/// An operator's suspension: nothing covered is sent until `until_ms` (or until resumed).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Suspension {
    /// What it covers.
    pub kind: SuspendKind,
    /// The tenant, domain, provider, pool or IP.
    pub name: String,
    /// When it ends by itself, Unix ms; `None` until resumed.
    pub until_ms: Option<i64>,
    /// Why.
    pub reason: String,
    /// When it was set.
    pub at_ms: i64,
}

impl Suspension {
    /// Whether it holds at `now_ms`.
    pub fn active(&self, now_ms: i64) -> bool {
        self.until_ms.is_none_or(|u| u > now_ms)
    }
}

/// The hour (hours since 1970-01-01 UTC) that `t_ms` falls in.
pub fn hour(t_ms: i64) -> i64 {
    t_ms.div_euclid(HOUR_MS)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(start_day: i64) -> IpRecord {
        IpRecord {
            ip: "192.0.2.1".into(),
            hostname: "mta1.example.com".into(),
            pool: DEFAULT_POOL.into(),
            schedule: DEFAULT_SCHEDULE.into(),
            mode: IpMode::Warming,
            resume_to: IpMode::Warming,
            start_day,
            sending_days: 0,
            last_sent_day: None,
            reason: String::new(),
            added_at_ms: 0,
        }
    }

    #[test]
    fn the_default_schedule_is_the_seed_table() {
        let s = Schedule::default();
        s.validate().unwrap();
        let caps: Vec<u64> = (1..=22).map(|d| s.cap_on(d)).collect();
        let want = [
            1_000, 1_000, 1_000, 5_000, 5_000, 5_000, 10_000, 10_000, 10_000, 10_000, 25_000,
            25_000, 25_000, 25_000, 50_000, 50_000, 50_000, 50_000, 50_000, 50_000, 100_000,
            100_000,
        ];
        assert_eq!(caps, want);
        assert_eq!(s.warm_from_day(), 21);
    }

    #[test]
    fn calendar_days_count_from_the_start_and_idle_ips_warm_up_again() {
        let s = Schedule::default();
        let r = ip(100);
        assert_eq!(r.warmup_day(&s, 100), 1);
        assert_eq!(r.daily_cap(&s, 104), 5_000, "day 5");
        assert!(!r.is_warm(&s, 119));
        assert!(r.is_warm(&s, 120), "day 21");
        let sent = r.sent_on(&s, 120);
        assert_eq!(sent.daily_cap(&s, 150), 100_000, "30 days idle: not yet");
        assert!(sent.idle_restart(&s, 151));
        assert_eq!(sent.daily_cap(&s, 151), 1_000, "31 days idle: day 1 again");
        let again = sent.sent_on(&s, 151);
        assert_eq!((again.start_day, again.warmup_day(&s, 152)), (151, 2));
    }

    #[test]
    fn sending_days_count_only_days_with_mail() {
        let s = Schedule {
            sending_days: true,
            ..Schedule::default()
        };
        let mut r = ip(0);
        assert_eq!(r.warmup_day(&s, 10), 1);
        for day in [10, 12, 20] {
            r = r.sent_on(&s, day);
        }
        assert_eq!(r.warmup_day(&s, 20), 3, "today already counted");
        assert_eq!(r.warmup_day(&s, 21), 4);
        assert_eq!(r.daily_cap(&s, 21), 5_000);
    }

    #[test]
    fn days_begin_at_the_schedules_offset() {
        let s = Schedule {
            utc_offset_minutes: -300,
            ..Schedule::default()
        };
        // 2026-11-30 03:00 UTC is still the 29th in New York.
        let t = 1_795_921_200_000 + 3 * HOUR_MS - (1_795_921_200_000 % DAY_MS);
        assert_eq!(s.day(t), Schedule::default().day(t) - 1);
        assert_eq!(s.day(s.day_start_ms(s.day(t))), s.day(t));
        assert_eq!(s.day(s.day_start_ms(s.day(t)) - 1), s.day(t) - 1);
    }

    #[test]
    fn paused_and_completed_ips() {
        let s = Schedule::default();
        let mut r = ip(0);
        r.mode = IpMode::Paused;
        assert_eq!(r.daily_cap(&s, 0), 0);
        r.mode = IpMode::Warm;
        assert_eq!(r.daily_cap(&s, 0), 100_000);
        assert!(r.is_warm(&s, 0));
    }

    #[test]
    fn streams_name_their_pool_and_tenant() {
        let pools: BTreeMap<String, String> = [("acme".to_string(), "trans".to_string())].into();
        assert_eq!(pool_for("acme", &pools), "trans");
        assert_eq!(pool_for("other", &pools), DEFAULT_POOL);
        let s = stream("acme", "bulk");
        assert_eq!(s, "acme+bulk");
        assert_eq!(pool_for(&s, &pools), "bulk");
        assert_eq!(base_tenant(&s), "acme");
        assert_eq!(base_tenant("acme"), "acme");
    }

    #[test]
    fn providers_by_domain_then_mx_then_default() {
        let ps = default_providers();
        assert_eq!(classify(&ps, "gmail.com", None).name, "gmail");
        assert_eq!(classify(&ps, "hotmail.co.uk", None).name, "outlook");
        // A custom domain hosted at Google counts as Gmail.
        assert_eq!(
            classify(&ps, "example.org", Some("ASPMX.L.GOOGLE.COM.")).name,
            "gmail"
        );
        // A domain rule wins over an MX rule: aol.com's MX is at Yahoo.
        assert_eq!(
            classify(&ps, "aol.com", Some("mx-aol.mail.gm0.yahoodns.net")).name,
            "aol"
        );
        assert_eq!(classify(&ps, "notgmail.com", None).name, DEFAULT_PROVIDER);
        assert_eq!(classify(&ps, "mail.gmail.com", None).name, "gmail");
        assert_eq!(classify(&[], "x.test", None).name, DEFAULT_PROVIDER);
        // Known by their domain alone, or only once their MX host is.
        assert_eq!(
            by_domain(&ps, "yahoo.co.uk").map(|p| &*p.name),
            Some("yahoo")
        );
        assert!(by_domain(&ps, "example.org").is_none());
        for p in &ps {
            p.validate().unwrap();
        }
    }

    #[test]
    fn bad_schedules_are_refused_naming_the_field() {
        let mut s = Schedule::default();
        s.steps[2].daily = 10;
        assert_eq!(s.validate().unwrap_err().field, "steps");
        let mut s = Schedule::default();
        s.steps[0].from_day = 2;
        assert!(s.validate().unwrap_err().reason.contains("day 1"));
        let s = Schedule {
            name: "Bad Name".into(),
            ..Schedule::default()
        };
        assert_eq!(s.validate().unwrap_err().field, "name");
    }
}
