//! Applying commands to the state column families.
//!
//! Each log entry is applied in one [`Tx`]: reads see the database plus what the entry itself
//! changed so far, writes collect in one `WriteBatch`. Everything here is deterministic: time
//! comes from the command, never from a clock.

use std::collections::{BTreeMap, HashMap};

use rocksdb::{WriteBatch, DB};

use crate::dsn;
use crate::floors::{Floors, Index, Insert};
use crate::records::{
    domain_of, rcpt_key, DkimKeyRecord, MessageRecord, RcptRecord, RcptState, StrikeRecord,
    SuppressionEntry, SuppressionRecord, TenantRecord, MAX_HISTORY,
};
use crate::shaping;
use crate::store::{
    cf, dec, enc, CF_BODIES, CF_DKIM, CF_DUE, CF_FINISHED, CF_MESSAGES, CF_QUEUE_DUE,
    CF_QUEUE_STATS, CF_RCPTS, CF_SUBMISSIONS, CF_SUPPRESS,
};
use crate::store::{CF_SETTINGS, CF_SHAPING, CF_TENANTS};
use crate::tokens;
use crate::types::{message_id, DeliveryOp, Disposition, Response, SuppressRule};
use skein_shaping::IpMode;

type Res<T> = Result<T, std::io::Error>;

fn corrupt(e: postcard::Error) -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::InvalidData, e)
}

/// Key of a recipient in the `due` column family: due time (big-endian, so keys sort by time)
/// then the recipient key.
pub(crate) fn due_key(due_ms: i64, rcpt: &str) -> Vec<u8> {
    let mut k = Vec::with_capacity(8 + rcpt.len());
    k.extend_from_slice(&(due_ms.max(0) as u64).to_be_bytes());
    k.extend_from_slice(rcpt.as_bytes());
    k
}

/// The prefix of one queue (a tenant's mail to one destination domain) in the `queue_due`
/// column family: tenant, then domain, each after its length (4 bytes, big-endian), so no
/// queue's prefix is the start of another's.
pub(crate) fn queue_prefix(tenant: &str, domain: &str) -> Vec<u8> {
    let mut k = Vec::with_capacity(8 + tenant.len() + domain.len());
    for part in [tenant, domain] {
        k.extend_from_slice(&(part.len() as u32).to_be_bytes());
        k.extend_from_slice(part.as_bytes());
    }
    k
}

/// Key of an unfinished recipient in the `queue_due` column family: its queue's prefix, then
/// what its `due` key holds (due time, recipient key).
pub(crate) fn queue_due_key(r: &RcptRecord) -> Vec<u8> {
    let mut k = queue_prefix(&r.tenant, &r.domain);
    k.extend_from_slice(&due_key(r.due_ms, &r.key));
    k
}

/// Key in the finished index: when the message's last recipient became final, then its id.
pub(crate) fn finished_key(at_ms: i64, message_id: &str) -> Vec<u8> {
    due_key(at_ms, message_id)
}

/// Key of a DKIM key: tenant, a NUL, the lower-cased domain.
pub(crate) fn dkim_key(tenant: &str, domain: &str) -> Vec<u8> {
    let mut k = Vec::with_capacity(tenant.len() + domain.len() + 1);
    k.extend_from_slice(tenant.as_bytes());
    k.push(0);
    k.extend_from_slice(domain.to_ascii_lowercase().as_bytes());
    k
}

/// Key of an address's bounce count (format 7) in the `settings` column family: `strike/`,
/// the tenant, a NUL, the lower-cased address.
pub(crate) fn strike_key(tenant: &str, address: &str) -> Vec<u8> {
    let mut k = STRIKE_PREFIX.to_vec();
    k.extend(suppress_key(tenant, address));
    k
}

/// Prefix of [`strike_key`]s.
pub(crate) const STRIKE_PREFIX: &[u8] = b"strike/";

/// Key of a suppression: tenant, a NUL, the lower-cased address.
pub(crate) fn suppress_key(tenant: &str, address: &str) -> Vec<u8> {
    let mut k = tenant.as_bytes().to_vec();
    k.push(0);
    k.extend_from_slice(address.to_ascii_lowercase().as_bytes());
    k
}

/// Keys in the `submissions` column family: `S` + tenant + NUL + submission id holds the
/// [`Submitted`] record; `T` + time (big-endian) + tenant + NUL + submission id orders them
/// for forgetting. Ids are per tenant: one tenant's ids can never stand for another's mail.
const SUBMISSION: u8 = b'S';
const SUBMISSION_BY_TIME: u8 = b'T';

/// Tenant, NUL, submission id: what follows the prefix (and the time) in both kinds of key.
fn submission_name(tenant: &str, id: &[u8]) -> Vec<u8> {
    let mut k = Vec::with_capacity(tenant.len() + 1 + id.len());
    k.extend_from_slice(tenant.as_bytes());
    k.push(0);
    k.extend_from_slice(id);
    k
}

fn submission_key(name: &[u8]) -> Vec<u8> {
    let mut k = vec![SUBMISSION];
    k.extend_from_slice(name);
    k
}

fn submission_time_key(at_ms: i64, name: &[u8]) -> Vec<u8> {
    let mut k = vec![SUBMISSION_BY_TIME];
    k.extend_from_slice(&due_key(at_ms, ""));
    k.extend_from_slice(name);
    k
}

/// A submission an edge made: the queue id its message got, and when.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
struct Submitted {
    message_id: String,
    at_ms: i64,
}

