//! Sending limits in the replicated state (format 4): the records of `skein_shaping` and the
//! counters of what each IP sent, in the `shaping` column family.
//!
//! Keys: `I` + ip → [`IpRecord`]; `S` + name → [`Schedule`]; `P` + name → [`Provider`]
//! (overrides and additions to the shipped ones); `T` + tenant → pool name; `D` + ip + NUL +
//! day → recipients leased from the IP that day; `H` + ip + NUL + provider + NUL + hour →
//! recipients leased from the IP to the provider that hour. Days are the IP's schedule's,
//! hours are UTC; both are 8 bytes big-endian (offset so they sort as signed numbers).
//!
//! Counters advance in the same entry that grants a lease ([`crate::DeliveryOp::LeaseShaped`]),
//! re-checked against the caps when it applies, so a failover never resets them and two rounds
//! can never both spend the last unit.

use std::collections::BTreeMap;

use rocksdb::DB;
use serde::{Deserialize, Serialize};
use skein_shaping::{IpMode, IpRecord, Provider, Schedule, SuspendKind, Suspension};

use crate::store::{cf, dec, CF_SHAPING};
use crate::QueueError;

/// A change to the sending limits, proposed through the Admin API.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum ShapingCommand {
    /// Adds an IP (refused when it exists).
    AddIp(IpRecord),
    /// Removes an IP: it gets no new work; leases it holds run out as usual.
    RemoveIp {
        /// The address.
        ip: String,
    },
    /// Pauses, resumes or completes the warm-up of an IP.
    SetIpMode {
        /// The address.
        ip: String,
        /// `Paused`, `Warm` (warm-up completed) or `Warming`; resuming a paused IP passes the
        /// mode it had before the pause.
        mode: IpMode,
        /// Why.
        reason: String,
    },
    /// Starts an IP's warm-up over from day 1 today.
    RestartWarmup {
        /// The address.
        ip: String,
        /// Why.
        reason: String,
    },
    /// Adds or replaces a warm-up schedule.
    PutSchedule(Schedule),
    /// Adds or replaces a provider (a shipped one is overridden by name).
    PutProvider(Provider),
    /// Puts a tenant's mail on a pool (`""`: back to the default pool).
    SetTenantPool {
        /// Tenant ("" for mail relayed by IP address).
        tenant: String,
        /// Pool name.
        pool: String,
    },
    /// Suspends sending for a tenant, domain, provider, pool or IP (replacing a suspension of
    /// the same thing).
    Suspend(Suspension),
    /// Lifts a suspension.
    Resume {
        /// What it covered.
        kind: SuspendKind,
        /// Its name.
        name: String,
    },
    /// Sets the pools a tenant's mail may choose with an `X-Skein-Pool` header (format 5;
    /// empty: none), besides its own.
    AllowPools {
        /// Tenant.
        tenant: String,
        /// Pool names.
        pools: Vec<String>,
    },
}

/// How a [`ShapingCommand`] applied.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum ShapingOutcome {
    /// Done.
    Done,
    /// The IP exists already.
    IpExists,
    /// No such IP.
    IpNotFound,
    /// No schedule of the name the IP names.
    ScheduleNotFound,
    /// Nothing of that kind and name was suspended.
    NotSuspended,
}

pub(crate) const IP: u8 = b'I';
pub(crate) const SCHEDULE: u8 = b'S';
pub(crate) const PROVIDER: u8 = b'P';
pub(crate) const TENANT_POOL: u8 = b'T';
pub(crate) const DAY_COUNT: u8 = b'D';
pub(crate) const HOUR_COUNT: u8 = b'H';
pub(crate) const SUSPENSION: u8 = b'U';
pub(crate) const LEARNED_MX: u8 = b'M';
pub(crate) const LEASE_COUNT: u8 = b'R';
pub(crate) const ALLOWED_POOLS: u8 = b'A';

/// Key of what a shaped lease counted: `R` + lease id.
pub(crate) fn lease_count_key(lease: u64) -> Vec<u8> {
    let mut k = vec![LEASE_COUNT];
    k.extend_from_slice(&lease.to_be_bytes());
    k
}

/// What a shaped lease counted, so a "slow down" or an unsent assignment can be given back
/// to the counters it was taken from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct LeaseCount {
    /// Source IP.
    pub ip: String,
    /// Provider.
    pub provider: String,
    /// Day (in the IP's schedule) and hour it counted in.
    pub day: i64,
    /// Hour it counted in.
    pub hour: i64,
    /// Recipients counted and not yet reported.
    pub open: u32,
    /// When, for forgetting leases never reported.
    pub at_ms: i64,
}

