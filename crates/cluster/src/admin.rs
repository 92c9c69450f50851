//! `skein.admin.v1.Admin`.

use std::collections::BTreeSet;
use std::sync::Arc;

use openraft::{BasicNode, ChangeMembers};
use skein_config::node::{check_tenant_name, is_host_port};
use skein_proto::admin::admin_client::AdminClient;
use skein_proto::admin::admin_server::Admin;
use skein_proto::admin::*;
use skein_queue::{MessageRecord, TenantRecord};
use tonic::{Request, Response, Status};

use crate::error::ClusterError;
use crate::ingest::forward_status;
use crate::node::{NodeCtx, Route, FORWARDED};

/// The Admin service of one node.
#[derive(Clone)]
pub struct AdminService {
    ctx: Arc<NodeCtx>,
}

impl AdminService {
    /// Serves `ctx`'s node.
    pub fn new(ctx: Arc<NodeCtx>) -> Self {
        Self { ctx }
    }

    fn members(&self) -> Vec<Member> {
        let m = self.ctx.raft.metrics();
        let m = m.borrow();
        let membership = m.membership_config.membership();
        let voters: BTreeSet<u64> = membership.voter_ids().collect();
        membership
            .nodes()
            .map(|(id, n)| Member {
                id: *id,
                addr: n.addr.clone(),
                voter: voters.contains(id),
            })
            .collect()
    }

    fn client(&self, addr: &str) -> Result<AdminClient<tonic::transport::Channel>, Status> {
        Ok(AdminClient::new(self.ctx.channel(addr)?)
            .max_decoding_message_size(crate::ingest::MAX_MESSAGE_BYTES + 1024 * 1024))
    }

    /// Leader, or the address to forward to.
    fn route<T>(&self, req: &Request<T>) -> Result<Route, Status> {
        Ok(self.ctx.route(req.metadata().contains_key(FORWARDED))?)
    }

    /// Before a linearizable read on the leader: make sure it still is the leader and has
    /// applied everything committed.
    async fn linearize(&self) -> Result<(), Status> {
        self.ctx
            .raft
            .ensure_linearizable()
            .await
            .map_err(|e| Status::from(ClusterError::Raft(e.to_string())))?;
        Ok(())
    }

    async fn change(
        &self,
        change: ChangeMembers<u64, BasicNode>,
    ) -> Result<MembershipResponse, Status> {
        let r = self
            .ctx
            .raft
            .change_membership(change, false)
            .await
            .map_err(ClusterError::from)?;
        Ok(MembershipResponse {
            members: self.members(),
            log_index: r.log_id.index,
        })
    }
}

fn fwd<T>(inner: T) -> Request<T> {
    let mut r = Request::new(inner);
    r.metadata_mut()
        .insert(FORWARDED, "1".parse().expect("ascii"));
    r
}

fn to_proto(m: MessageRecord, data: Option<Vec<u8>>) -> Message {
    Message {
        id: m.id,
        tenant: m.tenant,
        mail_from: m.mail_from,
        rcpt_to: m.rcpt_to,
        size: m.size,
        received_at_ms: m.received_at_ms,
        client_ip: m.client_ip,
        helo: m.helo,
        edge: m.edge,
        log_index: m.log_index,
        data: data.unwrap_or_default(),
    }
}

fn tenant_proto(t: TenantRecord) -> Tenant {
    Tenant {
        name: t.name,
        username: t.username,
        enabled: t.enabled,
        created_at_ms: t.created_at_ms,
    }
}