/// The changes of one log entry.
pub(crate) struct Tx<'a> {
    db: &'a DB,
    /// Where the time-ordered indexes' live keys begin (see [`crate::floors`]).
    floors: &'a Floors,
    batch: WriteBatch,
    msgs: HashMap<String, MessageRecord>,
    rcpts: HashMap<String, RcptRecord>,
    /// Submissions stored by this entry (its writes are not readable until it commits).
    submissions: HashMap<Vec<u8>, Submitted>,
    /// Change of each touched queue's count of unfinished recipients, by queue prefix.
    queue_counts: HashMap<Vec<u8>, i64>,
    /// `shaping` records and counters written by this entry (encoded), readable before it
    /// commits.
    shaping: HashMap<Vec<u8>, Vec<u8>>,
    /// Providers and schedules read by this entry's shaped leases.
    providers: Option<Vec<skein_shaping::Provider>>,
    /// Whether the cluster has IP records (read once per entry).
    shaping_on: Option<bool>,
    schedules: HashMap<String, skein_shaping::Schedule>,
    /// Bounce counts written (or, `None`, removed) by this entry, by key.
    strikes: HashMap<Vec<u8>, Option<StrikeRecord>>,
    /// Keys this entry put in time-ordered indexes (index, prefix, key): they lower the
    /// indexes' floors once the entry commits.
    inserts: Vec<Insert>,
    /// Messages added by this entry.
    pub(crate) added: u64,
    /// Messages removed by this entry.
    pub(crate) removed: u64,
    /// The entry's time (received or scheduler time): when messages it finishes finished.
    pub(crate) now_ms: i64,
    /// The cluster's format when the entry applies.
    pub(crate) format: u32,
}

impl<'a> Tx<'a> {
    /// A transaction whose write batch reserves `bytes` up front.
    pub(crate) fn new(db: &'a DB, floors: &'a Floors, bytes: usize) -> Self {
        Self {
            db,
            floors,
            batch: WriteBatch::with_capacity_bytes(bytes),
            msgs: HashMap::new(),
            rcpts: HashMap::new(),
            submissions: HashMap::new(),
            queue_counts: HashMap::new(),
            shaping: HashMap::new(),
            providers: None,
            shaping_on: None,
            schedules: HashMap::new(),
            strikes: HashMap::new(),
            inserts: Vec::new(),
            added: 0,
            removed: 0,
            now_ms: 0,
            format: 1,
        }
    }

