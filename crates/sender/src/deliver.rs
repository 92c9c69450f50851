//! One assignment in, one report out.
//!
//! Resolve the destination, then try its hosts in order: a connection-level failure (refused,
//! timeout, TLS, a 4xx/5xx greeting or EHLO) moves on to the next host, and the last one's
//! answer stands; anything said about the message or a recipient is final for this attempt.
//! Each recipient gets one classified result with the reply that decided it.

use std::net::IpAddr;
use std::sync::Arc;

use rustls::ClientConfig;
use skein_config::sender::{SenderConfig, TlsPolicy};
use skein_core::SharedClock;
use skein_observe::trace;
use skein_proto::work::{Assignment, Outcome, RecipientResult, Report};
use skein_smtp::address::parse_mailbox;
use skein_smtp::client::{TlsWish, Transaction, TransactionResult};
use skein_smtp::outcome::{classify, classify_reply, Class, Failure, Scope, Stage, Verdict};

use crate::conn::{Connection, Endpoint, Pool, Timeouts};
use crate::destination::Destinations;
use crate::dns::{Resolver, Target};
use crate::gate::{self, Gate, Gates};
use crate::SenderError;

/// Delivers assignments.
#[derive(Debug, Clone)]
pub struct Deliverer {
    cfg: Arc<SenderConfig>,
    resolver: Resolver,
    pool: Arc<Pool>,
    tls: Arc<ClientConfig>,
    timeouts: Timeouts,
    clock: SharedClock,
    gates: Arc<Gates>,
    destinations: Destinations,
}

/// How long a delivery waits for its provider's connection limit before giving up on this
/// attempt (reported as a local "slow down", not counted).
const GATE_WAIT: std::time::Duration = std::time::Duration::from_secs(60);

fn outcome(c: Class) -> Outcome {
    match c {
        Class::Delivered => Outcome::Delivered,
        Class::Transient => Outcome::Transient,
        Class::Permanent => Outcome::Permanent,
        Class::Throttled => Outcome::Throttled,
    }
}

/// At most 80 characters of `s`, for messages about it.
fn clip(s: &str) -> String {
    s.chars().take(80).collect()
}

fn verdict_failure(message: String) -> Verdict {
    classify(&Failure::Protocol {
        stage: Stage::Mail,
        message,
    })
}

impl Deliverer {
    /// A deliverer for `cfg`. Starts the pool's reaper: call inside a Tokio runtime.
    pub fn new(cfg: SenderConfig, clock: SharedClock) -> Result<Self, SenderError> {
        let nameservers: Vec<_> = cfg
            .nameservers
            .iter()
            .filter_map(|n| skein_config::sender::parse_nameserver(n))
            .collect();
        let resolver = Resolver::new(&nameservers).map_err(crate::SenderError::Resolver)?;
        let pool = Pool::new(cfg.idle_timeout.0, cfg.max_messages_per_connection);
        let destinations = Destinations::new(
            cfg.allow_destinations.clone(),
            cfg.deny_destinations.clone(),
        );
        tokio::spawn(pool.clone().reap());
        Ok(Self {
            timeouts: Timeouts::from(&cfg.timeouts),
            cfg: Arc::new(cfg),
            resolver,
            pool,
            tls: crate::tls::client_config()?,
            clock,
            gates: Arc::default(),
            destinations,
        })
    }

    /// The connection pool (for tests and metrics).
    pub fn pool(&self) -> &Arc<Pool> {
        &self.pool
    }