/// Key of a suspension: `U`, its kind, its name.
pub(crate) fn suspension_key(kind: SuspendKind, name: &str) -> Vec<u8> {
    let mut k = vec![SUSPENSION, kind as u8];
    k.extend_from_slice(name.as_bytes());
    k
}

/// `kind` + `name`.
pub(crate) fn key(kind: u8, name: &str) -> Vec<u8> {
    let mut k = Vec::with_capacity(1 + name.len());
    k.push(kind);
    k.extend_from_slice(name.as_bytes());
    k
}

fn ordered(n: i64) -> [u8; 8] {
    ((n as u64) ^ (1 << 63)).to_be_bytes()
}

/// Key of an IP's count on day `day`.
pub(crate) fn day_key(ip: &str, day: i64) -> Vec<u8> {
    let mut k = key(DAY_COUNT, ip);
    k.push(0);
    k.extend_from_slice(&ordered(day));
    k
}

/// Key of an IP's count to `provider` in hour `hour`.
pub(crate) fn hour_key(ip: &str, provider: &str, hour: i64) -> Vec<u8> {
    let mut k = key(HOUR_COUNT, ip);
    k.push(0);
    k.extend_from_slice(provider.as_bytes());
    k.push(0);
    k.extend_from_slice(&ordered(hour));
    k
}

fn get<T: for<'de> Deserialize<'de>>(db: &DB, k: &[u8]) -> Result<Option<T>, QueueError> {
    match db.get_cf(cf(db, CF_SHAPING), k)? {
        Some(v) => Ok(Some(dec(&v).map_err(|source| QueueError::Corrupt {
            cf: CF_SHAPING,
            source,
        })?)),
        None => Ok(None),
    }
}

/// Every record of one kind, by the name its key holds after the kind byte.
fn named<T: for<'de> Deserialize<'de>>(
    db: &DB,
    kind: u8,
) -> Result<BTreeMap<String, T>, QueueError> {
    let mut out = BTreeMap::new();
    // Bounded by the next kind: counters and lease counts come and go in between.
    let mut it = crate::store::range(db, CF_SHAPING, &[kind], vec![kind + 1]);
    while let (Some(k), Some(v)) = (it.key(), it.value()) {
        let value = dec(v).map_err(|source| QueueError::Corrupt {
            cf: CF_SHAPING,
            source,
        })?;
        out.insert(String::from_utf8_lossy(&k[1..]).into_owned(), value);
        it.next();
    }
    it.status()?;
    Ok(out)
}

/// Every record of one kind, in key order.
fn all<T: for<'de> Deserialize<'de>>(db: &DB, kind: u8) -> Result<Vec<T>, QueueError> {
    Ok(named(db, kind)?.into_values().collect())
}

/// A schedule by name: a stored one, or the shipped default for [`skein_shaping::DEFAULT_SCHEDULE`].
pub(crate) fn schedule(db: &DB, name: &str) -> Result<Option<Schedule>, QueueError> {
    Ok(get(db, &key(SCHEDULE, name))?
        .or_else(|| (name == skein_shaping::DEFAULT_SCHEDULE).then(Schedule::default)))
}

/// The providers in force: the shipped ones with operators' records replacing them by name,
/// and operators' additions.
pub(crate) fn providers(db: &DB) -> Result<Vec<Provider>, QueueError> {
    let mut by_name: BTreeMap<String, Provider> = skein_shaping::default_providers()
        .into_iter()
        .map(|p| (p.name.clone(), p))
        .collect();
    for p in all::<Provider>(db, PROVIDER)? {
        by_name.insert(p.name.clone(), p);
    }
    Ok(by_name.into_values().collect())
}

/// A counter's value.
pub(crate) fn count(db: &DB, k: &[u8]) -> Result<u64, QueueError> {
    Ok(get(db, k)?.unwrap_or(0))
}

/// One IP as the scheduler sees it at a time.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IpStatus {
    /// The record.
    pub record: IpRecord,
    /// Its schedule.
    pub schedule: Schedule,
    /// The current day in its schedule's days.
    pub today: i64,
    /// Today's cap.
    pub cap: u64,
    /// Recipients leased from it today.
    pub sent_today: u64,
    /// Whether it counts as warm today.
    pub warm: bool,
    /// Recipients leased from it this hour, per provider.
    pub sent_this_hour: BTreeMap<String, u64>,
}

