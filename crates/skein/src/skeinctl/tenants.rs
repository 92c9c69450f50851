//! `skeinctl tenant|suppression|dkim`: tenants, their suppression lists and DKIM keys.

use std::path::PathBuf;

use anyhow::Context as _;
use clap::Subcommand;
use skein_proto::admin::*;

use super::status;

use super::Client;

#[derive(Subcommand)]
pub enum DkimCmd {
    /// Set (or replace) a tenant's key for a domain; prints the TXT record to publish.
    Set {
        tenant: String,
        domain: String,
        /// Selector: the record goes at SELECTOR._domainkey.DOMAIN.
        #[arg(long)]
        selector: String,
        /// PEM private key file (RSA 2048+ bits or Ed25519).
        #[arg(
            long,
            conflicts_with = "generate",
            required_unless_present = "generate"
        )]
        key: Option<PathBuf>,
        /// Have the cluster generate a key: "ed25519".
        #[arg(long)]
        generate: Option<String>,
    },
    /// List DKIM keys (all tenants' unless --tenant).
    List {
        #[arg(long, default_value = "")]
        tenant: String,
    },
    /// Remove a tenant's key for a domain (its mail goes unsigned).
    Remove { tenant: String, domain: String },
}

fn print_dkim_key(k: &DkimKey, json: bool) {
    if json {
        println!(
            "{}",
            serde_json::json!({
                "tenant": k.tenant, "domain": k.domain, "selector": k.selector,
                "algorithm": k.algorithm, "dns_name": k.dns_name, "dns_record": k.dns_record,
                "created_at_ms": k.created_at_ms,
            })
        );
    } else {
        println!(
            "{} {}: {} IN TXT {}",
            k.tenant,
            k.algorithm,
            k.dns_name,
            skein_dkim::zone_txt(&k.dns_record)
        );
    }
}

#[derive(Subcommand)]
pub enum SuppressionCmd {
    /// List suppressed addresses.
    List {
        /// Tenant ("" for mail relayed without AUTH).
        #[arg(long, default_value = "")]
        tenant: String,
        #[arg(long, default_value = "")]
        after: String,
        #[arg(long, default_value_t = 100)]
        limit: u32,
    },
    /// Suppress an address.
    Add {
        address: String,
        #[arg(long, default_value = "")]
        tenant: String,
        #[arg(long, default_value = "")]
        reason: String,
    },
    /// Lift a suppression.
    Remove {
        address: String,
        #[arg(long, default_value = "")]
        tenant: String,
    },
    /// Show a tenant's suppression rule; with any setting, give it its own (format 7).
    /// Mailbox bounces (5.1.1 ...) always suppress at once; this decides domain-level ones.
    Policy {
        #[arg(long, default_value = "")]
        tenant: String,
        /// Domain-level bounces (5.1.2, 5.1.10) of an address before it is suppressed; 0:
        /// never. Default 3.
        #[arg(long)]
        domain_failures: Option<u32>,
        /// Least time between the first and the latest of them. Default 2d.
        #[arg(long)]
        span: Option<skein_core::HumanDuration>,
        /// A count older than this starts again. Default 30d.
        #[arg(long)]
        window: Option<skein_core::HumanDuration>,
        /// How long entries bounces add last; 0s: until removed. Default 0s.
        #[arg(long)]
        expire_after: Option<skein_core::HumanDuration>,
        /// Remove the tenant's own rule: the leader's [node.delivery.suppression] applies.
        #[arg(long, conflicts_with_all = ["domain_failures", "span", "window", "expire_after"])]
        clear: bool,
    },
}

#[derive(Subcommand)]
pub enum TenantCmd {
    /// Create a tenant with an SMTP login.
    Create {
        name: String,
        #[arg(long, env = "SKEIN_TENANT_PASSWORD")]
        password: String,
        #[arg(long, default_value = "")]
        username: String,
    },
    /// List tenants.
    List,
    /// Change a tenant's settings.
    Update {
        name: String,
        /// Allow or stop submission.
        #[arg(long)]
        enabled: Option<bool>,
        /// Send DSNs to the return path of bounced mail.
        #[arg(long)]
        dsn: Option<bool>,
    },
}

/// Runs a `tenant` command.
pub async fn tenant(c: &mut Client, cmd: TenantCmd) -> anyhow::Result<()> {
    match cmd {
        TenantCmd::Create {
            name,
            password,
            username,
        } => {
            let t = c
                .create_tenant(CreateTenantRequest {
                    name,
                    username,
                    password,
                })
                .await
                .map_err(status)?
                .into_inner();
            println!("created tenant {} (login {})", t.name, t.username);
        }
        TenantCmd::Update { name, enabled, dsn } => {
            let t = c
                .update_tenant(UpdateTenantRequest { name, enabled, dsn })
                .await
                .map_err(status)?
                .into_inner();
            println!(
                "tenant {}: {}, DSNs {}",
                t.name,
                if t.enabled { "enabled" } else { "disabled" },
                if t.dsn { "on" } else { "off" }
            );
        }
        TenantCmd::List => {
            let r = c
                .list_tenants(ListTenantsRequest {})
                .await
                .map_err(status)?
                .into_inner();
            for t in r.tenants {
                println!(
                    "{} {} {} dsn={}",
                    t.name,
                    t.username,
                    if t.enabled { "enabled" } else { "disabled" },
                    if t.dsn { "on" } else { "off" }
                );
            }
        }
    }
    Ok(())
}