    /// Delivers `a` and reports one result per recipient.
    pub async fn deliver(&self, a: &Assignment) -> Report {
        let _working = crate::metrics::IN_FLIGHT.track();
        let started = std::time::Instant::now();
        // Continues the message's trace from the leader's scheduling span.
        let cx = trace::start(
            "smtp deliver",
            trace::SpanKind::Client,
            &trace::from_traceparent(&a.traceparent),
            vec![
                trace::KeyValue::new("skein.queue_id", a.message_id.clone()),
                trace::KeyValue::new("skein.source_ip", a.source_ip.clone()),
                trace::KeyValue::new("skein.domain", a.domain.clone()),
                trace::KeyValue::new("skein.recipients", a.rcpts.len() as i64),
            ],
        );
        let (mx, verdicts) = self.attempt(a).await;
        trace::set(&cx, trace::KeyValue::new("server.address", mx.clone()));
        // The remote's reply (the first recipient's; others differ only when rejected alone).
        if let Some(v) = verdicts.first() {
            let reply = format!("{} {} {}", v.code, v.enhanced, v.text);
            trace::set(
                &cx,
                trace::KeyValue::new("smtp.reply", reply.trim().to_string()),
            );
            if v.class != Class::Delivered {
                trace::fail(&cx, reply.trim().to_string());
            }
        }
        trace::set(
            &cx,
            trace::KeyValue::new(
                "skein.delivered",
                verdicts
                    .iter()
                    .filter(|v| v.class == Class::Delivered)
                    .count() as i64,
            ),
        );
        trace::end(&cx);
        crate::metrics::ASSIGNMENTS.inc();
        crate::metrics::DELIVERY_SECONDS.observe(started.elapsed().as_secs_f64());
        for v in &verdicts {
            crate::metrics::RECIPIENTS[match v.class {
                Class::Delivered => 0,
                Class::Transient => 1,
                Class::Permanent => 2,
                Class::Throttled => 3,
            }]
            .inc();
        }
        let rcpts = a
            .rcpts
            .iter()
            .zip(verdicts)
            .map(|(r, v)| RecipientResult {
                key: r.key.clone(),
                outcome: outcome(v.class) as i32,
                code: u32::from(v.code),
                enhanced: v.enhanced,
                text: v.text,
            })
            .collect();
        Report {
            lease: a.lease,
            rcpts,
            mx,
            source_ip: a.source_ip.clone(),
            finished_ms: self.clock.now_ms(),
        }
    }

    /// The MX used (or last tried) and one verdict per recipient, in order. Addresses are
    /// parsed again here, as the edge and Ingest parse them: a recipient that is not an
    /// address (a record from before Ingest checked them, say) fails on its own, never
    /// reaching an SMTP command; a bad reverse-path fails the whole assignment.
    async fn attempt(&self, a: &Assignment) -> (String, Vec<Verdict>) {
        let bad = |f: Failure| vec![classify(&f); a.rcpts.len()];
        let mail_from = match a.mail_from.as_str() {
            "" => None,
            from => match parse_mailbox(from, a.smtputf8) {
                Ok(m) => Some(m),
                Err(e) => {
                    return (
                        String::new(),
                        bad(Failure::BadSender(format!("{:?}: {e}", clip(from)))),
                    )
                }
            },
        };
        let mut verdicts: Vec<Option<Verdict>> = vec![None; a.rcpts.len()];
        let mut rcpts = Vec::new();
        for (i, r) in a.rcpts.iter().enumerate() {
            match parse_mailbox(&r.address, a.smtputf8) {
                Ok(addr) => rcpts.push((i, addr)),
                Err(e) => {
                    verdicts[i] = Some(classify(&Failure::BadRecipient(format!(
                        "{:?}: {e}",
                        clip(&r.address)
                    ))))
                }
            }
        }
        let mut mx = String::new();
        if !rcpts.is_empty() {
            let tx = Transaction {
                mail_from,
                rcpts: rcpts.iter().map(|(_, r)| r.clone()).collect(),
                body: self.stamped(a, &rcpts).into(),
                smtputf8: a.smtputf8,
            };
            let (used, sent) = self.send(a, tx).await;
            mx = used;
            for ((i, _), v) in rcpts.iter().zip(sent) {
                verdicts[*i] = Some(v);
            }
        }
        let verdicts = verdicts
            .into_iter()
            .map(|v| v.unwrap_or_else(|| verdict_failure("no verdict".into())))
            .collect();
        (mx, verdicts)
    }