    /// The tenant whose settings and suppression list a queue's tenant uses: from format 5
    /// a stream (`acme+bulk`, mail that chose a pool) is its tenant's; before, every name
    /// stood for itself (and so it applies, on every release, to entries of those formats).
    fn account<'t>(&self, tenant: &'t str) -> &'t str {
        if self.format >= crate::POOL_CHOICE_FORMAT {
            skein_shaping::base_tenant(tenant)
        } else {
            tenant
        }
    }

    /// The entry's writes, and the keys it put in time-ordered indexes (to report to the
    /// floors once the batch commits).
    pub(crate) fn finish(mut self) -> (WriteBatch, Vec<Insert>) {
        let db = self.db;
        for (id, m) in self.msgs.drain() {
            // Messages are only touched when they are added or one of their recipients
            // becomes final: one with none left finished in this entry.
            if m.remaining == 0 {
                let k = finished_key(self.now_ms, &id);
                self.batch.put_cf(cf(db, CF_FINISHED), &k, []);
                self.inserts.push((Index::Finished, Vec::new(), k));
            }
            self.batch
                .put_cf(cf(db, CF_MESSAGES), id.as_bytes(), enc(&m));
        }
        for (k, r) in self.rcpts.drain() {
            self.batch.put_cf(cf(db, CF_RCPTS), k.as_bytes(), enc(&r));
        }
        for (k, v) in self.shaping.drain() {
            self.batch.put_cf(cf(db, CF_SHAPING), k, v);
        }
        for (k, v) in self.strikes.drain() {
            match v {
                Some(s) => self.batch.put_cf(cf(db, CF_SETTINGS), k, enc(&s)),
                None => self.batch.delete_cf(cf(db, CF_SETTINGS), k),
            }
        }
        for (queue, delta) in self.queue_counts.drain().filter(|(_, d)| *d != 0) {
            let h = cf(db, CF_QUEUE_STATS);
            // A count that cannot be read is rebuilt at the next open; never fail the entry.
            let now: u64 = db
                .get_cf(h, &queue)
                .ok()
                .flatten()
                .and_then(|v| dec(&v).ok())
                .unwrap_or(0);
            match now.saturating_add_signed(delta) {
                0 => self.batch.delete_cf(h, &queue),
                n => self.batch.put_cf(h, &queue, enc(&n)),
            }
        }
        (self.batch, self.inserts)
    }

    /// Adds (`live`) or removes an unfinished recipient's entries in both due indexes, and
    /// counts it in (or out of) its queue.
    fn index_due(&mut self, r: &RcptRecord, live: bool) {
        let (db, batch) = (self.db, &mut self.batch);
        let (due, queue_due) = (due_key(r.due_ms, &r.key), queue_due_key(r));
        if live {
            batch.put_cf(cf(db, CF_DUE), &due, []);
            batch.put_cf(cf(db, CF_QUEUE_DUE), &queue_due, []);
            self.inserts.push((Index::Due, Vec::new(), due));
            let prefix = queue_prefix(&r.tenant, &r.domain);
            self.inserts.push((Index::QueueDue, prefix, queue_due));
        } else {
            batch.delete_cf(cf(db, CF_DUE), due);
            batch.delete_cf(cf(db, CF_QUEUE_DUE), queue_due);
        }
        *self
            .queue_counts
            .entry(queue_prefix(&r.tenant, &r.domain))
            .or_default() += if live { 1 } else { -1 };
    }

    fn get<T: for<'de> serde::Deserialize<'de>>(
        &self,
        cf_name: &str,
        key: &[u8],
    ) -> Res<Option<T>> {
        match self
            .db
            .get_cf(cf(self.db, cf_name), key)
            .map_err(std::io::Error::other)?
        {
            Some(v) => Ok(Some(dec(&v).map_err(corrupt)?)),
            None => Ok(None),
        }
    }

    fn message(&mut self, id: &str) -> Res<Option<MessageRecord>> {
        if let Some(m) = self.msgs.get(id) {
            return Ok(Some(m.clone()));
        }
        self.get(CF_MESSAGES, id.as_bytes())
    }

    fn rcpt(&mut self, key: &str) -> Res<Option<RcptRecord>> {
        if let Some(r) = self.rcpts.get(key) {
            return Ok(Some(r.clone()));
        }
        self.get(CF_RCPTS, key.as_bytes())
    }

    /// Stores `new`, moving its entry in the due index from where `old` had it.
    fn put_rcpt(&mut self, old: Option<&RcptRecord>, new: RcptRecord) {
        if let Some(o) = old.filter(|o| !o.state.is_final()) {
            self.index_due(o, false);
        }
        if !new.state.is_final() {
            self.index_due(&new, true);
        }
        self.rcpts.insert(new.key.clone(), new);
    }

    fn suppression(&self, tenant: &str, address: &str) -> Res<Option<SuppressionEntry>> {
        match self
            .db
            .get_pinned_cf(cf(self.db, CF_SUPPRESS), suppress_key(tenant, address))
            .map_err(std::io::Error::other)?
        {
            Some(v) => Ok(Some(SuppressionEntry::decode(&v).map_err(corrupt)?)),
            None => Ok(None),
        }
    }

    /// Whether `tenant` suppresses `address` at `now_ms`. An entry that has lapsed is
    /// removed.
    fn suppressed(&mut self, tenant: &str, address: &str, now_ms: i64) -> Res<bool> {
        match self.suppression(tenant, address)? {
            Some(e) if e.applies_at(now_ms) => Ok(true),
            Some(_) => {
                self.batch
                    .delete_cf(cf(self.db, CF_SUPPRESS), suppress_key(tenant, address));
                Ok(false)
            }
            None => Ok(false),
        }
    }

    /// The bounce count of `key`, as this entry left it.
    fn strike(&self, key: &[u8]) -> Res<Option<StrikeRecord>> {
        match self.strikes.get(key) {
            Some(s) => Ok(s.clone()),
            None => self.get(CF_SETTINGS, key),
        }
    }

    /// Adds `r`'s address to its tenant's suppression list as `rule` says, after its bounce
    /// at `now_ms` (format 7).
    fn suppress_by_rule(&mut self, r: &RcptRecord, rule: &SuppressRule, now_ms: i64) -> Res<()> {
        let tenant = self.account(&r.tenant).to_string();
        let reason = r
            .last_reply
            .as_ref()
            .map(|r| r.to_string())
            .unwrap_or_default();
        let lapse = |after: i64| (after > 0).then(|| now_ms.saturating_add(after));
        match *rule {
            SuppressRule::Never => {}
            SuppressRule::Now { expire_after_ms } => {
                let record = SuppressionRecord {
                    tenant,
                    address: r.address.clone(),
                    reason,
                    at_ms: now_ms,
                };
                self.suppress(record, lapse(expire_after_ms));
            }
            SuppressRule::After {
                strikes,
                span_ms,
                window_ms,
                expire_after_ms,
            } => {
                let key = strike_key(&tenant, &r.address);
                let mut s = match self.strike(&key)? {
                    Some(s) if now_ms.saturating_sub(s.first_ms) <= window_ms => s,
                    _ => StrikeRecord {
                        count: 0,
                        first_ms: now_ms,
                        last_ms: now_ms,
                        reason: String::new(),
                    },
                };
                s.count = s.count.saturating_add(1);
                s.last_ms = now_ms;
                s.reason = reason;
                if s.count >= strikes.max(1) && s.last_ms - s.first_ms >= span_ms {
                    let hours = (s.last_ms - s.first_ms) / 3_600_000;
                    let record = SuppressionRecord {
                        tenant,
                        address: r.address.clone(),
                        reason: format!(
                            "{} bounces over {hours} hours, the latest: {}",
                            s.count, s.reason
                        ),
                        at_ms: now_ms,
                    };
                    self.suppress(record, lapse(expire_after_ms));
                    self.strikes.insert(key, None);
                } else {
                    self.strikes.insert(key, Some(s));
                }
            }
        }
        Ok(())
    }

    /// Forgets `r`'s bounce count, if it has one: its address took a message.
    fn clear_strikes(&mut self, r: &RcptRecord) -> Res<()> {
        let key = strike_key(self.account(&r.tenant), &r.address);
        if self.strike(&key)?.is_some() {
            self.strikes.insert(key, None);
        }
        Ok(())
    }

    /// Writes `value` at `key` in column family `cf_name`.
    pub(crate) fn put(&mut self, cf_name: &str, key: &[u8], value: Vec<u8>) {
        self.batch.put_cf(cf(self.db, cf_name), key, value);
    }

    /// Deletes `key` in column family `cf_name`.
    pub(crate) fn delete(&mut self, cf_name: &str, key: &[u8]) {
        self.batch.delete_cf(cf(self.db, cf_name), key);
    }

    /// The queue id of `tenant`'s submission `id` if it was stored at or after `since_ms`.
    pub(crate) fn submitted(
        &mut self,
        tenant: &str,
        id: &[u8],
        since_ms: i64,
    ) -> Res<Option<String>> {
        let name = submission_name(tenant, id);
        let s = match self.submissions.get(&name) {
            Some(s) => Some(s.clone()),
            None => self.get::<Submitted>(CF_SUBMISSIONS, &submission_key(&name))?,
        };
        Ok(s.filter(|s| s.at_ms >= since_ms).map(|s| s.message_id))
    }

    /// Remembers that `tenant`'s submission `id` was stored as `message_id` at `at_ms`.
    pub(crate) fn remember_submission(
        &mut self,
        tenant: &str,
        id: &[u8],
        message_id: &str,
        at_ms: i64,
    ) {
        let h = cf(self.db, CF_SUBMISSIONS);
        let name = submission_name(tenant, id);
        let s = Submitted {
            message_id: message_id.to_string(),
            at_ms,
        };
        self.batch.put_cf(h, submission_key(&name), enc(&s));
        let k = submission_time_key(at_ms, &name);
        self.batch.put_cf(h, &k, []);
        self.inserts
            .push((Index::Submissions, vec![SUBMISSION_BY_TIME], k));
        self.submissions.insert(name, s);
    }

    /// Forgets up to `limit` submissions stored before `before_ms`, oldest first. Called with
    /// a limit above the entry's own additions, so the window's contents stay bounded.
    pub(crate) fn forget_submissions(&mut self, before_ms: i64, limit: usize) -> Res<()> {
        let db = self.db;
        let h = cf(db, CF_SUBMISSIONS);
        let prefix = [SUBMISSION_BY_TIME];
        // From the floor: what this node forgot before is gone (its tombstones skipped).
        // Whatever this entry forgets is gone once it commits, and the floor set here is the
        // first key it keeps.
        let floors = self.floors;
        floors.read(Index::Submissions, &prefix, |start| {
            let mut kept = None;
            for (forgotten, kv) in db
                .iterator_cf(
                    h,
                    rocksdb::IteratorMode::From(start, rocksdb::Direction::Forward),
                )
                .enumerate()
            {
                let (k, _) = kv.map_err(std::io::Error::other)?;
                if k.first() != Some(&SUBMISSION_BY_TIME) {
                    break;
                }
                let at = k
                    .get(1..9)
                    .and_then(|b| b.try_into().ok())
                    .map(u64::from_be_bytes);
                if forgotten >= limit || at.is_none_or(|at| at >= before_ms.max(0) as u64) {
                    kept = Some(k.to_vec());
                    break;
                }
                let at = at.unwrap_or_default();
                let name = &k[9..];
                // A later submission with the same id (after the window) has its own record.
                if let Some(s) = self.get::<Submitted>(CF_SUBMISSIONS, &submission_key(name))? {
                    if s.at_ms.max(0) as u64 == at {
                        self.batch.delete_cf(h, submission_key(name));
                    }
                }
                self.batch.delete_cf(h, &k);
            }
            Ok(((), kept))
        })
    }

    /// Adds a message and its recipients (due at `rec.received_at_ms`, or suppressed).
    /// Returns the addresses that were suppressed.
    pub(crate) fn insert_message(
        &mut self,
        mut rec: MessageRecord,
        body: &[u8],
    ) -> Res<Vec<String>> {
        let now = rec.received_at_ms;
        let mut remaining = 0;
        let mut suppressed_addresses = Vec::new();
        for (idx, address) in rec.rcpt_to.iter().enumerate() {
            let suppressed = self.suppressed(self.account(&rec.tenant), address, now)?;
            let r = RcptRecord {
                key: rcpt_key(&rec.id, idx),
                message_id: rec.id.clone(),
                address: address.clone(),
                domain: domain_of(address),
                tenant: rec.tenant.clone(),
                state: if suppressed {
                    RcptState::Suppressed
                } else {
                    RcptState::Queued
                },
                attempts: 0,
                due_ms: now,
                received_at_ms: now,
                last_reply: None,
                history: Vec::new(),
                final_at_ms: suppressed.then_some(now),
            };
            if suppressed {
                suppressed_addresses.push(address.clone());
            } else {
                remaining += 1;
            }
            self.put_rcpt(None, r);
        }
        rec.remaining = remaining;
        if remaining > 0 {
            self.batch
                .put_cf(cf(self.db, CF_BODIES), rec.id.as_bytes(), body);
        }
        self.msgs.insert(rec.id.clone(), rec);
        self.added += 1;
        Ok(suppressed_addresses)
    }

    /// Stores a tenant.
    pub(crate) fn put_tenant(&mut self, t: &TenantRecord) {
        self.batch
            .put_cf(cf(self.db, CF_TENANTS), t.name.as_bytes(), enc(t));
    }

    /// Applies a tenant update.
    pub(crate) fn update_tenant(
        &mut self,
        name: &str,
        enabled: Option<bool>,
        dsn: Option<bool>,
    ) -> Res<Response> {
        let Some(mut t) = self.get::<TenantRecord>(CF_TENANTS, name.as_bytes())? else {
            return Ok(Response::TenantNotFound);
        };
        if let Some(e) = enabled {
            t.enabled = e;
        }
        if let Some(d) = dsn {
            t.dsn = d;
        }
        self.batch
            .put_cf(cf(self.db, CF_TENANTS), name.as_bytes(), enc(&t));
        Ok(Response::TenantUpdated)
    }

    /// Removes up to `limit` messages that finished before `before_ms`; how many.
    pub(crate) fn purge(&mut self, before_ms: i64, limit: u32) -> Res<u32> {
        let db = self.db;
        let floors = self.floors;
        // From the floor, as `forget_submissions` does.
        let purged = floors.read(Index::Finished, &[], |start| {
            let mut purged = 0;
            for kv in db.iterator_cf(
                cf(db, CF_FINISHED),
                rocksdb::IteratorMode::From(start, rocksdb::Direction::Forward),
            ) {
                let (k, _) = kv.map_err(std::io::Error::other)?;
                let at = k
                    .get(..8)
                    .and_then(|b| b.try_into().ok())
                    .map(u64::from_be_bytes)
                    .unwrap_or(0);
                if purged >= limit || at >= before_ms.max(0) as u64 {
                    return Ok((purged, Some(k.to_vec())));
                }
                let id = String::from_utf8_lossy(&k[8..]).into_owned();
                self.batch.delete_cf(cf(db, CF_FINISHED), &k);
                let Some(m) = self.get::<MessageRecord>(CF_MESSAGES, id.as_bytes())? else {
                    continue;
                };
                if m.remaining > 0 {
                    continue; // not finished after all: keep it (and drop the stray index entry)
                }
                for kv in db.iterator_cf(
                    cf(db, CF_RCPTS),
                    rocksdb::IteratorMode::From(id.as_bytes(), rocksdb::Direction::Forward),
                ) {
                    let (rk, rv) = kv.map_err(std::io::Error::other)?;
                    if !rk.starts_with(id.as_bytes()) {
                        break;
                    }
                    let r: RcptRecord = dec(&rv).map_err(corrupt)?;
                    if !r.state.is_final() {
                        self.index_due(&r, false);
                    }
                    self.batch.delete_cf(cf(db, CF_RCPTS), &rk);
                }
                self.batch.delete_cf(cf(db, CF_MESSAGES), id.as_bytes());
                self.batch.delete_cf(cf(db, CF_BODIES), id.as_bytes());
                self.removed += 1;
                purged += 1;
            }
            Ok::<_, std::io::Error>((purged, None))
        })?;
        // What shaped leases counted, for leases never reported (their sender vanished and
        // the recipients were leased again): forgotten with the finished mail.
        let mut stale = Vec::new();
        for kv in db.iterator_cf(
            cf(db, CF_SHAPING),
            rocksdb::IteratorMode::From(&[shaping::LEASE_COUNT], rocksdb::Direction::Forward),
        ) {
            let (k, v) = kv.map_err(std::io::Error::other)?;
            if k.first() != Some(&shaping::LEASE_COUNT) || stale.len() >= 10_000 {
                break;
            }
            let c: shaping::LeaseCount = dec(&v).map_err(corrupt)?;
            if c.at_ms < before_ms {
                stale.push(k.to_vec());
            }
        }
        for k in stale {
            self.batch.delete_cf(cf(db, CF_SHAPING), k);
        }
        Ok(purged)
    }

    /// Sets a DKIM key, if its tenant exists.
    pub(crate) fn set_dkim_key(&mut self, mut k: DkimKeyRecord) -> Res<Response> {
        if self
            .get::<TenantRecord>(CF_TENANTS, k.tenant.as_bytes())?
            .is_none()
        {
            return Ok(Response::TenantNotFound);
        }
        k.domain = k.domain.to_ascii_lowercase();
        self.batch.put_cf(
            cf(self.db, CF_DKIM),
            dkim_key(&k.tenant, &k.domain),
            enc(&k),
        );
        Ok(Response::DkimKey(true))
    }

    /// Removes a DKIM key; false if there was none.
    pub(crate) fn remove_dkim_key(&mut self, tenant: &str, domain: &str) -> Res<bool> {
        let key = dkim_key(tenant, domain);
        let existed = self
            .db
            .get_pinned_cf(cf(self.db, CF_DKIM), &key)
            .map_err(std::io::Error::other)?
            .is_some();
        self.batch.delete_cf(cf(self.db, CF_DKIM), key);
        Ok(existed)
    }

    /// Adds a suppression that lapses at `expires_at_ms`, or never.
    pub(crate) fn suppress(&mut self, mut record: SuppressionRecord, expires_at_ms: Option<i64>) {
        record.address = record.address.to_ascii_lowercase();
        let key = suppress_key(&record.tenant, &record.address);
        let entry = SuppressionEntry {
            record,
            expires_at_ms,
        };
        self.batch
            .put_cf(cf(self.db, CF_SUPPRESS), key, entry.encode());
    }

    /// Removes a suppression; false if there was none.
    pub(crate) fn unsuppress(&mut self, tenant: &str, address: &str) -> Res<bool> {
        let existed = self.suppression(tenant, address)?.is_some();
        self.batch
            .delete_cf(cf(self.db, CF_SUPPRESS), suppress_key(tenant, address));
        Ok(existed)
    }

    /// Leases up to `limit` of `rcpts` (those due, or whose lease lapsed) under `l`; returns
    /// the keys leased.
    fn lease_rcpts(
        &mut self,
        l: &crate::records::Lease,
        rcpts: Vec<String>,
        limit: usize,
        now_ms: i64,
    ) -> Res<Vec<String>> {
        let mut granted = Vec::new();
        for key in rcpts {
            if granted.len() >= limit {
                break;
            }
            let Some(old) = self.rcpt(&key)? else {
                continue;
            };
            let leasable = match &old.state {
                RcptState::Queued | RcptState::Deferred => old.due_ms <= now_ms,
                RcptState::Leased(l) => l.expires_ms <= now_ms,
                _ => false,
            };
            if !leasable {
                continue;
            }
            let mut new = old.clone();
            new.state = RcptState::Leased(l.clone());
            new.due_ms = l.expires_ms;
            self.put_rcpt(Some(&old), new);
            granted.push(key);
        }
        Ok(granted)
    }

    /// [`DeliveryOp::LeaseShaped`]: leases only what the IP's daily cap and its hourly limit
    /// for `provider` leave at `now_ms`, and counts it against both. An IP without a record,
    /// or paused, leases nothing.
    fn lease_shaped(
        &mut self,
        l: &crate::records::Lease,
        provider: &str,
        rcpts: Vec<String>,
        now_ms: i64,
    ) -> Res<Vec<String>> {
        let db = self.db;
        let io = std::io::Error::other;
        let ip_key = shaping::key(shaping::IP, &l.source_ip);
        let Some(ip) = self.shaping_get::<skein_shaping::IpRecord>(&ip_key)? else {
            return Ok(Vec::new());
        };
        let suspended = self
            .shaping_get::<skein_shaping::Suspension>(&shaping::suspension_key(
                skein_shaping::SuspendKind::Ip,
                &ip.ip,
            ))?
            .is_some_and(|s| s.active(now_ms));
        if suspended {
            return Ok(Vec::new());
        }
        // Limits do not change within a Deliver entry: read them once per entry.
        if !self.schedules.contains_key(&ip.schedule) {
            let s = shaping::schedule(db, &ip.schedule)
                .map_err(io)?
                .unwrap_or_default();
            self.schedules.insert(ip.schedule.clone(), s);
        }
        let schedule = self.schedules[&ip.schedule].clone();
        let today = schedule.day(now_ms);
        let hour = skein_shaping::hour(now_ms);
        if self.providers.is_none() {
            self.providers = Some(shaping::providers(db).map_err(io)?);
        }
        let providers = self.providers.as_deref().unwrap_or_default();
        let hourly = providers
            .iter()
            .find(|p| p.name == provider)
            .or_else(|| {
                providers
                    .iter()
                    .find(|p| p.name == skein_shaping::DEFAULT_PROVIDER)
            })
            .map_or(0, |p| p.hourly(ip.is_warm(&schedule, today)));
        let (day_key, hour_key) = (
            shaping::day_key(&ip.ip, today),
            shaping::hour_key(&ip.ip, provider, hour),
        );
        let sent_today = self.shaping_get::<u64>(&day_key)?.unwrap_or(0);
        let sent_hour = self.shaping_get::<u64>(&hour_key)?.unwrap_or(0);
        let room = ip
            .daily_cap(&schedule, today)
            .saturating_sub(sent_today)
            .min(hourly.saturating_sub(sent_hour));
        let granted = self.lease_rcpts(
            l,
            rcpts,
            usize::try_from(room).unwrap_or(usize::MAX),
            now_ms,
        )?;
        if !granted.is_empty() {
            let n = granted.len() as u64;
            self.shaping_put(&day_key, &(sent_today + n));
            self.shaping_put(&hour_key, &(sent_hour + n));
            self.shaping_put(&ip_key, &ip.sent_on(&schedule, today));
            self.shaping_put(
                &shaping::lease_count_key(l.id),
                &shaping::LeaseCount {
                    ip: ip.ip.clone(),
                    provider: provider.to_string(),
                    day: today,
                    hour,
                    open: granted.len() as u32,
                    at_ms: now_ms,
                },
            );
        }
        Ok(granted)
    }

    /// A recipient of shaped lease `lease` was reported: one fewer open. `refund` (a "slow
    /// down", or an assignment that never reached its sender) gives its unit back to the
    /// counters it was taken from: nothing was sent.
    fn settle_lease(&mut self, lease: u64, refund: bool) -> Res<()> {
        let k = shaping::lease_count_key(lease);
        let Some(mut c) = self.shaping_get::<shaping::LeaseCount>(&k)? else {
            return Ok(());
        };
        if refund {
            for key in [
                shaping::day_key(&c.ip, c.day),
                shaping::hour_key(&c.ip, &c.provider, c.hour),
            ] {
                let n = self.shaping_get::<u64>(&key)?.unwrap_or(0);
                self.shaping_put(&key, &n.saturating_sub(1));
            }
        }
        c.open = c.open.saturating_sub(1);
        if c.open == 0 {
            self.shaping.remove(&k);
            self.batch.delete_cf(cf(self.db, CF_SHAPING), &k);
        } else {
            self.shaping_put(&k, &c);
        }
        Ok(())
    }

    fn shaping_get<T: for<'de> serde::Deserialize<'de>>(&self, k: &[u8]) -> Res<Option<T>> {
        match self.shaping.get(k) {
            Some(v) => Ok(Some(dec(v).map_err(corrupt)?)),
            None => self.get(CF_SHAPING, k),
        }
    }

    fn shaping_put<T: serde::Serialize>(&mut self, k: &[u8], v: &T) {
        self.shaping.insert(k.to_vec(), enc(v));
    }

    /// Applies a [`crate::Request::Token`].
    pub(crate) fn token(&mut self, cmd: tokens::TokenCommand) -> Res<tokens::TokenOutcome> {
        use tokens::{TokenCommand as C, TokenOutcome as O};
        Ok(match cmd {
            C::Create(t) => {
                let k = tokens::token_key(&t.name);
                if self.get::<tokens::TokenRecord>(CF_SETTINGS, &k)?.is_some() {
                    O::Exists
                } else {
                    self.put(CF_SETTINGS, &k, enc(&t));
                    O::Done
                }
            }
            C::Revoke { name } => {
                let k = tokens::token_key(&name);
                if self.get::<tokens::TokenRecord>(CF_SETTINGS, &k)?.is_none() {
                    O::NotFound
                } else {
                    self.batch.delete_cf(cf(self.db, CF_SETTINGS), k);
                    O::Done
                }
            }
        })
    }

    /// Applies a [`crate::Request::Shaping`] at `now_ms`.
    pub(crate) fn shaping(
        &mut self,
        now_ms: i64,
        cmd: shaping::ShapingCommand,
    ) -> Res<shaping::ShapingOutcome> {
        use shaping::{ShapingCommand as C, ShapingOutcome as O};
        let io = std::io::Error::other;
        Ok(match cmd {
            C::AddIp(r) => {
                let k = shaping::key(shaping::IP, &r.ip);
                if self.shaping_get::<skein_shaping::IpRecord>(&k)?.is_some() {
                    return Ok(O::IpExists);
                }
                if shaping::schedule(self.db, &r.schedule)
                    .map_err(io)?
                    .is_none()
                {
                    return Ok(O::ScheduleNotFound);
                }
                self.shaping_put(&k, &r);
                O::Done
            }
            C::RemoveIp { ip } => {
                let k = shaping::key(shaping::IP, &ip);
                if self.shaping_get::<skein_shaping::IpRecord>(&k)?.is_none() {
                    return Ok(O::IpNotFound);
                }
                self.shaping.remove(&k);
                self.batch.delete_cf(cf(self.db, CF_SHAPING), &k);
                O::Done
            }
            C::SetIpMode { ip, mode, reason } => {
                let k = shaping::key(shaping::IP, &ip);
                let Some(mut r) = self.shaping_get::<skein_shaping::IpRecord>(&k)? else {
                    return Ok(O::IpNotFound);
                };
                shaping::set_mode(&mut r, mode);
                r.reason = reason;
                self.shaping_put(&k, &r);
                O::Done
            }
            C::RestartWarmup { ip, reason } => {
                let k = shaping::key(shaping::IP, &ip);
                let Some(mut r) = self.shaping_get::<skein_shaping::IpRecord>(&k)? else {
                    return Ok(O::IpNotFound);
                };
                let s = shaping::schedule(self.db, &r.schedule)
                    .map_err(io)?
                    .unwrap_or_default();
                r.start_day = s.day(now_ms);
                r.sending_days = 0;
                r.last_sent_day = None;
                shaping::set_mode(&mut r, IpMode::Warming);
                r.reason = reason;
                self.shaping_put(&k, &r);
                O::Done
            }
            C::PutSchedule(s) => {
                self.shaping_put(&shaping::key(shaping::SCHEDULE, &s.name), &s);
                O::Done
            }
            C::PutProvider(p) => {
                self.shaping_put(&shaping::key(shaping::PROVIDER, &p.name), &p);
                O::Done
            }
            C::Suspend(sus) => {
                let k = shaping::suspension_key(sus.kind, &sus.name);
                self.shaping_put(&k, &sus);
                O::Done
            }
            C::Resume { kind, name } => {
                let k = shaping::suspension_key(kind, &name);
                if self.shaping_get::<skein_shaping::Suspension>(&k)?.is_none() {
                    return Ok(O::NotSuspended);
                }
                self.shaping.remove(&k);
                self.batch.delete_cf(cf(self.db, CF_SHAPING), &k);
                O::Done
            }
            C::AllowPools { tenant, pools } => {
                let k = shaping::key(shaping::ALLOWED_POOLS, &tenant);
                if pools.is_empty() {
                    self.shaping.remove(&k);
                    self.batch.delete_cf(cf(self.db, CF_SHAPING), &k);
                } else {
                    self.shaping_put(&k, &pools);
                }
                O::Done
            }
            C::SetTenantPool { tenant, pool } => {
                let k = shaping::key(shaping::TENANT_POOL, &tenant);
                if pool.is_empty() || pool == skein_shaping::DEFAULT_POOL {
                    self.shaping.remove(&k);
                    self.batch.delete_cf(cf(self.db, CF_SHAPING), &k);
                } else {
                    self.shaping_put(&k, &pool);
                }
                O::Done
            }
        })
    }

    /// Applies a [`crate::Request::Deliver`] committed at log `index`.
    pub(crate) fn deliver(
        &mut self,
        index: u64,
        now_ms: i64,
        mta: &str,
        ops: Vec<DeliveryOp>,
        format: u32,
    ) -> Res<Response> {
        let mut leased = Vec::new();
        let mut applied = Vec::new();
        // Per message, recipients that failed in this entry (sorted: replicas agree on order).
        let mut failed: BTreeMap<String, Vec<RcptRecord>> = BTreeMap::new();
        for op in ops {
            match op {
                DeliveryOp::Lease {
                    lease,
                    sender,
                    source_ip,
                    expires_ms,
                    rcpts,
                } => {
                    let l = crate::records::Lease {
                        id: lease,
                        sender,
                        source_ip,
                        expires_ms,
                    };
                    // Once the cluster has IP records, only shaped leases send (a leader that
                    // had not yet seen the first record must not send past its limits).
                    let limited = format >= 4 && {
                        if self.shaping_on.is_none() {
                            self.shaping_on =
                                Some(shaping::any_ip(self.db).map_err(std::io::Error::other)?);
                        }
                        self.shaping_on == Some(true)
                    };
                    let granted = if limited {
                        Vec::new()
                    } else {
                        self.lease_rcpts(&l, rcpts, usize::MAX, now_ms)?
                    };
                    leased.push((lease, granted));
                }
                DeliveryOp::LearnMx { domain, mx } => {
                    self.shaping_put(&shaping::key(shaping::LEARNED_MX, &domain), &mx);
                }
                DeliveryOp::LeaseShaped {
                    lease,
                    sender,
                    source_ip,
                    provider,
                    expires_ms,
                    rcpts,
                } => {
                    let l = crate::records::Lease {
                        id: lease,
                        sender,
                        source_ip,
                        expires_ms,
                    };
                    let granted = self.lease_shaped(&l, &provider, rcpts, now_ms)?;
                    leased.push((lease, granted));
                }
                DeliveryOp::Report {
                    lease,
                    rcpt,
                    attempt,
                    disposition,
                } => {
                    let Some(old) = self.rcpt(&rcpt)? else {
                        continue;
                    };
                    if old.state.is_final() {
                        continue;
                    }
                    let current = match (&old.state, lease) {
                        // From format 2 a delivery counts whichever lease it was made under
                        // (the recipient may have been leased again after the report was
                        // delayed by a failover): sending it again would be a duplicate.
                        (RcptState::Leased(l), Some(id)) => {
                            l.id == id || (format >= 2 && disposition == Disposition::Delivered)
                        }
                        // A delivery under a lapsed lease still happened: record it.
                        (_, Some(_)) => disposition == Disposition::Delivered,
                        // The scheduler's own decision: not while a sender holds a valid lease.
                        (RcptState::Leased(l), None) => l.expires_ms <= now_ms,
                        (_, None) => true,
                    };
                    if !current {
                        continue;
                    }
                    applied.push(rcpt.clone());
                    // The report of a shaped lease settles what it counted; a "slow down" or
                    // a release (nothing sent) is given back.
                    if let (Some(id), RcptState::Leased(l)) = (lease, &old.state) {
                        if l.id == id && format >= 4 {
                            let refund = attempt
                                .as_ref()
                                .is_none_or(|a| a.result == crate::AttemptResult::Throttled);
                            self.settle_lease(id, refund)?;
                        }
                    }
                    let mut new = old.clone();
                    if let Some(a) = attempt {
                        new.last_reply = Some(a.reply.clone());
                        new.history.push(a);
                        if new.history.len() > MAX_HISTORY {
                            new.history.remove(0);
                        }
                    }
                    match disposition {
                        Disposition::Delivered => {
                            new.attempts += 1;
                            new.state = RcptState::Delivered;
                            if format >= crate::SUPPRESSION_FORMAT {
                                self.clear_strikes(&new)?;
                            }
                        }
                        Disposition::Retry { at_ms, counted } => {
                            new.attempts += u32::from(counted);
                            new.state = RcptState::Deferred;
                            new.due_ms = at_ms;
                        }
                        Disposition::Bounce { suppress } => {
                            new.attempts += 1;
                            new.state = RcptState::Bounced;
                            if suppress {
                                self.suppress(
                                    SuppressionRecord {
                                        tenant: self.account(&new.tenant).to_string(),
                                        address: new.address.clone(),
                                        reason: new
                                            .last_reply
                                            .as_ref()
                                            .map(|r| r.to_string())
                                            .unwrap_or_default(),
                                        at_ms: now_ms,
                                    },
                                    None,
                                );
                            }
                        }
                        Disposition::BounceWith(rule) => {
                            new.attempts += 1;
                            new.state = RcptState::Bounced;
                            // A return path (a DSN's recipient) is not an address the
                            // tenant mails: its bounce suppresses nothing.
                            let null_path = self
                                .message(&new.message_id)?
                                .is_none_or(|m| m.mail_from.is_empty());
                            if !null_path {
                                self.suppress_by_rule(&new, &rule, now_ms)?;
                            }
                        }
                        Disposition::Delete => new.state = RcptState::Deleted,
                        Disposition::Expire => new.state = RcptState::Expired,
                    }
                    if new.state.is_final() {
                        new.final_at_ms = Some(now_ms);
                        if let Some(mut m) = self.message(&new.message_id)? {
                            m.remaining = m.remaining.saturating_sub(1);
                            self.msgs.insert(m.id.clone(), m);
                        }
                        if matches!(new.state, RcptState::Bounced | RcptState::Expired) {
                            failed
                                .entry(new.message_id.clone())
                                .or_default()
                                .push(new.clone());
                        }
                    }
                    self.put_rcpt(Some(&old), new);
                }
            }
        }
        let mut dsns = Vec::new();
        for (msg_id, rcpts) in failed {
            let Some(original) = self.message(&msg_id)? else {
                continue;
            };
            if self.wants_dsn(&original)? {
                let id = message_id(index, dsns.len());
                let body: Option<Vec<u8>> = self
                    .db
                    .get_cf(cf(self.db, CF_BODIES), msg_id.as_bytes())
                    .map_err(std::io::Error::other)?;
                let data = dsn::build(&id, mta, now_ms, &original, body.as_deref(), &rcpts);
                let rec = MessageRecord {
                    id: id.clone(),
                    tenant: original.tenant.clone(),
                    mail_from: String::new(),
                    rcpt_to: vec![original.mail_from.clone()],
                    size: data.len() as u64,
                    received_at_ms: now_ms,
                    client_ip: String::new(),
                    helo: String::new(),
                    edge: mta.to_string(),
                    log_index: index,
                    smtputf8: false,
                    body_8bit: false,
                    remaining: 0,
                    dsn_for: Some(msg_id.clone()),
                };
                // A DSN to a suppressed return path is recorded as suppressed, like any mail.
                self.insert_message(rec, &data)?;
                dsns.push(id);
            }
        }
        // Bodies of finished messages go (after any DSN quoted their headers).
        let finished: Vec<String> = self
            .msgs
            .values()
            .filter(|m| m.remaining == 0)
            .map(|m| m.id.clone())
            .collect();
        for id in finished {
            self.batch.delete_cf(cf(self.db, CF_BODIES), id.as_bytes());
        }
        Ok(Response::Delivered {
            leased,
            applied,
            dsns,
        })
    }

    /// A DSN goes to the return path unless it is null, the message is itself a DSN, or the
    /// tenant turned DSNs off.
    fn wants_dsn(&self, m: &MessageRecord) -> Res<bool> {
        if m.mail_from.is_empty() || m.dsn_for.is_some() {
            return Ok(false);
        }
        if m.tenant.is_empty() {
            return Ok(true);
        }
        Ok(self
            .get::<TenantRecord>(CF_TENANTS, self.account(&m.tenant).as_bytes())?
            .is_none_or(|t| t.dsn))
    }
}
