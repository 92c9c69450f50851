//! The `[node.delivery]` section: how the scheduler on the leader hands out and retries work.

use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use skein_core::{ByteSize, HumanDuration};

use crate::{invalid, ConfigError};

/// Scheduler policy. The defaults follow common MTA practice: first retry after minutes,
/// backoff capped at hours, give up after five days.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct DeliveryConfig {
    /// Name of this MTA in DSNs (`Reporting-MTA`, the `MAILER-DAEMON@` address).
    pub mta_name: String,
    /// Delay before the first retry; each later retry doubles it.
    pub retry_first: HumanDuration,
    /// Longest delay between retries.
    pub retry_max: HumanDuration,
    /// Random spread applied to every retry delay, as a fraction (0.2 = ±20%).
    pub retry_jitter: f64,
    /// A recipient still undelivered this long after it was received expires and bounces.
    pub max_age: HumanDuration,
    /// Delay after a remote "slow down" (421, 4.7.x) reply; not counted as an attempt.
    pub throttle_delay: HumanDuration,
    /// How long a sender holds work before it may be given to another sender.
    pub lease: HumanDuration,
    /// Recipients of one message and domain handed over in one assignment (one transaction).
    pub max_rcpts_per_assignment: usize,
    /// Recipients considered per scheduling round.
    pub batch: usize,
    /// Bytes of message bodies the leader holds in assignments its senders have not taken
    /// yet (a slow or stuck sender's backlog). Past it no new work is handed out until they
    /// drain; one message is always allowed when nothing is held. Default 256MB.
    pub assignment_memory: ByteSize,
    /// How long a finished message (every recipient delivered, bounced, expired or suppressed)
    /// keeps its envelope and attempt history for `skeinctl message`; then it is forgotten.
    pub keep_finished: HumanDuration,
    /// JSON-lines file for delivery events (`-` for standard output); none when unset.
    pub events: Option<PathBuf>,
    /// Also log one line per outcome at info level (delivered, deferred with the reply,
    /// bounced, expired, suppressed). Default false; `skein dev` turns it on.
    pub log_outcomes: bool,
    /// Which bounces put an address on its tenant's suppression list.
    pub suppression: SuppressionPolicy,
}

/// `[node.delivery.suppression]`: which bounces suppress an address (the tenant's later mail
/// to it is answered 250 and marked suppressed, never sent). A bounce saying the mailbox
/// does not exist (x.1.1, x.1.3, x.1.6, x.2.1) suppresses at once; one saying the domain or
/// its DNS failed (x.1.2, x.1.10), which a resolver's bad minute can produce for every address
/// of a big domain, only after repeats over days. The bounce of a DSN suppresses nothing.
/// Applies from replicated format 7; before, mailbox and domain failures suppress at once.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct SuppressionPolicy {
    /// Domain-level bounces of one address before it is suppressed; 0: never. Default 3.
    pub domain_failures: u32,
    /// Least time between the first and the latest of them. Default 2 days.
    pub domain_failure_span: HumanDuration,
    /// A count whose first bounce is older than this starts again. Default 30 days.
    pub domain_failure_window: HumanDuration,
    /// How long an entry a bounce adds lasts; `0s`: until removed. Entries an operator adds
    /// last until removed. Default `0s`.
    pub expire_after: HumanDuration,
}

impl Default for SuppressionPolicy {
    fn default() -> Self {
        Self {
            domain_failures: 3,
            domain_failure_span: HumanDuration(Duration::from_secs(2 * 86_400)),
            domain_failure_window: HumanDuration(Duration::from_secs(30 * 86_400)),
            expire_after: HumanDuration(Duration::ZERO),
        }
    }
}

/// Most recipients one scheduling round considers (`batch`). With the reports a round takes,
/// the messages one round can bounce or expire stay below the 65,536 DSN ids one Raft entry
/// can give (queue ids end in four hex digits of position).
pub const MAX_BATCH: usize = 60_000;