    /// The message as this sender relays it: its `Received:` field (naming the queue id) and
    /// the stored message.
    fn stamped(&self, a: &Assignment, rcpts: &[(usize, skein_smtp::address::Address)]) -> Vec<u8> {
        let to: Vec<String> = rcpts.iter().map(|(_, r)| r.to_string()).collect();
        let to: Vec<&str> = to.iter().map(String::as_str).collect();
        let date = skein_core::date::rfc5322(self.clock.now_ms());
        let header =
            skein_smtp::received::relay_header(&a.edge, &a.ehlo, &a.message_id, &to, &date);
        let mut body = Vec::with_capacity(header.len() + a.data.len());
        body.extend_from_slice(header.as_bytes());
        body.extend_from_slice(&a.data);
        body
    }

    /// Sends `tx` (the assignment's valid recipients): the MX used (or last tried) and one
    /// verdict per recipient of `tx`, in order.
    async fn send(&self, a: &Assignment, tx: Transaction) -> (String, Vec<Verdict>) {
        let n = tx.rcpts.len();
        let all = |v: Verdict| vec![v; n];
        let source: IpAddr = match a.source_ip.parse() {
            Ok(ip) => ip,
            Err(_) => {
                return (
                    String::new(),
                    all(verdict_failure(format!(
                        "assigned source IP {:?} is not an address",
                        a.source_ip
                    ))),
                )
            }
        };
        if !self.cfg.source_ips.iter().any(|s| s.ip == source) {
            return (
                String::new(),
                all(classify(&Failure::Connect(format!(
                    "this sender does not own source IP {source}"
                )))),
            );
        }
        let route = self.cfg.route(&a.domain);
        let targets = match crate::dns::targets(
            &self.resolver,
            &a.domain,
            route,
            self.cfg.smtp_port,
            source.is_ipv4(),
        )
        .await
        {
            Ok(t) => t,
            Err(f) => return (String::new(), all(classify(&f))),
        };
        let (targets, refused) = self.allowed(targets);
        if targets.is_empty() {
            if let Some(why) = refused {
                tracing::warn!(domain = %a.domain, %why, "refusing a destination");
                return (
                    String::new(),
                    all(classify(&Failure::RefusedDestination(why))),
                );
            }
        }
        let tls = match self.cfg.tls_for(&a.domain) {
            TlsPolicy::Opportunistic => TlsWish::Opportunistic,
            TlsPolicy::Required => TlsWish::Required,
            TlsPolicy::Disabled => TlsWish::Never,
        };
        // The leader's limit on connections at once from this IP to this provider.
        let gate = (a.max_connections > 0 && !a.provider.is_empty())
            .then(|| self.gates.get(source, &a.provider, a.max_connections));
        let limit = gate.as_ref().map(|g| (g, a.max_per_connection));
        let mut last = (String::new(), verdict_failure("no host to try".into()));
        for target in targets {
            for peer in &target.addrs {
                let endpoint = Endpoint {
                    source,
                    peer: *peer,
                    host: target.host.clone(),
                    ehlo: a.ehlo.clone(),
                    tls,
                    provider: a.provider.clone(),
                };
                let mx = endpoint.describe();
                let plain = Endpoint {
                    tls: TlsWish::Never,
                    ..endpoint.clone()
                };
                let mut outcome = self.on(endpoint, tx.clone(), limit).await;
                // Opportunistic TLS that fails its handshake goes again in plaintext on the
                // same host, as Postfix does at `may`: encryption was a wish, delivery isn't.
                // (`required` never does.)
                if let (Err(Failure::Tls(e)), TlsWish::Opportunistic) = (&outcome, tls) {
                    tracing::info!(%mx, error = %e, "TLS handshake failed: delivering in plaintext");
                    outcome = self.on(plain, tx.clone(), limit).await;
                }
                match outcome {
                    Ok(result) => {
                        let v = result
                            .rcpts
                            .iter()
                            .map(|(stage, reply)| classify_reply(*stage, reply))
                            .collect();
                        return (mx, v);
                    }
                    Err(f) => {
                        let v = classify(&f);
                        if v.scope != Scope::Connection {
                            return (mx, all(v));
                        }
                        tracing::debug!(%mx, reason = %v.text, "trying the next host");
                        last = (mx, v);
                    }
                }
            }
        }
        let (mx, v) = last;
        (mx, all(v))
    }