/// Runs a `suppression` command.
pub async fn suppression(c: &mut Client, cmd: SuppressionCmd, json: bool) -> anyhow::Result<()> {
    match cmd {
        SuppressionCmd::List {
            tenant,
            after,
            limit,
        } => {
            let r = c
                .list_suppressions(ListSuppressionsRequest {
                    tenant,
                    after,
                    limit,
                })
                .await
                .map_err(status)?
                .into_inner();
            for s in &r.suppressions {
                if json {
                    println!(
                        "{}",
                        serde_json::json!({"tenant": s.tenant, "address": s.address,
                            "reason": s.reason, "at_ms": s.at_ms,
                            "expires_at_ms": s.expires_at_ms})
                    );
                } else {
                    let until = match s.expires_at_ms {
                        0 => String::new(),
                        at => format!(" until {}", super::shaping::ms_utc(at)),
                    };
                    println!(
                        "{:<40} since {}{until}  {}",
                        s.address,
                        super::shaping::ms_utc(s.at_ms),
                        s.reason
                    );
                }
            }
            if !r.next_after.is_empty() && !json {
                println!("(more: --after {})", r.next_after);
            }
        }
        SuppressionCmd::Add {
            address,
            tenant,
            reason,
        } => {
            let s = c
                .add_suppression(AddSuppressionRequest {
                    tenant,
                    address,
                    reason,
                })
                .await
                .map_err(status)?
                .into_inner();
            println!("suppressed {} for tenant {:?}", s.address, s.tenant);
        }
        SuppressionCmd::Remove { address, tenant } => {
            c.remove_suppression(RemoveSuppressionRequest {
                tenant: tenant.clone(),
                address: address.clone(),
            })
            .await
            .map_err(status)?;
            println!("removed the suppression of {address} for tenant {tenant:?}");
        }
        SuppressionCmd::Policy {
            tenant,
            domain_failures,
            span,
            window,
            expire_after,
            clear,
        } => {
            let set = clear
                || domain_failures.is_some()
                || span.is_some()
                || window.is_some()
                || expire_after.is_some();
            let p = if set {
                let d = skein_config::SuppressionPolicy::default();
                let ms = |v: Option<skein_core::HumanDuration>, d: skein_core::HumanDuration| {
                    v.unwrap_or(d).0.as_millis() as u64
                };
                c.set_suppression_policy(SetSuppressionPolicyRequest {
                    tenant,
                    clear,
                    domain_failures: domain_failures.unwrap_or(d.domain_failures),
                    domain_failure_span_ms: ms(span, d.domain_failure_span),
                    domain_failure_window_ms: ms(window, d.domain_failure_window),
                    expire_after_ms: ms(expire_after, d.expire_after),
                })
                .await
            } else {
                c.get_suppression_policy(GetSuppressionPolicyRequest { tenant })
                    .await
            }
            .map_err(status)?
            .into_inner();
            print_policy(&p, json);
        }
    }
    Ok(())
}

fn print_policy(p: &SuppressionPolicy, json: bool) {
    if json {
        println!(
            "{}",
            serde_json::json!({"tenant": p.tenant, "own": p.own,
                "domain_failures": p.domain_failures,
                "domain_failure_span_ms": p.domain_failure_span_ms,
                "domain_failure_window_ms": p.domain_failure_window_ms,
                "expire_after_ms": p.expire_after_ms})
        );
        return;
    }
    if !p.own {
        println!(
            "tenant {:?}: the cluster's rule ([node.delivery.suppression] on the leader)",
            p.tenant
        );
        return;
    }
    let d = |ms: u64| skein_core::HumanDuration(std::time::Duration::from_millis(ms));
    let domain = match p.domain_failures {
        0 => "never".to_string(),
        n => format!(
            "after {n} bounces, the first at least {} before the last, within {}",
            d(p.domain_failure_span_ms),
            d(p.domain_failure_window_ms)
        ),
    };
    let lasts = match p.expire_after_ms {
        0 => "until removed".to_string(),
        ms => format!("for {}", d(ms)),
    };
    println!(
        "tenant {:?}: mailbox bounces suppress at once; domain-level bounces {domain}; entries \
         last {lasts}",
        p.tenant
    );
}

/// Runs a `dkim` command.
pub async fn dkim(c: &mut Client, cmd: DkimCmd, json: bool) -> anyhow::Result<()> {
    match cmd {
        DkimCmd::Set {
            tenant,
            domain,
            selector,
            key,
            generate,
        } => {
            let private_key = match key {
                Some(p) => std::fs::read_to_string(&p)
                    .with_context(|| format!("reading {}", p.display()))?,
                None => String::new(),
            };
            let k = c
                .set_dkim_key(SetDkimKeyRequest {
                    tenant,
                    domain,
                    selector,
                    private_key,
                    generate: generate.unwrap_or_default(),
                })
                .await
                .map_err(status)?
                .into_inner();
            print_dkim_key(&k, json);
        }
        DkimCmd::List { tenant } => {
            let r = c
                .list_dkim_keys(ListDkimKeysRequest { tenant })
                .await
                .map_err(status)?
                .into_inner();
            for k in &r.keys {
                print_dkim_key(k, json);
            }
        }
        DkimCmd::Remove { tenant, domain } => {
            c.remove_dkim_key(RemoveDkimKeyRequest {
                tenant: tenant.clone(),
                domain: domain.clone(),
            })
            .await
            .map_err(status)?;
            println!("removed the DKIM key of tenant {tenant:?} for {domain}");
        }
    }
    Ok(())
}
