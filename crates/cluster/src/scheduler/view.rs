//! What the planner reads of the queue: ready queues, their due recipients, recipient records
//! and message sizes. [`QueueReader`] is the real one; tests use an in-memory one.

use skein_queue::{
    QueueError, QueueHead, QueueReader, RcptRecord, ShapingState, TenantSuppressionPolicy,
};
use skein_shaping::Suspension;

/// Reads over the applied queue state, as the planner needs them.
pub trait QueueView {
    /// The first due entry of every queue with a recipient due by `now_ms`, at most `limit`.
    fn ready_queues(&self, now_ms: i64, limit: usize) -> Result<Vec<QueueHead>, QueueError>;
    /// Up to `limit` recipients of one queue due by `now_ms`, earliest first.
    fn queue_due(
        &self,
        tenant: &str,
        domain: &str,
        now_ms: i64,
        limit: usize,
    ) -> Result<Vec<RcptRecord>, QueueError>;
    /// A recipient's current record.
    fn rcpt(&self, key: &str) -> Result<Option<RcptRecord>, QueueError>;
    /// A message's size in bytes (0 when it is gone).
    fn message_size(&self, id: &str) -> u64;
    /// The latest command time applied (command time never goes backwards).
    fn clock_ms(&self) -> Result<i64, QueueError>;
    /// The sending limits and counters at `now_ms`, or `None` while the cluster has no IP
    /// records (senders' own IPs then send without limits).
    fn shaping(&self, now_ms: i64) -> Result<Option<ShapingState>, QueueError>;
    /// Operators' suspensions in force at `now_ms` (with or without IP records).
    fn suspensions(&self, now_ms: i64) -> Result<Vec<Suspension>, QueueError>;
    /// The own suppression rule of the tenant whose settings queue tenant `tenant` uses
    /// (`acme+bulk` is acme's), if it has one.
    fn suppression_policy(
        &self,
        tenant: &str,
    ) -> Result<Option<TenantSuppressionPolicy>, QueueError>;
}

impl QueueView for QueueReader {
    fn ready_queues(&self, now_ms: i64, limit: usize) -> Result<Vec<QueueHead>, QueueError> {
        QueueReader::ready_queues(self, now_ms, limit)
    }

    fn queue_due(
        &self,
        tenant: &str,
        domain: &str,
        now_ms: i64,
        limit: usize,
    ) -> Result<Vec<RcptRecord>, QueueError> {
        QueueReader::queue_due(self, tenant, domain, now_ms, limit)
    }

    fn rcpt(&self, key: &str) -> Result<Option<RcptRecord>, QueueError> {
        QueueReader::rcpt(self, key)
    }

    fn message_size(&self, id: &str) -> u64 {
        QueueReader::message_size(self, id)
            .ok()
            .flatten()
            .unwrap_or(0)
    }

    fn clock_ms(&self) -> Result<i64, QueueError> {
        QueueReader::clock_ms(self)
    }

    fn shaping(&self, now_ms: i64) -> Result<Option<ShapingState>, QueueError> {
        if !self.shaping_on()? {
            return Ok(None);
        }
        QueueReader::shaping(self, now_ms).map(Some)
    }

    fn suspensions(&self, now_ms: i64) -> Result<Vec<Suspension>, QueueError> {
        QueueReader::suspensions(self, now_ms)
    }

    fn suppression_policy(
        &self,
        tenant: &str,
    ) -> Result<Option<TenantSuppressionPolicy>, QueueError> {
        QueueReader::suppression_policy(self, skein_shaping::base_tenant(tenant))
    }
}
