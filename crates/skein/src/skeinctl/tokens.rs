//! `skeinctl token`: Admin tokens for people and tools without an operator certificate.

use clap::Subcommand;
use skein_proto::admin::*;

use super::{status, Client};

#[derive(Subcommand)]
pub enum TokenCmd {
    /// Create a token; prints its secret, which is not shown again (the cluster keeps only a
    /// hash). Use it with SKEIN_TOKEN, --token-file or --token.
    Create {
        name: String,
        /// "read" (status, lists, messages) or "admin" (every call).
        #[arg(long, default_value = "read")]
        scope: String,
    },
    /// List tokens (names, scopes, creation times; never secrets).
    List,
    /// Revoke a token: calls with it are refused from now on.
    Revoke { name: String },
}

pub async fn token(c: &mut Client, cmd: TokenCmd, json: bool) -> anyhow::Result<()> {
    match cmd {
        TokenCmd::Create { name, scope } => {
            let r = c
                .create_token(CreateTokenRequest { name, scope })
                .await
                .map_err(status)?
                .into_inner();
            let t = r.token.unwrap_or_default();
            if json {
                println!(
                    "{}",
                    serde_json::json!({"name": t.name, "scope": t.scope, "secret": r.secret})
                );
            } else {
                eprintln!(
                    "token {:?} ({} scope) created; its secret, shown only now:",
                    t.name, t.scope
                );
                println!("{}", r.secret);
            }
        }
        TokenCmd::List => {
            let r = c
                .list_tokens(ListTokensRequest {})
                .await
                .map_err(status)?
                .into_inner();
            for t in r.tokens {
                if json {
                    println!(
                        "{}",
                        serde_json::json!({"name": t.name, "scope": t.scope,
                                           "created_at_ms": t.created_at_ms})
                    );
                } else {
                    println!(
                        "{:<24} {:<6} created {}",
                        t.name,
                        t.scope,
                        super::shaping::ms_utc(t.created_at_ms)
                    );
                }
            }
        }
        TokenCmd::Revoke { name } => {
            c.revoke_token(RevokeTokenRequest { name: name.clone() })
                .await
                .map_err(status)?;
            println!("token {name:?} revoked");
        }
    }
    Ok(())
}