impl Default for DeliveryConfig {
    fn default() -> Self {
        Self {
            mta_name: "localhost".into(),
            retry_first: HumanDuration(Duration::from_secs(5 * 60)),
            retry_max: HumanDuration(Duration::from_secs(4 * 3600)),
            retry_jitter: 0.2,
            max_age: HumanDuration(Duration::from_secs(5 * 24 * 3600)),
            throttle_delay: HumanDuration(Duration::from_secs(60)),
            lease: HumanDuration(Duration::from_secs(10 * 60)),
            max_rcpts_per_assignment: 50,
            batch: 1000,
            assignment_memory: ByteSize(256_000_000),
            keep_finished: HumanDuration(Duration::from_secs(7 * 24 * 3600)),
            events: None,
            log_outcomes: false,
            suppression: SuppressionPolicy::default(),
        }
    }
}

impl DeliveryConfig {
    /// Checks the values, naming the first bad field.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let f = |name: &str| format!("node.delivery.{name}");
        if self.mta_name.is_empty() || self.mta_name.contains(char::is_whitespace) {
            return Err(invalid(f("mta_name"), "must be a host name"));
        }
        if self.retry_first.0.is_zero() {
            return Err(invalid(f("retry_first"), "must be > 0"));
        }
        if self.retry_max.0 < self.retry_first.0 {
            return Err(invalid(f("retry_max"), "must be at least retry_first"));
        }
        if !(0.0..1.0).contains(&self.retry_jitter) {
            return Err(invalid(f("retry_jitter"), "must be in [0, 1)"));
        }
        if self.max_age.0.is_zero() {
            return Err(invalid(f("max_age"), "must be > 0"));
        }
        if self.lease.0 < Duration::from_secs(1) {
            return Err(invalid(f("lease"), "must be at least 1s"));
        }
        if !(1..=1000).contains(&self.max_rcpts_per_assignment) {
            return Err(invalid(f("max_rcpts_per_assignment"), "must be 1-1000"));
        }
        if self.assignment_memory.0 < 1_000_000 {
            return Err(invalid(f("assignment_memory"), "must be at least 1MB"));
        }
        if self.keep_finished.0 < Duration::from_secs(1) {
            return Err(invalid(f("keep_finished"), "must be at least 1s"));
        }
        let s = &self.suppression;
        if s.domain_failure_window.0 < s.domain_failure_span.0 {
            return Err(invalid(
                f("suppression.domain_failure_window"),
                "must be at least domain_failure_span",
            ));
        }
        if !(1..=MAX_BATCH).contains(&self.batch) {
            return Err(invalid(
                f("batch"),
                "must be 1-60000 (one round's bounces and expiries must fit in one Raft \
                 entry's 65536 DSN ids)",
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn batch_is_bounded_by_the_dsn_ids_of_one_entry() {
        let mut c = DeliveryConfig {
            batch: MAX_BATCH,
            ..DeliveryConfig::default()
        };
        assert!(c.validate().is_ok());
        c.batch = MAX_BATCH + 1;
        let e = c.validate().unwrap_err().to_string();
        assert!(e.contains("node.delivery.batch"), "{e}");
        assert!(e.contains("1-60000"), "{e}");
    }

    #[test]
    fn suppression_window_covers_the_span() {
        let mut c = DeliveryConfig::default();
        c.suppression.domain_failure_span = HumanDuration(Duration::from_secs(40 * 86_400));
        let e = c.validate().unwrap_err().to_string();
        assert!(
            e.contains("node.delivery.suppression.domain_failure_window"),
            "{e}"
        );
        let c: DeliveryConfig =
            toml::from_str("[suppression]\ndomain_failures = 0\nexpire_after = \"90d\"\n").unwrap();
        assert_eq!(c.suppression.domain_failures, 0);
        assert_eq!(
            c.suppression.expire_after.0,
            Duration::from_secs(90 * 86_400)
        );
        assert!(c.validate().is_ok());
    }
}
