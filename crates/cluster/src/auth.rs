//! Who may call what on a node.
//!
//! With `[cluster_tls]` every connection to a node is TLS, and a client certificate, when one
//! is presented, was verified against the cluster CA by the handshake; its roles
//! ([`skein_pki::roles_of`]) decide what it may call:
//!
//! | service | callers |
//! |---|---|
//! | Raft | nodes |
//! | Ingest `Enqueue` | edges, and nodes forwarding to the leader |
//! | Ingest `Credentials` (password hashes, DKIM keys) | edges |
//! | Work | senders |
//! | Admin | operators and nodes (forwarding); or an Admin token: `read` scope for the calls that change nothing, `admin` for all |
//! | Health, reflection | anyone |
//!
//! A call without a certificate (or token, for Admin) is `UNAUTHENTICATED`; one whose
//! certificate lacks the role is `PERMISSION_DENIED`; both say what the call needs. Without
//! TLS (loopback or `insecure = true`), every caller may call everything.

use std::sync::Arc;
use std::task::{Context, Poll};

use futures_util::future::{ready, Either, Ready};
use skein_pki::{Role, Roles};
use tonic::transport::server::{TcpConnectInfo, TlsConnectInfo};
use tonic::Status;

/// An Admin token's powers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    /// Calls that change nothing (status, lists, messages).
    Read,
    /// Every Admin call.
    Admin,
}

/// Looks up Admin tokens: the name and scope of the token whose secret is given, unless
/// unknown or revoked.
pub trait Tokens: Send + Sync {
    /// The token `secret` names.
    fn lookup(&self, secret: &str) -> Option<(String, Scope)>;
}

/// What a call needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// Anyone (health, reflection, unknown paths, which tonic answers `UNIMPLEMENTED`).
    Open,
    /// A certificate naming one of these roles.
    Roles(&'static [Role]),
    /// An operator or node certificate, or a token of at least this scope.
    Admin(Scope),
}

/// Admin calls that change nothing: a `read` token may make them.
const ADMIN_READS: &[&str] = &[
    "ClusterStatus",
    "ListMessages",
    "GetMessage",
    "ListQueues",
    "QueueSummary",
    "ListTenants",
    "ListSuppressions",
    "GetSuppressionPolicy",
    "ListDkimKeys",
    "ListIps",
    "ListSchedules",
    "ListProviders",
    "ListSuspensions",
    "ListTokens",
    "ListSenders",
];

/// What the call to gRPC path `path` (`/package.Service/Method`) needs.
pub fn access(path: &str) -> Access {
    let mut parts = path.trim_start_matches('/').splitn(2, '/');
    let service = parts.next().unwrap_or_default();
    let method = parts.next().unwrap_or_default();
    match service {
        "skein.raft.v1.Raft" => Access::Roles(&[Role::Node]),
        "skein.ingest.v1.Ingest" if method == "Enqueue" => Access::Roles(&[Role::Edge, Role::Node]),
        "skein.ingest.v1.Ingest" => Access::Roles(&[Role::Edge]),
        "skein.work.v1.Work" => Access::Roles(&[Role::Sender]),
        "skein.admin.v1.Admin" if ADMIN_READS.contains(&method) => Access::Admin(Scope::Read),
        "skein.admin.v1.Admin" => Access::Admin(Scope::Admin),
        _ => Access::Open,
    }
}

fn names(roles: &[Role]) -> String {
    let n: Vec<_> = roles.iter().map(|r| r.as_str()).collect();
    n.join(" or ")
}

/// Decides a call: `roles` is what the caller's certificate names (`None`: the server has no
/// TLS, everyone is trusted), `bearer` the token it sent.
pub fn decide(
    path: &str,
    roles: Option<Roles>,
    bearer: Option<&str>,
    tokens: &dyn Tokens,
) -> Result<(), Status> {
    let Some(roles) = roles else {
        return Ok(());
    };
    let call = path.trim_start_matches('/');
    match access(path) {
        Access::Open => Ok(()),
        Access::Roles(needed) if roles.any_of(needed) => Ok(()),
        Access::Roles(needed) if roles.is_empty() => Err(Status::unauthenticated(format!(
            "{call} needs a client certificate of role {} signed by the cluster CA",
            names(needed)
        ))),
        Access::Roles(needed) => Err(Status::permission_denied(format!(
            "{call} needs role {}; the client certificate names {roles}",
            names(needed)
        ))),
        Access::Admin(_) if roles.any_of(&[Role::Operator, Role::Node]) => Ok(()),
        Access::Admin(needed) => {
            let Some(secret) = bearer else {
                return Err(Status::unauthenticated(format!(
                    "{call} needs an operator certificate or an Admin token \
                     (skeinctl --token, SKEIN_TOKEN or --token-file)"
                )));
            };
            match tokens.lookup(secret) {
                None => Err(Status::unauthenticated(format!(
                    "{call}: the token is unknown or revoked"
                ))),
                Some((name, Scope::Read)) if needed == Scope::Admin => {
                    Err(Status::permission_denied(format!(
                        "{call} changes the cluster; token {name:?} has the read scope"
                    )))
                }
                Some(_) => Ok(()),
            }
        }
    }
}

/// The roles a request's client certificate names (none without one).
fn peer_roles<B>(req: &http::Request<B>) -> Roles {
    req.extensions()
        .get::<TlsConnectInfo<TcpConnectInfo>>()
        .and_then(|i| i.peer_certs())
        .and_then(|certs| certs.first().map(skein_pki::roles_of))
        .unwrap_or_default()
}

/// A tower layer checking every call against [`decide`] before it reaches a service.
#[derive(Clone)]
pub struct AuthLayer {
    tls: bool,
    tokens: Arc<dyn Tokens>,
}

