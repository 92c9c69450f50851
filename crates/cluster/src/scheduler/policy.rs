//! Retry policy: what happens to a recipient after an attempt. Pure functions of the
//! configuration, the recipient, the outcome, the time and a random draw.

use std::time::Duration;

use skein_config::{DeliveryConfig, SuppressionPolicy};
use skein_queue::{AttemptResult, Disposition, RcptRecord, Reply, SuppressRule};

/// The disposition of `rcpt` after an attempt that ended with `result` and `reply` at `now_ms`.
/// `unit` is a random draw in `[0, 1)` for the jitter.
pub fn disposition(
    cfg: &DeliveryConfig,
    rcpt: &RcptRecord,
    result: AttemptResult,
    reply: &Reply,
    now_ms: i64,
    unit: f64,
) -> Disposition {
    let too_old = now_ms.saturating_sub(rcpt.received_at_ms) >= ms(cfg.max_age.0);
    match result {
        AttemptResult::Delivered => Disposition::Delivered,
        AttemptResult::Permanent => Disposition::BounceWith(suppress_rule(&cfg.suppression, reply)),
        _ if too_old => Disposition::Expire,
        AttemptResult::Throttled => Disposition::Retry {
            at_ms: now_ms + ms(cfg.throttle_delay.0),
            counted: false,
        },
        AttemptResult::Transient => Disposition::Retry {
            at_ms: now_ms + ms(retry_delay(cfg, rcpt.attempts + 1, unit)),
            counted: true,
        },
    }
}

/// Whether a recipient that was never attempted has outlived the maximum age.
pub fn expired(cfg: &DeliveryConfig, rcpt: &RcptRecord, now_ms: i64) -> bool {
    now_ms.saturating_sub(rcpt.received_at_ms) >= ms(cfg.max_age.0)
}

/// The delay after the `attempt`-th failed attempt (1-based): `retry_first` doubling each time,
/// capped at `retry_max`, spread by ±`retry_jitter`.
pub fn retry_delay(cfg: &DeliveryConfig, attempt: u32, unit: f64) -> Duration {
    let first = cfg.retry_first.0.as_secs_f64();
    let base = (first * 2f64.powi(attempt.saturating_sub(1).min(30) as i32))
        .min(cfg.retry_max.0.as_secs_f64());
    let spread = 1.0 + cfg.retry_jitter * (2.0 * unit.clamp(0.0, 1.0) - 1.0);
    Duration::from_secs_f64((base * spread).max(0.001))
}

/// How a permanent failure with `reply` adds its address to the suppression list: at once
/// when the mailbox is bad ([`is_hard_bounce`]), after repeats when the domain or its DNS
/// failed (x.1.2, x.1.10), never else.
pub fn suppress_rule(p: &SuppressionPolicy, reply: &Reply) -> SuppressRule {
    let expire_after_ms = ms(p.expire_after.0);
    if is_hard_bounce(reply) {
        return SuppressRule::Now { expire_after_ms };
    }
    let domain_level =
        reply.code >= 500 && matches!(reply.enhanced.get(1..), Some(".1.2" | ".1.10"));
    if domain_level && p.domain_failures > 0 {
        return SuppressRule::After {
            strikes: p.domain_failures,
            span_ms: ms(p.domain_failure_span.0),
            window_ms: ms(p.domain_failure_window.0),
            expire_after_ms,
        };
    }
    SuppressRule::Never
}

/// A tenant's own rule ([`skein_queue::TenantSuppressionPolicy`]) in the configuration's terms.
pub fn tenant_policy(p: &skein_queue::TenantSuppressionPolicy) -> SuppressionPolicy {
    let d = |ms: i64| skein_core::HumanDuration(Duration::from_millis(ms.max(0) as u64));
    SuppressionPolicy {
        domain_failures: p.domain_failures,
        domain_failure_span: d(p.domain_failure_span_ms),
        domain_failure_window: d(p.domain_failure_window_ms),
        expire_after: d(p.expire_after_ms),
    }
}

/// Permanent failures that say the mailbox itself is bad, so sending to it again would only
/// hurt the sender's reputation: unknown user (x.1.1), bad address syntax (x.1.3), moved
/// mailbox (x.1.6), disabled mailbox (x.2.1). Failures of the whole domain are not: see
/// [`suppress_rule`].
pub fn is_hard_bounce(reply: &Reply) -> bool {
    reply.code >= 500
        && matches!(
            reply.enhanced.get(1..),
            Some(".1.1" | ".1.3" | ".1.6" | ".2.1")
        )
}