/// Creates a tenant by forwarding to the leader at `addr`.
pub(crate) async fn forward_create_tenant(
    ctx: &NodeCtx,
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
    match c.create_tenant(fwd(req)).await {
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

macro_rules! forward_or {
    ($self:ident, $req:ident, $method:ident, $local:block) => {
        match $self.route(&$req)? {
            Route::Forward(addr) => $self
                .client(&addr)?
                .$method(fwd($req.into_inner()))
                .await
                .map_err(|s| forward_status(&addr, s)),
            Route::Local => $local,
        }
    };
}

#[tonic::async_trait]
impl Admin for AdminService {
    async fn cluster_status(
        &self,
        _req: Request<ClusterStatusRequest>,
    ) -> Result<Response<ClusterStatusResponse>, Status> {
        let (leader_id, term, state, last_log, applied, snapshot_index, purged_index) = {
            let m = self.ctx.raft.metrics();
            let m = m.borrow();
            (
                m.current_leader,
                m.current_term,
                format!("{:?}", m.state),
                m.last_log_index.unwrap_or(0),
                m.last_applied.map_or(0, |l| l.index),
                m.snapshot.map_or(0, |l| l.index),
                m.purged.map_or(0, |l| l.index),
            )
        };
        let members = self.members();
        let leader_addr = leader_id
            .and_then(|l| members.iter().find(|m| m.id == l))
            .map(|m| m.addr.clone())
            .unwrap_or_default();
        Ok(Response::new(ClusterStatusResponse {
            node_id: self.ctx.id,
            leader_id: leader_id.unwrap_or(0),
            leader_addr,
            term,
            state,
            last_log_index: last_log,
            last_applied_index: applied,
            members,
            message_count: self
                .ctx
                .reader
                .message_count()
                .map_err(ClusterError::from)?,
            snapshot_index,
            purged_index,
        }))
    }

    async fn add_learner(
        &self,
        req: Request<AddLearnerRequest>,
    ) -> Result<Response<MembershipResponse>, Status> {
        let r = req.get_ref();
        if r.id == 0 {
            return Err(ClusterError::Invalid {
                field: "id",
                reason: "must be > 0".into(),
            }
            .into());
        }
        if !is_host_port(&r.addr) {
            return Err(ClusterError::Invalid {
                field: "addr",
                reason: format!("{:?} is not host:port", r.addr),
            }
            .into());
        }
        forward_or!(self, req, add_learner, {
            let r = req.into_inner();
            // Blocking: returns once the learner has caught up with the log.
            let w = self
                .ctx
                .raft
                .add_learner(r.id, BasicNode { addr: r.addr }, true)
                .await
                .map_err(ClusterError::from)?;
            Ok(Response::new(MembershipResponse {
                members: self.members(),
                log_index: w.log_id.index,
            }))
        })
    }

    async fn promote_voter(
        &self,
        req: Request<NodeRef>,
    ) -> Result<Response<MembershipResponse>, Status> {
        let id = req.get_ref().id;
        if !self.members().iter().any(|m| m.id == id) {
            return Err(ClusterError::NotFound {
                what: format!("node {id} (add it as a learner first)"),
            }
            .into());
        }
        forward_or!(self, req, promote_voter, {
            Ok(Response::new(
                self.change(ChangeMembers::AddVoterIds(BTreeSet::from([id])))
                    .await?,
            ))
        })
    }

    async fn remove_node(
        &self,
        req: Request<NodeRef>,
    ) -> Result<Response<MembershipResponse>, Status> {
        let id = req.get_ref().id;
        let Some(member) = self.members().into_iter().find(|m| m.id == id) else {
            return Err(ClusterError::NotFound {
                what: format!("node {id}"),
            }
            .into());
        };
        forward_or!(self, req, remove_node, {
            if member.voter {
                self.change(ChangeMembers::RemoveVoters(BTreeSet::from([id])))
                    .await?;
            }
            Ok(Response::new(
                self.change(ChangeMembers::RemoveNodes(BTreeSet::from([id])))
                    .await?,
            ))
        })
    }

    async fn list_messages(
        &self,
        req: Request<ListMessagesRequest>,
    ) -> Result<Response<ListMessagesResponse>, Status> {
        let limit = match req.get_ref().limit {
            0 => 100,
            n @ 1..=1000 => n as usize,
            n => {
                return Err(ClusterError::Invalid {
                    field: "limit",
                    reason: format!("{n} is over 1000"),
                }
                .into())
            }
        };
        let local = req.get_ref().local;
        let read = |after: &str| -> Result<Response<ListMessagesResponse>, Status> {
            let msgs = self
                .ctx
                .reader
                .list_messages(after, limit)
                .map_err(ClusterError::from)?;
            let next_after = if msgs.len() == limit {
                msgs.last().map(|m| m.id.clone()).unwrap_or_default()
            } else {
                String::new()
            };
            Ok(Response::new(ListMessagesResponse {
                messages: msgs.into_iter().map(|m| to_proto(m, None)).collect(),
                next_after,
            }))
        };
        if local {
            return read(&req.get_ref().after);
        }
        forward_or!(self, req, list_messages, {
            self.linearize().await?;
            read(&req.get_ref().after)
        })
    }

    async fn get_message(
        &self,
        req: Request<GetMessageRequest>,
    ) -> Result<Response<Message>, Status> {
        let read = |r: &GetMessageRequest| -> Result<Response<Message>, Status> {
            match self
                .ctx
                .reader
                .get_message(&r.id, r.include_data)
                .map_err(ClusterError::from)?
            {
                Some((m, d)) => Ok(Response::new(to_proto(m, d))),
                None => Err(ClusterError::NotFound {
                    what: format!("message {:?}", r.id),
                }
                .into()),
            }
        };
        if req.get_ref().local {
            return read(req.get_ref());
        }
        forward_or!(self, req, get_message, {
            self.linearize().await?;
            read(req.get_ref())
        })
    }

    async fn create_tenant(
        &self,
        req: Request<CreateTenantRequest>,
    ) -> Result<Response<Tenant>, Status> {
        let r = req.get_ref();
        check_tenant_name(&r.name).map_err(|reason| ClusterError::Invalid {
            field: "name",
            reason,
        })?;
        let username = if r.username.is_empty() {
            r.name.clone()
        } else {
            r.username.clone()
        };
        if username.len() > 256 || username.chars().any(|c| c.is_control()) {
            return Err(ClusterError::Invalid {
                field: "username",
                reason: "1-256 printable characters".into(),
            }
            .into());
        }
        if !(8..=1024).contains(&r.password.len()) {
            return Err(ClusterError::Invalid {
                field: "password",
                reason: "must be 8 to 1024 bytes".into(),
            }
            .into());
        }
        forward_or!(self, req, create_tenant, {
            let r = req.into_inner();
            let t = self
                .ctx
                .create_tenant_local(&r.name, &username, &r.password)
                .await?;
            Ok(Response::new(tenant_proto(t)))
        })
    }

    async fn list_tenants(
        &self,
        req: Request<ListTenantsRequest>,
    ) -> Result<Response<ListTenantsResponse>, Status> {
        forward_or!(self, req, list_tenants, {
            self.linearize().await?;
            let tenants = self
                .ctx
                .reader
                .tenants()
                .map_err(ClusterError::from)?
                .into_iter()
                .map(tenant_proto)
                .collect();
            Ok(Response::new(ListTenantsResponse { tenants }))
        })
    }
}
