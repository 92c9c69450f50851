//! Tenants created from a node's own configuration or through the Admin API, and the calls a
//! node makes to the leader on its own behalf.

use argon2::password_hash::rand_core::OsRng;
use argon2::password_hash::{PasswordHasher, SaltString};
use skein_proto::admin::admin_client::AdminClient;
use skein_proto::admin::{CreateTenantRequest, FinalizeUpgradeRequest};
use skein_queue::{Request, Response, TenantRecord};

use super::{fwd, FORWARD_MARGIN};
use crate::error::ClusterError;
use crate::route::Cluster;

/// Hashes a password with argon2id and a random salt (PHC string).
fn hash_password(password: &str) -> Result<String, ClusterError> {
    let salt = SaltString::generate(&mut OsRng);
    argon2::Argon2::default()
        .hash_password(password.as_bytes(), &salt)
        .map(|h| h.to_string())
        .map_err(|e| ClusterError::Invalid {
            field: "password",
            reason: e.to_string(),
        })
}

/// Creates a tenant through Raft (leader only).
pub(crate) async fn create_tenant(
    cluster: &Cluster,
    name: &str,
    username: &str,
    password: &str,
) -> Result<TenantRecord, ClusterError> {
    let password = password.to_string();
    let hash = tokio::task::spawn_blocking(move || hash_password(&password))
        .await
        .map_err(|e| ClusterError::Raft(e.to_string()))??;
    let rec = TenantRecord {
        name: name.to_string(),
        username: username.to_string(),
        password_hash: hash,
        enabled: true,
        dsn: true,
        created_at_ms: cluster.clock.now_ms(),
    };
    let r = cluster.propose(Request::CreateTenant(rec.clone())).await?;
    match r.data {
        Response::TenantCreated => Ok(rec),
        Response::TenantExists => Err(ClusterError::AlreadyExists {
            what: format!("tenant {name:?} or username {username:?}"),
        }),
        other => Err(ClusterError::Raft(format!("unexpected response {other:?}"))),
    }
}

/// Creates a tenant by forwarding to the leader at `addr`.
pub(crate) async fn forward_create_tenant(
    ctx: &Cluster,
    addr: &str,
    name: &str,
    username: &str,
    password: &str,
) -> Result<(), ClusterError> {
    let mut c = AdminClient::new(ctx.channel(addr)?);
    let req = CreateTenantRequest {
        name: name.into(),
        username: username.into(),
        password: password.into(),
    };
    let limit = ctx.commit_timeout + FORWARD_MARGIN;
    match skein_proto::call_within(limit, c.create_tenant(fwd(req, limit))).await {
        Ok(_) => Ok(()),
        Err(s) if s.code() == tonic::Code::AlreadyExists => Err(ClusterError::AlreadyExists {
            what: name.to_string(),
        }),
        Err(s) => Err(ClusterError::Forward {
            addr: addr.into(),
            message: s.message().into(),
        }),
    }
}

/// Finalizes the format through the leader at `addr`.
pub(crate) async fn forward_finalize(ctx: &Cluster, addr: &str) -> Result<u32, ClusterError> {
    let mut c = AdminClient::new(ctx.channel(addr)?);
    let limit = ctx.commit_timeout + FORWARD_MARGIN;
    skein_proto::call_within(
        limit,
        c.finalize_upgrade(fwd(FinalizeUpgradeRequest {}, limit)),
    )
    .await
    .map(|r| r.into_inner().format)
    .map_err(|s| ClusterError::Forward {
        addr: addr.into(),
        message: s.message().into(),
    })
}