    /// `targets` without the addresses mail may not go to (hosts left with none are dropped),
    /// and the first refusal, saying which host, address and why.
    fn allowed(&self, targets: Vec<Target>) -> (Vec<Target>, Option<String>) {
        let mut refused = None;
        let kept = targets
            .into_iter()
            .filter_map(|mut t| {
                t.addrs.retain(|a| match self.destinations.refusal(a.ip()) {
                    None => true,
                    Some(why) => {
                        refused.get_or_insert_with(|| format!("{} ({}) is {why}", t.host, a.ip()));
                        false
                    }
                });
                (!t.addrs.is_empty()).then_some(t)
            })
            .collect();
        (kept, refused)
    }

    /// Runs the transaction on a pooled or new connection to `endpoint`. A pooled connection
    /// the server dropped while it sat idle gets one retry on a new one: only when it broke
    /// before answering MAIL, so nothing of this transaction can have been accepted (once the
    /// message was sent, a broken connection may have delivered it, and that attempt is
    /// reported as it is, deferred, rather than sent again at once).
    /// A new connection under a provider's limit first needs a permit: an idle connection of
    /// the same source IP and provider is closed for it, or it waits (at most [`GATE_WAIT`]).
    async fn on(
        &self,
        endpoint: Endpoint,
        tx: Transaction,
        limit: Option<(&Arc<Gate>, u32)>,
    ) -> Result<TransactionResult, Failure> {
        if let Some(mut c) = self.pool.take(&endpoint) {
            match c.send(tx.clone()).await {
                Ok(r) if !stale(&r) => {
                    self.pool.put(c).await;
                    return Ok(r);
                }
                Err(
                    Failure::Closed { stage: Stage::Mail }
                    | Failure::Protocol {
                        stage: Stage::Mail, ..
                    },
                ) if !c.reusable() => {}
                Ok(_) => {}
                Err(f) => {
                    self.pool.put(c).await;
                    return Err(f);
                }
            }
        }
        let permit = match limit {
            None => None,
            Some((g, per_connection)) => {
                let p = match gate::try_permit(g) {
                    Some(p) => Some(p),
                    None => {
                        if let Some(idle) = self.pool.evict(endpoint.source, &endpoint.provider) {
                            idle.quit().await;
                        }
                        gate::permit(g, GATE_WAIT).await
                    }
                };
                let Some(p) = p else {
                    return Err(Failure::Reply {
                        stage: Stage::Mail,
                        reply: skein_smtp::client::RemoteReply {
                            code: 451,
                            enhanced: Some("4.7.0".into()),
                            lines: vec![format!(
                                "local limit: {} connections at once from {} to {}",
                                g.max(),
                                endpoint.source,
                                endpoint.provider
                            )],
                        },
                    });
                };
                Some((p, per_connection))
            }
        };
        let mut c = Connection::open(endpoint, self.timeouts, self.tls.clone()).await?;
        if let Some((p, per_connection)) = permit {
            c.limit(p, per_connection);
        }
        let r = c.send(tx).await;
        self.pool.put(c).await;
        r
    }
}

/// Every recipient failed with 421 at MAIL: the server closed an idle connection.
fn stale(r: &TransactionResult) -> bool {
    r.rcpts
        .iter()
        .all(|(s, reply)| *s == Stage::Mail && reply.code == 421)
}