/// The sending limits and counters at one time.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ShapingState {
    /// Every IP record, by address.
    pub ips: Vec<IpStatus>,
    /// The providers in force.
    pub providers: Vec<Provider>,
    /// Tenants' pools (tenants not listed use the default pool).
    pub tenant_pools: BTreeMap<String, String>,
    /// The other pools each tenant's mail may choose (`X-Skein-Pool`).
    pub allowed_pools: BTreeMap<String, Vec<String>>,
    /// Operators' suspensions in force.
    pub suspensions: Vec<Suspension>,
    /// The MX host senders reached for each domain they delivered to.
    pub mx: BTreeMap<String, String>,
    /// The hour it describes.
    pub hour: i64,
}

/// The shaping state at `now_ms`.
pub(crate) fn state(db: &DB, now_ms: i64) -> Result<ShapingState, QueueError> {
    let providers = providers(db)?;
    let hour = skein_shaping::hour(now_ms);
    let mut ips = Vec::new();
    for record in all::<IpRecord>(db, IP)? {
        let schedule = schedule(db, &record.schedule)?.unwrap_or_default();
        let today = schedule.day(now_ms);
        let mut sent_this_hour = BTreeMap::new();
        for p in &providers {
            let n = count(db, &hour_key(&record.ip, &p.name, hour))?;
            if n > 0 {
                sent_this_hour.insert(p.name.clone(), n);
            }
        }
        ips.push(IpStatus {
            cap: record.daily_cap(&schedule, today),
            warm: record.is_warm(&schedule, today),
            sent_today: count(db, &day_key(&record.ip, today))?,
            sent_this_hour,
            today,
            schedule,
            record,
        });
    }
    let tenant_pools = named(db, TENANT_POOL)?;
    Ok(ShapingState {
        ips,
        providers,
        tenant_pools,
        allowed_pools: named(db, ALLOWED_POOLS)?,
        suspensions: suspensions(db, now_ms)?,
        mx: learned_mx(db)?,
        hour,
    })
}

/// `tenant`'s own pool and the other pools its mail may choose.
pub(crate) fn pools_of(db: &DB, tenant: &str) -> Result<(String, Vec<String>), QueueError> {
    let own = get::<String>(db, &key(TENANT_POOL, tenant))?
        .unwrap_or_else(|| skein_shaping::DEFAULT_POOL.into());
    let allowed = get::<Vec<String>>(db, &key(ALLOWED_POOLS, tenant))?.unwrap_or_default();
    Ok((own, allowed))
}

/// The suspensions in force at `now_ms`.
pub(crate) fn suspensions(db: &DB, now_ms: i64) -> Result<Vec<Suspension>, QueueError> {
    Ok(all::<Suspension>(db, SUSPENSION)?
        .into_iter()
        .filter(|s| s.active(now_ms))
        .collect())
}

/// Every domain's learned MX host.
pub(crate) fn learned_mx(db: &DB) -> Result<BTreeMap<String, String>, QueueError> {
    named(db, LEARNED_MX)
}

impl ShapingState {
    /// The provider receiving `domain`'s mail: by domain rule, else by the MX host senders
    /// reached for it, else the default class.
    pub fn provider(&self, domain: &str) -> &Provider {
        skein_shaping::classify(
            &self.providers,
            domain,
            self.mx.get(domain).map(String::as_str),
        )
    }
}

/// Every stored schedule, with the shipped default unless replaced.
pub(crate) fn schedules(db: &DB) -> Result<Vec<Schedule>, QueueError> {
    let mut by_name: BTreeMap<String, Schedule> = BTreeMap::new();
    by_name.insert(skein_shaping::DEFAULT_SCHEDULE.into(), Schedule::default());
    for s in all::<Schedule>(db, SCHEDULE)? {
        by_name.insert(s.name.clone(), s);
    }
    Ok(by_name.into_values().collect())
}

/// Whether any IP record exists: until one does, senders' own IPs are used without limits.
pub(crate) fn any_ip(db: &DB) -> Result<bool, QueueError> {
    let it = crate::store::range(db, CF_SHAPING, &[IP], vec![IP + 1]);
    let any = it.key().is_some();
    it.status()?;
    Ok(any)
}

/// The mode an IP resumes to and the mode it takes, for a [`ShapingCommand::SetIpMode`].
pub(crate) fn set_mode(r: &mut IpRecord, mode: IpMode) {
    match (r.mode, mode) {
        (IpMode::Paused, IpMode::Paused) => {}
        (current, IpMode::Paused) => {
            r.resume_to = current;
            r.mode = IpMode::Paused;
        }
        (_, m) => {
            r.mode = m;
            r.resume_to = m;
        }
    }
}
