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
use skein_proto::work::{Assignment, Outcome, RecipientResult, Report};
use skein_smtp::client::{TlsWish, Transaction, TransactionResult};
use skein_smtp::outcome::{classify, classify_reply, Class, Failure, Scope, Stage, Verdict};

use crate::conn::{Connection, Endpoint, Pool, Timeouts};
use crate::dns::Resolver;
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
}

fn outcome(c: Class) -> Outcome {
    match c {
        Class::Delivered => Outcome::Delivered,
        Class::Transient => Outcome::Transient,
        Class::Permanent => Outcome::Permanent,
        Class::Throttled => Outcome::Throttled,
    }
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
        let resolver = Resolver::new(&nameservers)?;
        let pool = Pool::new(cfg.idle_timeout.0, cfg.max_messages_per_connection);
        tokio::spawn(pool.clone().reap());
        Ok(Self {
            timeouts: Timeouts::from(&cfg.timeouts),
            cfg: Arc::new(cfg),
            resolver,
            pool,
            tls: crate::tls::client_config()?,
            clock,
        })
    }

    /// The connection pool (for tests and metrics).
    pub fn pool(&self) -> &Arc<Pool> {
        &self.pool
    }

    /// Delivers `a` and reports one result per recipient.
    pub async fn deliver(&self, a: &Assignment) -> Report {
        let (mx, verdicts) = self.attempt(a).await;
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

    /// The MX used (or last tried) and one verdict per recipient, in order.
    async fn attempt(&self, a: &Assignment) -> (String, Vec<Verdict>) {
        let n = a.rcpts.len();
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
        let targets = match self
            .resolver
            .targets(&a.domain, route, self.cfg.smtp_port, source.is_ipv4())
            .await
        {
            Ok(t) => t,
            Err(f) => return (String::new(), all(classify(&f))),
        };
        let tls = match self.cfg.tls_for(&a.domain) {
            TlsPolicy::Opportunistic => TlsWish::Opportunistic,
            TlsPolicy::Required => TlsWish::Required,
            TlsPolicy::Disabled => TlsWish::Never,
        };
        let tx = Transaction {
            mail_from: a.mail_from.clone(),
            rcpts: a.rcpts.iter().map(|r| r.address.clone()).collect(),
            body: a.data.to_vec(),
            smtputf8: a.smtputf8,
        };
        let mut last = (String::new(), verdict_failure("no host to try".into()));
        for target in targets {
            for peer in &target.addrs {
                let endpoint = Endpoint {
                    source,
                    peer: *peer,
                    host: target.host.clone(),
                    ehlo: a.ehlo.clone(),
                    tls,
                };
                let mx = endpoint.describe();
                match self.on(endpoint, tx.clone()).await {
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

    /// Runs the transaction on a pooled or new connection to `endpoint`. A pooled connection
    /// the server dropped while it sat idle gets one retry on a new one: only when it broke
    /// before answering MAIL, so nothing of this transaction can have been accepted (once the
    /// message was sent, a broken connection may have delivered it, and that attempt is
    /// reported as it is, deferred, rather than sent again at once).
    async fn on(&self, endpoint: Endpoint, tx: Transaction) -> Result<TransactionResult, Failure> {
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
        let mut c = Connection::open(endpoint, self.timeouts, self.tls.clone()).await?;
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