fn ms(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;
    use skein_queue::RcptState;

    fn rcpt(attempts: u32, received_at_ms: i64) -> RcptRecord {
        RcptRecord {
            key: "k".into(),
            message_id: "m".into(),
            address: "a@b.test".into(),
            domain: "b.test".into(),
            tenant: String::new(),
            state: RcptState::Queued,
            attempts,
            due_ms: 0,
            received_at_ms,
            last_reply: None,
            history: Vec::new(),
            final_at_ms: None,
        }
    }

    fn reply(code: u16, enhanced: &str) -> Reply {
        Reply {
            code,
            enhanced: enhanced.into(),
            text: String::new(),
        }
    }

    #[test]
    fn backoff_doubles_is_capped_and_jittered() {
        let cfg = DeliveryConfig::default(); // 5m first, 4h max, ±20%
        assert_eq!(retry_delay(&cfg, 1, 0.5).as_secs(), 300);
        assert_eq!(retry_delay(&cfg, 2, 0.5).as_secs(), 600);
        assert_eq!(retry_delay(&cfg, 4, 0.5).as_secs(), 2400);
        assert_eq!(retry_delay(&cfg, 10, 0.5).as_secs(), 4 * 3600);
        assert_eq!(retry_delay(&cfg, 1000, 0.5).as_secs(), 4 * 3600);
        assert_eq!(retry_delay(&cfg, 1, 0.0).as_secs(), 240);
        assert_eq!(retry_delay(&cfg, 1, 0.999_999).as_secs(), 359);
    }

    #[test]
    fn outcomes_map_to_dispositions() {
        let cfg = DeliveryConfig::default();
        let day = 24 * 3600 * 1000;
        let fresh = rcpt(0, 0);
        assert_eq!(
            disposition(
                &cfg,
                &fresh,
                AttemptResult::Delivered,
                &reply(250, "2.0.0"),
                10,
                0.5
            ),
            Disposition::Delivered
        );
        assert_eq!(
            disposition(
                &cfg,
                &fresh,
                AttemptResult::Transient,
                &reply(451, "4.3.0"),
                10,
                0.5
            ),
            Disposition::Retry {
                at_ms: 10 + 300_000,
                counted: true
            }
        );
        assert_eq!(
            disposition(
                &cfg,
                &fresh,
                AttemptResult::Throttled,
                &reply(421, "4.7.0"),
                10,
                0.5
            ),
            Disposition::Retry {
                at_ms: 10 + 60_000,
                counted: false
            }
        );
        assert_eq!(
            disposition(
                &cfg,
                &fresh,
                AttemptResult::Permanent,
                &reply(550, "5.1.1"),
                10,
                0.5
            ),
            Disposition::BounceWith(SuppressRule::Now { expire_after_ms: 0 })
        );
        assert_eq!(
            disposition(
                &cfg,
                &fresh,
                AttemptResult::Permanent,
                &reply(554, "5.7.1"),
                10,
                0.5
            ),
            Disposition::BounceWith(SuppressRule::Never)
        );
        // Five days old: a transient failure expires it, a delivery still counts.
        let old = rcpt(20, 0);
        assert_eq!(
            disposition(
                &cfg,
                &old,
                AttemptResult::Transient,
                &reply(451, ""),
                5 * day,
                0.5
            ),
            Disposition::Expire
        );
        assert_eq!(
            disposition(
                &cfg,
                &old,
                AttemptResult::Delivered,
                &reply(250, ""),
                5 * day,
                0.5
            ),
            Disposition::Delivered
        );
        assert!(expired(&cfg, &old, 5 * day));
        assert!(!expired(&cfg, &old, 5 * day - 1));
    }

    #[test]
    fn hard_bounces_are_about_the_address() {
        assert!(is_hard_bounce(&reply(550, "5.1.1")));
        assert!(
            !is_hard_bounce(&reply(556, "5.1.10")),
            "null MX is about the domain"
        );
        assert!(!is_hard_bounce(&reply(550, "5.1.2")));
        assert!(!is_hard_bounce(&reply(550, "5.1.11")));
        assert!(!is_hard_bounce(&reply(452, "4.1.1")));
        assert!(
            !is_hard_bounce(&reply(552, "5.2.2")),
            "mailbox full is not the address"
        );
        assert!(!is_hard_bounce(&reply(550, "")));
    }

    #[test]
    fn mailbox_failures_suppress_at_once_and_domain_failures_after_repeats() {
        let mut cfg = DeliveryConfig::default();
        cfg.suppression.expire_after = skein_core::HumanDuration(Duration::from_secs(3600));
        for code in ["5.1.1", "5.1.3", "5.1.6", "5.2.1"] {
            assert_eq!(
                suppress_rule(&cfg.suppression, &reply(550, code)),
                SuppressRule::Now {
                    expire_after_ms: 3_600_000
                },
                "{code}"
            );
        }
        let after = SuppressRule::After {
            strikes: 3,
            span_ms: 2 * 86_400_000,
            window_ms: 30 * 86_400_000,
            expire_after_ms: 3_600_000,
        };
        assert_eq!(suppress_rule(&cfg.suppression, &reply(550, "5.1.2")), after);
        assert_eq!(
            suppress_rule(&cfg.suppression, &reply(554, "5.1.10")),
            after
        );
        // Policy, content, a 4xx that ended up permanent: nothing about the address.
        for (code, enhanced) in [(554, "5.7.1"), (552, "5.3.4"), (450, "4.1.1"), (550, "")] {
            assert_eq!(
                suppress_rule(&cfg.suppression, &reply(code, enhanced)),
                SuppressRule::Never,
                "{code} {enhanced}"
            );
        }
        cfg.suppression.domain_failures = 0;
        assert_eq!(
            suppress_rule(&cfg.suppression, &reply(550, "5.1.2")),
            SuppressRule::Never
        );
    }
}