impl AuthLayer {
    /// Checks calls when `tls` (without it every call passes), Admin tokens against `tokens`.
    pub fn new(tls: bool, tokens: Arc<dyn Tokens>) -> Self {
        Self { tls, tokens }
    }
}

impl<S> tower::Layer<S> for AuthLayer {
    type Service = Authorized<S>;

    fn layer(&self, inner: S) -> Authorized<S> {
        Authorized {
            inner,
            layer: self.clone(),
        }
    }
}

/// A service behind [`AuthLayer`].
#[derive(Clone)]
pub struct Authorized<S> {
    inner: S,
    layer: AuthLayer,
}

impl<S, B> tower::Service<http::Request<B>> for Authorized<S>
where
    S: tower::Service<http::Request<B>, Response = http::Response<tonic::body::Body>>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = Either<S::Future, Ready<Result<S::Response, S::Error>>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<B>) -> Self::Future {
        let roles = self.layer.tls.then(|| peer_roles(&req));
        let bearer = req
            .headers()
            .get(http::header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "));
        let path = req.uri().path();
        match decide(path, roles, bearer, &*self.layer.tokens) {
            Ok(()) => Either::Left(self.inner.call(req)),
            Err(status) => {
                tracing::warn!(call = path, reason = status.message(), "call refused");
                Either::Right(ready(Ok(status.into_http())))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tonic::Code;

    struct OneToken;
    impl Tokens for OneToken {
        fn lookup(&self, secret: &str) -> Option<(String, Scope)> {
            match secret {
                "r" => Some(("viewer".into(), Scope::Read)),
                "a" => Some(("root".into(), Scope::Admin)),
                _ => None,
            }
        }
    }

    fn roles(r: &[Role]) -> Option<Roles> {
        Some(r.iter().copied().collect())
    }

    const RAFT: &str = "/skein.raft.v1.Raft/Vote";
    const ENQUEUE: &str = "/skein.ingest.v1.Ingest/Enqueue";
    const CREDENTIALS: &str = "/skein.ingest.v1.Ingest/Credentials";
    const WORK: &str = "/skein.work.v1.Work/Session";
    const ADMIN_READ: &str = "/skein.admin.v1.Admin/ListTenants";
    const ADMIN_WRITE: &str = "/skein.admin.v1.Admin/CreateTenant";
    const HEALTH: &str = "/grpc.health.v1.Health/Check";

    #[test]
    fn each_role_calls_only_its_services() {
        use Role::*;
        // (caller, [raft, enqueue, credentials, work, admin read, admin write, health])
        let table: [(&[Role], [bool; 7]); 6] = [
            (&[Node], [true, true, false, false, true, true, true]),
            (&[Edge], [false, true, true, false, false, false, true]),
            (&[Sender], [false, false, false, true, false, false, true]),
            (&[Operator], [false, false, false, false, true, true, true]),
            (
                &[Edge, Sender],
                [false, true, true, true, false, false, true],
            ),
            (&[], [false, false, false, false, false, false, true]),
        ];
        let paths = [
            RAFT,
            ENQUEUE,
            CREDENTIALS,
            WORK,
            ADMIN_READ,
            ADMIN_WRITE,
            HEALTH,
        ];
        for (caller, allowed) in table {
            for (path, ok) in paths.iter().zip(allowed) {
                let got = decide(path, roles(caller), None, &OneToken);
                assert_eq!(got.is_ok(), ok, "{caller:?} calling {path}: {got:?}");
                if let Err(s) = got {
                    let want = if caller.is_empty() {
                        Code::Unauthenticated
                    } else {
                        Code::PermissionDenied
                    };
                    let want = if path.contains("Admin") && !caller.is_empty() {
                        Code::Unauthenticated // a certificate of another role is no operator
                    } else {
                        want
                    };
                    assert_eq!(s.code(), want, "{caller:?} calling {path}: {s:?}");
                }
            }
        }
    }

    #[test]
    fn tokens_open_admin_by_scope_only() {
        let none = roles(&[]);
        assert!(decide(ADMIN_READ, none, Some("r"), &OneToken).is_ok());
        let s = decide(ADMIN_WRITE, none, Some("r"), &OneToken).unwrap_err();
        assert_eq!(s.code(), Code::PermissionDenied);
        assert!(
            s.message().contains("\"viewer\" has the read scope"),
            "{s:?}"
        );
        assert!(decide(ADMIN_WRITE, none, Some("a"), &OneToken).is_ok());
        let s = decide(ADMIN_READ, none, Some("x"), &OneToken).unwrap_err();
        assert_eq!(s.code(), Code::Unauthenticated);
        assert!(s.message().contains("unknown or revoked"), "{s:?}");
        // A token opens Admin only: an edge's Ingest call still needs its certificate.
        let s = decide(ENQUEUE, none, Some("a"), &OneToken).unwrap_err();
        assert_eq!(s.code(), Code::Unauthenticated);
        assert!(s.message().contains("role edge or node"), "{s:?}");
    }

    #[test]
    fn without_tls_everyone_is_trusted() {
        for p in [RAFT, CREDENTIALS, WORK, ADMIN_WRITE] {
            assert!(decide(p, None, None, &OneToken).is_ok(), "{p}");
        }
    }

    #[test]
    fn every_read_scope_call_exists_and_changes_nothing() {
        let proto = include_str!("../../../proto/skein/admin/v1/admin.proto");
        for m in ADMIN_READS {
            assert!(
                proto.contains(&format!("rpc {m}(")),
                "{m} is not an Admin call"
            );
            assert!(
                !["Create", "Add", "Remove", "Set", "Put", "Update"]
                    .iter()
                    .any(|w| m.starts_with(w)),
                "{m}"
            );
        }
    }
}
