//! `skein.admin.v1.Admin`: cluster status and membership, messages, tenants, suppressions and
//! DKIM keys. Records become API messages in [`convert`]; requests are checked in [`check`].

mod check;
mod convert;
mod membership;
mod messages;
mod queue_actions;
mod shaping;
mod tenants;
pub mod tokens;

use check::*;
use convert::*;
pub(crate) use tenants::{create_tenant, forward_create_tenant, forward_finalize};

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use skein_core::Clock as _;

use openraft::{BasicNode, ChangeMembers};
use skein_config::node::{check_tenant_name, is_host_port};
use skein_proto::admin::admin_client::AdminClient;
use skein_proto::admin::admin_server::Admin;
use skein_proto::admin::*;
use skein_queue::{
    Request as Command, Response as Applied, ShapingCommand, ShapingOutcome, SuppressionEntry,
    SuppressionRecord, TokenCommand, TokenOutcome,
};
use tonic::{Request, Response, Status};

use crate::error::ClusterError;
use crate::ingest::forward_status;
use crate::propose::deadline;
use crate::route::{Cluster, Route, FORWARDED};

/// How long `AddLearner` waits for the new learner to catch up before answering.
const LEARNER_CATCH_UP: Duration = Duration::from_secs(60);
/// How much longer than the leader's own limit a forwarded call may take, for the hop.
const FORWARD_MARGIN: Duration = Duration::from_secs(1);

/// The Admin service of one node.
#[derive(Clone)]
pub struct AdminService {
    ctx: Arc<Cluster>,
    /// The node's clock when it runs on a manual one (`clock = "manual"`).
    manual: Option<Arc<skein_core::ManualClock>>,
    /// This MTA's name, for the DSNs of operators' bounces.
    mta: String,
    /// Queues the scheduler holds back (while this node leads).
    held: Arc<crate::scheduler::HeldQueues>,
    /// Most log entries a learner may be behind to be promoted.
    promote_max_lag: u64,
    /// What the Kubernetes membership reconciler reports, when the node runs one.
    reconciler: Arc<std::sync::Mutex<Option<MembershipReconciler>>>,
}

impl AdminService {
    /// Serves `ctx`'s node; `manual` is its clock when it runs on a manual one, `mta` the
    /// name DSNs give, `held` the queues its scheduler holds back, `promote_max_lag` the most
    /// log entries a learner may be behind to be promoted.
    pub fn new(
        ctx: Arc<Cluster>,
        manual: Option<Arc<skein_core::ManualClock>>,
        mta: String,
        held: Arc<crate::scheduler::HeldQueues>,
        promote_max_lag: u64,
    ) -> Self {
        Self {
            ctx,
            manual,
            mta,
            held,
            promote_max_lag,
            reconciler: Arc::default(),
        }
    }

    /// Where a membership reconciler running beside this node reports (`ClusterStatus`
    /// returns it): `Some` once one runs.
    pub fn reconciler_report(&self) -> Arc<std::sync::Mutex<Option<MembershipReconciler>>> {
        self.reconciler.clone()
    }

    /// The members, with each one's replication as the leader sees it (when this node leads).
    fn members(&self) -> Vec<Member> {
        let m = self.ctx.raft.metrics();
        let m = m.borrow();
        let membership = m.membership_config.membership();
        let voters: BTreeSet<u64> = membership.voter_ids().collect();
        let last = m.last_log_index.unwrap_or(0);
        let matched = |id: u64| -> Option<u64> {
            if id == self.ctx.id {
                return m.last_log_index;
            }
            m.replication.as_ref()?.get(&id)?.map(|l| l.index)
        };
        membership
            .nodes()
            .map(|(id, n)| {
                let matched = matched(*id);
                Member {
                    id: *id,
                    addr: n.addr.clone(),
                    voter: voters.contains(id),
                    replicating: matched.is_some(),
                    lag: matched.map_or(0, |i| last.saturating_sub(i)),
                }
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
        // A leader cut off from its quorum would wait for heartbeat answers for ever.
        deadline(self.ctx.commit_timeout, async {
            self.ctx
                .raft
                .ensure_linearizable()
                .await
                .map_err(|e| ClusterError::Raft(e.to_string()))
        })
        .await?;
        Ok(())
    }

    /// Proposes a command on this node (the leader) and returns what it applied.
    async fn write(&self, cmd: Command) -> Result<Applied, Status> {
        Ok(self.ctx.propose(cmd).await?.data)
    }

    async fn change(
        &self,
        change: ChangeMembers<u64, BasicNode>,
    ) -> Result<MembershipResponse, Status> {
        let r = deadline(self.ctx.commit_timeout, async {
            Ok(self.ctx.raft.change_membership(change, false).await?)
        })
        .await?;
        Ok(MembershipResponse {
            members: self.members(),
            log_index: r.log_id.index,
        })
    }
}

/// `inner` as a forwarded request the leader must answer within `limit`.
fn fwd<T>(inner: T, limit: Duration) -> Request<T> {
    let mut r = Request::new(inner);
    r.metadata_mut()
        .insert(FORWARDED, "1".parse().expect("ascii"));
    r.set_timeout(limit);
    r
}

/// Runs `$local` on the leader, or forwards the call to it; a forwarded call gives up after
/// the leader's commit timeout (or `within` a given limit) plus [`FORWARD_MARGIN`].
macro_rules! forward_or {
    ($self:ident, $req:ident, $method:ident, $local:block) => {
        forward_or!($self, $req, $method, within $self.ctx.commit_timeout, $local)
    };
    ($self:ident, $req:ident, $method:ident, within $limit:expr, $local:block) => {
        match $self.route(&$req)? {
            Route::Forward(addr) => {
                let limit = $limit + FORWARD_MARGIN;
                skein_proto::call_within(
                    limit,
                    $self.client(&addr)?.$method(fwd($req.into_inner(), limit)),
                )
                .await
                .map_err(|s| forward_status(&addr, s))
            }
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
            format: self.ctx.reader.format().map_err(ClusterError::from)?,
            release_format: skein_queue::FORMAT,
            reconciler: self
                .reconciler
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .clone(),
            cluster_id: match self.ctx.channels().identity() {
                Some(identity) => identity.get().unwrap_or_default(),
                None => self
                    .ctx
                    .reader
                    .cluster_id()
                    .map_err(ClusterError::from)?
                    .unwrap_or_default(),
            },
        }))
    }

    async fn finalize_upgrade(
        &self,
        req: Request<FinalizeUpgradeRequest>,
    ) -> Result<Response<FinalizeUpgradeResponse>, Status> {
        forward_or!(self, req, finalize_upgrade, {
            let format = self.ctx.finalize_format().await?;
            Ok(Response::new(FinalizeUpgradeResponse { format }))
        })
    }

    async fn add_learner(
        &self,
        req: Request<AddLearnerRequest>,
    ) -> Result<Response<MembershipResponse>, Status> {
        let r = req.get_ref();
        if r.id == 0 {
            return Err(invalid("id", "must be > 0"));
        }
        if !is_host_port(&r.addr) {
            return Err(invalid("addr", format!("{:?} is not host:port", r.addr)));
        }
        forward_or!(self, req, add_learner, within LEARNER_CATCH_UP, {
            let r = req.into_inner();
            if !self.members().iter().any(|m| m.id == r.id) {
                membership::check_new_learner(&self.ctx, r.id, &r.addr).await?;
            }
            // Blocking: returns once the learner has caught up with the log, or says it
            // has not after a while (the learner stays added, and keeps catching up).
            let (id, addr) = (r.id, r.addr.clone());
            let w = deadline(LEARNER_CATCH_UP, async {
                Ok(self
                    .ctx
                    .raft
                    .add_learner(r.id, BasicNode { addr: r.addr }, true)
                    .await?)
            })
            .await
            .map_err(|e| match e {
                ClusterError::CommitTimeout { .. } => Status::deadline_exceeded(format!(
                    "node {id} is a learner now but has not caught up within {} s: \
                     is it running at {addr}?",
                    LEARNER_CATCH_UP.as_secs()
                )),
                e => e.into(),
            })?;
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
            membership::check_promotion(&self.ctx, &self.members(), id, self.promote_max_lag)
                .await?;
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
        let limit = page_limit(req.get_ref().limit)?;
        let local = req.get_ref().local;
        let filter = messages::MessageFilter::from_request(req.get_ref())?;
        let read = |after: &str| -> Result<Response<ListMessagesResponse>, Status> {
            let (messages, next_after) = messages::list(&self.ctx.reader, after, limit, &filter)?;
            Ok(Response::new(ListMessagesResponse {
                messages,
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

    async fn list_queues(
        &self,
        req: Request<ListQueuesRequest>,
    ) -> Result<Response<ListQueuesResponse>, Status> {
        let limit = page_limit(req.get_ref().limit)?;
        forward_or!(self, req, list_queues, {
            self.linearize().await?;
            let r = req.get_ref();
            let after = match (
                &r.tenant,
                r.after_tenant.is_empty() && r.after_domain.is_empty(),
            ) {
                (_, false) => Some((r.after_tenant.as_str(), r.after_domain.as_str())),
                // A tenant's queues start right after its name with an empty domain.
                (Some(t), true) => Some((t.as_str(), "")),
                (None, true) => None,
            };
            let mut queues = self
                .ctx
                .reader
                .queues(after, limit + 1)
                .map_err(ClusterError::from)?;
            if let Some(t) = &r.tenant {
                queues.retain(|q| &q.tenant == t);
            }
            let more = queues.len() > limit;
            queues.truncate(limit);
            let held = self.held_now()?;
            let last = queues.last().filter(|_| more);
            Ok(Response::new(ListQueuesResponse {
                more,
                next_after_tenant: last.map(|q| q.tenant.clone()).unwrap_or_default(),
                next_after_domain: last.map(|q| q.domain.clone()).unwrap_or_default(),
                queues: queues
                    .into_iter()
                    .map(|q| {
                        let (held_until_ms, held_by) = held(&q.tenant, &q.domain);
                        QueueInfo {
                            tenant: q.tenant,
                            domain: q.domain,
                            recipients: q.recipients,
                            first_due_ms: q.first_due_ms.unwrap_or(0),
                            held_until_ms,
                            held_by: held_by.into(),
                        }
                    })
                    .collect(),
            }))
        })
    }

    async fn queue_summary(
        &self,
        req: Request<QueueSummaryRequest>,
    ) -> Result<Response<QueueSummaryResponse>, Status> {
        let by = req.get_ref().by.clone();
        if !["tenant", "domain", "provider", "pool"].contains(&by.as_str()) {
            return Err(ClusterError::Invalid {
                field: "by",
                reason: format!("{by:?}: one of tenant, domain, provider, pool"),
            }
            .into());
        }
        forward_or!(self, req, queue_summary, {
            self.linearize().await?;
            let reader = &self.ctx.reader;
            let st = reader
                .shaping(self.ctx.clock.now_ms())
                .map_err(ClusterError::from)?;
            let held = self.held_now()?;
            let mut rows: std::collections::BTreeMap<String, SummaryRow> = Default::default();
            queue_actions::each_queue(reader, |q| {
                let key = match by.as_str() {
                    "tenant" => q.tenant.clone(),
                    "domain" => q.domain.clone(),
                    "provider" => st.provider(&q.domain).name.clone(),
                    _ => skein_shaping::pool_for(&q.tenant, &st.tenant_pools).to_string(),
                };
                let row = rows.entry(key.clone()).or_insert(SummaryRow {
                    key,
                    first_due_ms: i64::MAX,
                    ..SummaryRow::default()
                });
                row.queues += 1;
                row.recipients += q.recipients;
                if held(&q.tenant, &q.domain).0 != 0 {
                    row.held += q.recipients;
                }
                if let Some(due) = q.first_due_ms {
                    row.first_due_ms = row.first_due_ms.min(due);
                }
                Ok(true)
            })?;
            let rows = rows
                .into_values()
                .map(|mut r| {
                    if r.first_due_ms == i64::MAX {
                        r.first_due_ms = 0;
                    }
                    r
                })
                .collect();
            Ok(Response::new(QueueSummaryResponse { rows }))
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
                Some((m, d)) => {
                    let rcpts = self.ctx.reader.rcpts(&m.id).map_err(ClusterError::from)?;
                    let mut msg = to_proto(m, d);
                    for r in rcpts {
                        let note = suppression_note(&self.ctx.reader, &r)?;
                        msg.recipients.push(RecipientStatus {
                            note,
                            ..rcpt_proto(r)
                        });
                    }
                    Ok(Response::new(msg))
                }
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
        check_tenant_name(&r.name).map_err(|e| invalid("name", e))?;
        let username = if r.username.is_empty() {
            r.name.clone()
        } else {
            r.username.clone()
        };
        if username.len() > 256 || username.chars().any(|c| c.is_control()) {
            return Err(invalid("username", "1-256 printable characters"));
        }
        if !(8..=1024).contains(&r.password.len()) {
            return Err(invalid("password", "must be 8 to 1024 bytes"));
        }
        forward_or!(self, req, create_tenant, {
            let r = req.into_inner();
            let t = create_tenant(&self.ctx, &r.name, &username, &r.password).await?;
            Ok(Response::new(tenant_proto(t)))
        })
    }

    async fn update_tenant(
        &self,
        req: Request<UpdateTenantRequest>,
    ) -> Result<Response<Tenant>, Status> {
        check_tenant_name(&req.get_ref().name).map_err(|e| invalid("name", e))?;
        forward_or!(self, req, update_tenant, {
            let r = req.into_inner();
            let resp = self
                .write(Command::UpdateTenant {
                    name: r.name.clone(),
                    enabled: r.enabled,
                    dsn: r.dsn,
                })
                .await?;
            if matches!(resp, Applied::TenantNotFound) {
                return Err(ClusterError::NotFound {
                    what: format!("tenant {:?}", r.name),
                }
                .into());
            }
            let t = self
                .ctx
                .reader
                .tenants()
                .map_err(ClusterError::from)?
                .into_iter()
                .find(|t| t.name == r.name)
                .ok_or_else(|| ClusterError::NotFound {
                    what: format!("tenant {:?}", r.name),
                })?;
            Ok(Response::new(tenant_proto(t)))
        })
    }

    async fn list_suppressions(
        &self,
        req: Request<ListSuppressionsRequest>,
    ) -> Result<Response<ListSuppressionsResponse>, Status> {
        check_suppression_tenant(&req.get_ref().tenant)?;
        let limit = page_limit(req.get_ref().limit)?;
        forward_or!(self, req, list_suppressions, {
            self.linearize().await?;
            let r = req.get_ref();
            let list = self
                .ctx
                .reader
                .suppressions(&r.tenant, &r.after.to_ascii_lowercase(), limit)
                .map_err(ClusterError::from)?;
            let next_after = if list.len() == limit {
                list.last()
                    .map(|s| s.record.address.clone())
                    .unwrap_or_default()
            } else {
                String::new()
            };
            Ok(Response::new(ListSuppressionsResponse {
                suppressions: list.into_iter().map(suppression_proto).collect(),
                next_after,
            }))
        })
    }

    async fn add_suppression(
        &self,
        req: Request<AddSuppressionRequest>,
    ) -> Result<Response<Suppression>, Status> {
        let r = req.get_ref();
        check_suppression_tenant(&r.tenant)?;
        check_address(&r.address)?;
        if r.reason.len() > 1000 {
            return Err(invalid("reason", "at most 1000 bytes"));
        }
        forward_or!(self, req, add_suppression, {
            let r = req.into_inner();
            let rec = SuppressionRecord {
                tenant: r.tenant,
                address: r.address.to_ascii_lowercase(),
                reason: if r.reason.is_empty() {
                    "added by an operator".into()
                } else {
                    r.reason
                },
                at_ms: self.ctx.clock.now_ms(),
            };
            self.write(Command::Suppress(rec.clone())).await?;
            Ok(Response::new(suppression_proto(SuppressionEntry {
                record: rec,
                expires_at_ms: None,
            })))
        })
    }

    async fn remove_suppression(
        &self,
        req: Request<RemoveSuppressionRequest>,
    ) -> Result<Response<RemoveSuppressionResponse>, Status> {
        check_suppression_tenant(&req.get_ref().tenant)?;
        check_address(&req.get_ref().address)?;
        forward_or!(self, req, remove_suppression, {
            let r = req.into_inner();
            let resp = self
                .write(Command::Unsuppress {
                    tenant: r.tenant.clone(),
                    address: r.address.clone(),
                })
                .await?;
            match resp {
                Applied::Suppression(true) => Ok(Response::new(RemoveSuppressionResponse {})),
                _ => Err(ClusterError::NotFound {
                    what: format!("suppression of {:?} for tenant {:?}", r.address, r.tenant),
                }
                .into()),
            }
        })
    }

    async fn get_suppression_policy(
        &self,
        req: Request<GetSuppressionPolicyRequest>,
    ) -> Result<Response<SuppressionPolicy>, Status> {
        check_suppression_tenant(&req.get_ref().tenant)?;
        forward_or!(self, req, get_suppression_policy, {
            self.linearize().await?;
            let tenant = req.get_ref().tenant.clone();
            let own = self
                .ctx
                .reader
                .suppression_policy(&tenant)
                .map_err(ClusterError::from)?;
            Ok(Response::new(policy_proto(tenant, own)))
        })
    }

    async fn set_suppression_policy(
        &self,
        req: Request<SetSuppressionPolicyRequest>,
    ) -> Result<Response<SuppressionPolicy>, Status> {
        let r = req.get_ref();
        check_suppression_tenant(&r.tenant)?;
        let policy = (!r.clear).then(|| check_policy(r)).transpose()?;
        forward_or!(self, req, set_suppression_policy, {
            let format = self.ctx.reader.format().map_err(ClusterError::from)?;
            ClusterError::require_format(
                format,
                skein_queue::SUPPRESSION_FORMAT,
                "suppression rules per tenant",
            )?;
            let tenant = req.get_ref().tenant.clone();
            let resp = self
                .write(Command::SuppressionPolicy {
                    tenant: tenant.clone(),
                    policy: policy.clone(),
                })
                .await?;
            match resp {
                Applied::TenantUpdated => Ok(Response::new(policy_proto(tenant, policy))),
                _ => Err(ClusterError::NotFound {
                    what: format!("tenant {tenant:?}"),
                }
                .into()),
            }
        })
    }

    async fn set_dkim_key(
        &self,
        req: Request<SetDkimKeyRequest>,
    ) -> Result<Response<DkimKey>, Status> {
        // Checked (and generated) here, so the followers' logs carry a key known to work.
        let rec = dkim_record(req.get_ref(), self.ctx.clock.now_ms())?;
        forward_or!(self, req, set_dkim_key, {
            match self.write(Command::SetDkimKey(rec.clone())).await? {
                Applied::DkimKey(true) => Ok(Response::new(dkim_key_proto(rec))),
                _ => Err(ClusterError::NotFound {
                    what: format!("tenant {:?}", rec.tenant),
                }
                .into()),
            }
        })
    }

    async fn list_dkim_keys(
        &self,
        req: Request<ListDkimKeysRequest>,
    ) -> Result<Response<ListDkimKeysResponse>, Status> {
        let tenant = req.get_ref().tenant.clone();
        if !tenant.is_empty() {
            check_tenant_name(&tenant).map_err(|e| invalid("tenant", e))?;
        }
        forward_or!(self, req, list_dkim_keys, {
            self.linearize().await?;
            let keys = self
                .ctx
                .reader
                .dkim_keys((!tenant.is_empty()).then_some(tenant.as_str()))
                .map_err(ClusterError::from)?
                .into_iter()
                .map(dkim_key_proto)
                .collect();
            Ok(Response::new(ListDkimKeysResponse { keys }))
        })
    }

    async fn remove_dkim_key(
        &self,
        req: Request<RemoveDkimKeyRequest>,
    ) -> Result<Response<RemoveDkimKeyResponse>, Status> {
        let r = req.get_ref();
        check_tenant_name(&r.tenant).map_err(|e| invalid("tenant", e))?;
        let domain = skein_dkim::check_domain(&r.domain).map_err(|e| invalid("domain", e))?;
        let tenant = r.tenant.clone();
        forward_or!(self, req, remove_dkim_key, {
            let resp = self
                .write(Command::RemoveDkimKey {
                    tenant: tenant.clone(),
                    domain: domain.clone(),
                })
                .await?;
            match resp {
                Applied::DkimKey(true) => Ok(Response::new(RemoveDkimKeyResponse {})),
                _ => Err(ClusterError::NotFound {
                    what: format!("DKIM key of tenant {tenant:?} for {domain:?}"),
                }
                .into()),
            }
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

    async fn add_ip(&self, req: Request<AddIpRequest>) -> Result<Response<IpInfo>, Status> {
        let schedule = shaping::schedule_name(req.get_ref())?;
        shaping::check_ip(&req.get_ref().ip)?;
        forward_or!(self, req, add_ip, {
            self.shaping_allowed()?;
            let r = req.get_ref();
            let found = self
                .ctx
                .reader
                .schedules()
                .map_err(ClusterError::from)?
                .into_iter()
                .find(|s| s.name == schedule);
            let Some(s) = found else {
                return Err(shaping::no_schedule(&schedule).into());
            };
            let rec = shaping::ip_record(r, &s, self.ctx.clock.now_ms())?;
            let ip = rec.ip.clone();
            let o = self.shape(ShapingCommand::AddIp(rec)).await?;
            shaping::outcome(o, &ip, &schedule)?;
            Ok(Response::new(self.ip_info(&ip)?))
        })
    }

    async fn remove_ip(&self, req: Request<IpRef>) -> Result<Response<RemoveIpResponse>, Status> {
        let ip = shaping::check_ip(&req.get_ref().ip)?;
        forward_or!(self, req, remove_ip, {
            self.shaping_allowed()?;
            let o = self
                .shape(ShapingCommand::RemoveIp { ip: ip.clone() })
                .await?;
            shaping::outcome(o, &ip, "")?;
            Ok(Response::new(RemoveIpResponse {}))
        })
    }

    async fn set_ip_state(
        &self,
        req: Request<SetIpStateRequest>,
    ) -> Result<Response<IpInfo>, Status> {
        let ip = shaping::check_ip(&req.get_ref().ip)?;
        forward_or!(self, req, set_ip_state, {
            self.shaping_allowed()?;
            self.linearize().await?;
            let st = self
                .ctx
                .reader
                .shaping(self.ctx.clock.now_ms())
                .map_err(ClusterError::from)?;
            let Some(current) = st.ips.iter().find(|i| i.record.ip == ip) else {
                return Err(ClusterError::NotFound {
                    what: format!("IP {ip}"),
                }
                .into());
            };
            let cmd = shaping::ip_state_command(req.get_ref(), &current.record)?;
            let o = self.shape(cmd).await?;
            shaping::outcome(o, &ip, "")?;
            Ok(Response::new(self.ip_info(&ip)?))
        })
    }

    async fn list_ips(
        &self,
        req: Request<ListIpsRequest>,
    ) -> Result<Response<ListIpsResponse>, Status> {
        forward_or!(self, req, list_ips, {
            self.linearize().await?;
            let st = self
                .ctx
                .reader
                .shaping(self.ctx.clock.now_ms())
                .map_err(ClusterError::from)?;
            let pool = &req.get_ref().pool;
            let now = self.ctx.clock.now_ms();
            let backoffs = self.held.backoffs();
            let ips = st
                .ips
                .iter()
                .filter(|i| pool.is_empty() || &i.record.pool == pool)
                .map(|i| shaping::ip_info(i, &st, &backoffs, now))
                .collect();
            Ok(Response::new(ListIpsResponse { ips }))
        })
    }

    async fn list_senders(
        &self,
        req: Request<ListSendersRequest>,
    ) -> Result<Response<ListSendersResponse>, Status> {
        forward_or!(self, req, list_senders, {
            let senders = self
                .held
                .senders()
                .into_iter()
                .map(|s| SenderInfo {
                    name: s.name,
                    source_ips: s.ips,
                    max_in_flight: s.max_in_flight,
                    in_flight: s.in_flight,
                })
                .collect();
            Ok(Response::new(ListSendersResponse { senders }))
        })
    }

    async fn create_token(
        &self,
        req: Request<CreateTokenRequest>,
    ) -> Result<Response<CreatedToken>, Status> {
        let name = tokens::token_name(&req.get_ref().name)?;
        let scope = tokens::scope(&req.get_ref().scope)?;
        forward_or!(self, req, create_token, {
            let format = self.ctx.reader.format().map_err(ClusterError::from)?;
            ClusterError::require_format(format, skein_queue::TOKENS_FORMAT, "Admin tokens")?;
            let secret = tokens::new_secret()?;
            let rec = skein_queue::TokenRecord {
                name: name.clone(),
                scope,
                secret_sha256: tokens::sha256(&secret),
                created_ms: self.ctx.clock.now_ms(),
            };
            match self
                .write(Command::Token(TokenCommand::Create(rec.clone())))
                .await?
            {
                Applied::Token(TokenOutcome::Done) => {
                    tracing::info!(token = %name, scope = ?scope, "Admin token created");
                    Ok(Response::new(CreatedToken {
                        token: Some(tokens::token_proto(&rec)),
                        secret,
                    }))
                }
                Applied::Token(TokenOutcome::Exists) => Err(ClusterError::AlreadyExists {
                    what: format!("token {name:?}"),
                }
                .into()),
                other => Err(ClusterError::Raft(format!("unexpected response {other:?}")).into()),
            }
        })
    }

    async fn list_tokens(
        &self,
        req: Request<ListTokensRequest>,
    ) -> Result<Response<ListTokensResponse>, Status> {
        forward_or!(self, req, list_tokens, {
            self.linearize().await?;
            let tokens = self
                .ctx
                .reader
                .tokens()
                .map_err(ClusterError::from)?
                .iter()
                .map(tokens::token_proto)
                .collect();
            Ok(Response::new(ListTokensResponse { tokens }))
        })
    }

    async fn revoke_token(
        &self,
        req: Request<RevokeTokenRequest>,
    ) -> Result<Response<RevokeTokenResponse>, Status> {
        let name = tokens::token_name(&req.get_ref().name)?;
        forward_or!(self, req, revoke_token, {
            let format = self.ctx.reader.format().map_err(ClusterError::from)?;
            ClusterError::require_format(format, skein_queue::TOKENS_FORMAT, "Admin tokens")?;
            match self
                .write(Command::Token(TokenCommand::Revoke { name: name.clone() }))
                .await?
            {
                Applied::Token(TokenOutcome::Done) => {
                    tracing::info!(token = %name, "Admin token revoked");
                    Ok(Response::new(RevokeTokenResponse {}))
                }
                Applied::Token(TokenOutcome::NotFound) => Err(ClusterError::NotFound {
                    what: format!("token {name:?}"),
                }
                .into()),
                other => Err(ClusterError::Raft(format!("unexpected response {other:?}")).into()),
            }
        })
    }

    async fn allow_pools(
        &self,
        req: Request<AllowPoolsRequest>,
    ) -> Result<Response<AllowPoolsResponse>, Status> {
        let mut pools = Vec::new();
        for p in &req.get_ref().pools {
            let p = shaping::pool(p)?;
            if !pools.contains(&p) {
                pools.push(p);
            }
        }
        if pools.len() > 64 {
            return Err(ClusterError::Invalid {
                field: "pools",
                reason: "at most 64".into(),
            }
            .into());
        }
        forward_or!(self, req, allow_pools, {
            let format = self.ctx.reader.format().map_err(ClusterError::from)?;
            ClusterError::require_format(
                format,
                shaping::POOL_CHOICE_FORMAT,
                "pools chosen by header",
            )?;
            let tenant = req.get_ref().tenant.clone();
            self.tenant_exists(&tenant)?;
            self.shape(ShapingCommand::AllowPools {
                tenant: tenant.clone(),
                pools,
            })
            .await?;
            let (pool, allowed) = self
                .ctx
                .reader
                .pools_of(&tenant)
                .map_err(ClusterError::from)?;
            Ok(Response::new(AllowPoolsResponse { pool, allowed }))
        })
    }

    async fn set_tenant_pool(
        &self,
        req: Request<SetTenantPoolRequest>,
    ) -> Result<Response<SetTenantPoolResponse>, Status> {
        let pool = shaping::pool(&req.get_ref().pool)?;
        forward_or!(self, req, set_tenant_pool, {
            self.shaping_allowed()?;
            let tenant = req.get_ref().tenant.clone();
            // "" is mail relayed by IP address.
            if !tenant.is_empty() {
                self.tenant_exists(&tenant)?;
            }
            self.shape(ShapingCommand::SetTenantPool {
                tenant,
                pool: pool.clone(),
            })
            .await?;
            Ok(Response::new(SetTenantPoolResponse {}))
        })
    }

    async fn put_schedule(
        &self,
        req: Request<WarmupSchedule>,
    ) -> Result<Response<WarmupSchedule>, Status> {
        let s = shaping::schedule(req.get_ref())?;
        forward_or!(self, req, put_schedule, {
            self.shaping_allowed()?;
            self.shape(ShapingCommand::PutSchedule(s.clone())).await?;
            Ok(Response::new(shaping::schedule_proto(s.clone())))
        })
    }

    async fn list_schedules(
        &self,
        req: Request<ListSchedulesRequest>,
    ) -> Result<Response<ListSchedulesResponse>, Status> {
        forward_or!(self, req, list_schedules, {
            self.linearize().await?;
            let schedules = self
                .ctx
                .reader
                .schedules()
                .map_err(ClusterError::from)?
                .into_iter()
                .map(shaping::schedule_proto)
                .collect();
            Ok(Response::new(ListSchedulesResponse { schedules }))
        })
    }

    async fn put_provider(
        &self,
        req: Request<ProviderLimits>,
    ) -> Result<Response<ProviderLimits>, Status> {
        let p = shaping::provider(req.get_ref())?;
        forward_or!(self, req, put_provider, {
            self.shaping_allowed()?;
            self.shape(ShapingCommand::PutProvider(p.clone())).await?;
            Ok(Response::new(shaping::provider_proto(p.clone())))
        })
    }

    async fn retry_now(
        &self,
        req: Request<QueueScope>,
    ) -> Result<Response<QueueActionResponse>, Status> {
        queue_actions::check(req.get_ref())?;
        forward_or!(self, req, retry_now, {
            self.linearize().await?;
            let r = queue_actions::act(&self.ctx, "", req.get_ref(), queue_actions::retry_now);
            Ok(Response::new(r.await?))
        })
    }

    async fn bounce_queued(
        &self,
        req: Request<BounceQueuedRequest>,
    ) -> Result<Response<QueueActionResponse>, Status> {
        let scope = req.get_ref().scope.clone().unwrap_or_default();
        queue_actions::check(&scope)?;
        let reason = req.get_ref().reason.trim().to_string();
        if reason.is_empty() || reason.len() > 300 || reason.chars().any(char::is_control) {
            return Err(ClusterError::Invalid {
                field: "reason",
                reason: "1-300 printable characters: it goes into the DSN".into(),
            }
            .into());
        }
        forward_or!(self, req, bounce_queued, {
            self.linearize().await?;
            let op = queue_actions::bounce(&reason);
            Ok(Response::new(
                queue_actions::act(&self.ctx, &self.mta, &scope, op).await?,
            ))
        })
    }

    async fn delete_queued(
        &self,
        req: Request<QueueScope>,
    ) -> Result<Response<QueueActionResponse>, Status> {
        queue_actions::check(req.get_ref())?;
        forward_or!(self, req, delete_queued, {
            let format = self.ctx.reader.format().map_err(ClusterError::from)?;
            ClusterError::require_format(
                format,
                skein_queue::SUPPRESSION_FORMAT,
                "deleting queued mail",
            )?;
            self.linearize().await?;
            let r = queue_actions::act(&self.ctx, "", req.get_ref(), queue_actions::delete);
            Ok(Response::new(r.await?))
        })
    }

    async fn advance_clock(
        &self,
        req: Request<AdvanceClockRequest>,
    ) -> Result<Response<AdvanceClockResponse>, Status> {
        let Some(clock) = &self.manual else {
            return Err(ClusterError::FailedPrecondition {
                reason: "this node runs on the system clock (set [node] clock = \"manual\" \
                         to move time by hand, in tests only)"
                    .into(),
            }
            .into());
        };
        let ms = req.get_ref().ms;
        if ms > 400 * 86_400_000 {
            return Err(ClusterError::Invalid {
                field: "ms",
                reason: "at most 400 days at a time".into(),
            }
            .into());
        }
        clock.advance(Duration::from_millis(ms));
        Ok(Response::new(AdvanceClockResponse {
            now_ms: clock.now_ms(),
        }))
    }

    async fn suspend(
        &self,
        req: Request<SuspendRequest>,
    ) -> Result<Response<SuspensionInfo>, Status> {
        shaping::suspension(req.get_ref(), 0)?;
        forward_or!(self, req, suspend, {
            Ok(Response::new(self.suspend_local(req.get_ref()).await?))
        })
    }

    async fn resume(
        &self,
        req: Request<ResumeRequest>,
    ) -> Result<Response<ResumeResponse>, Status> {
        let (kind, name) = shaping::suspended(&req.get_ref().kind, &req.get_ref().name)?;
        forward_or!(self, req, resume, {
            self.shaping_allowed()?;
            let o = self
                .shape(ShapingCommand::Resume {
                    kind,
                    name: name.clone(),
                })
                .await?;
            shaping::outcome(o, "", &format!("{} {name}", kind.as_str()))?;
            Ok(Response::new(ResumeResponse {}))
        })
    }

    async fn list_suspensions(
        &self,
        req: Request<ListSuspensionsRequest>,
    ) -> Result<Response<ListSuspensionsResponse>, Status> {
        forward_or!(self, req, list_suspensions, {
            self.linearize().await?;
            let suspensions = self
                .ctx
                .reader
                .suspensions(self.ctx.clock.now_ms())
                .map_err(ClusterError::from)?
                .into_iter()
                .map(shaping::suspension_proto)
                .collect();
            Ok(Response::new(ListSuspensionsResponse { suspensions }))
        })
    }

    async fn list_providers(
        &self,
        req: Request<ListProvidersRequest>,
    ) -> Result<Response<ListProvidersResponse>, Status> {
        forward_or!(self, req, list_providers, {
            self.linearize().await?;
            let providers = self
                .ctx
                .reader
                .shaping(self.ctx.clock.now_ms())
                .map_err(ClusterError::from)?
                .providers
                .into_iter()
                .map(shaping::provider_proto)
                .collect();
            Ok(Response::new(ListProvidersResponse { providers }))
        })
    }
}

impl AdminService {
    /// Whether the scheduler holds queue (tenant, domain) back now: until when (0: not held;
    /// `i64::MAX` for a suspension without an end) and why.
    #[allow(clippy::type_complexity)]
    fn held_now(&self) -> Result<Box<dyn Fn(&str, &str) -> (i64, &'static str) + '_>, Status> {
        let now = self.ctx.clock.now_ms();
        let reader = &self.ctx.reader;
        let st = reader.shaping(now).map_err(ClusterError::from)?;
        let suspensions = reader.suspensions(now).map_err(ClusterError::from)?;
        let until_of: std::collections::BTreeMap<_, _> = suspensions
            .iter()
            .map(|s| ((s.kind, s.name.clone()), s.until_ms.unwrap_or(i64::MAX)))
            .collect();
        let held: std::collections::HashMap<(String, String), (i64, &'static str)> = self
            .held
            .get()
            .into_iter()
            .filter(|h| h.until_ms > now)
            .map(|h| ((h.tenant, h.domain), (h.until_ms, h.why)))
            .collect();
        Ok(Box::new(move |tenant: &str, domain: &str| {
            use skein_shaping::SuspendKind as K;
            let pool = skein_shaping::pool_for(tenant, &st.tenant_pools);
            let covering = [
                (K::Tenant, skein_shaping::base_tenant(tenant)),
                (K::Domain, domain),
                (K::Pool, pool),
                (K::Provider, st.provider(domain).name.as_str()),
            ];
            let suspended = covering
                .iter()
                .filter_map(|(k, n)| until_of.get(&(*k, n.to_string())))
                .max();
            if let Some(until) = suspended {
                return (*until, "suspended");
            }
            held.get(&(tenant.to_string(), domain.to_string()))
                .copied()
                .unwrap_or((0, ""))
        }))
    }

    async fn suspend_local(&self, r: &SuspendRequest) -> Result<SuspensionInfo, Status> {
        self.shaping_allowed()?;
        let sus = shaping::suspension(r, self.ctx.clock.now_ms())?;
        self.shape(ShapingCommand::Suspend(sus.clone())).await?;
        Ok(shaping::suspension_proto(sus))
    }

    /// Sending-limit changes need format 4 on every node.
    /// NOT_FOUND unless tenant `name` exists.
    fn tenant_exists(&self, name: &str) -> Result<(), Status> {
        let known = self
            .ctx
            .reader
            .tenants()
            .map_err(ClusterError::from)?
            .iter()
            .any(|t| t.name == name);
        if known {
            Ok(())
        } else {
            Err(ClusterError::NotFound {
                what: format!("tenant {name:?}"),
            }
            .into())
        }
    }

    fn shaping_allowed(&self) -> Result<(), Status> {
        let format = self.ctx.reader.format().map_err(ClusterError::from)?;
        Ok(shaping::check_format(format)?)
    }

    /// Proposes a sending-limit change on this node (the leader).
    async fn shape(&self, cmd: ShapingCommand) -> Result<ShapingOutcome, Status> {
        match self
            .write(Command::Shaping {
                at_ms: self.ctx.clock.now_ms(),
                cmd,
            })
            .await?
        {
            Applied::Shaped(o) => Ok(o),
            other => Err(ClusterError::Raft(format!("unexpected response {other:?}")).into()),
        }
    }

    /// One IP as the API shows it now.
    fn ip_info(&self, ip: &str) -> Result<IpInfo, Status> {
        let now = self.ctx.clock.now_ms();
        let st = self.ctx.reader.shaping(now).map_err(ClusterError::from)?;
        let i =
            st.ips
                .iter()
                .find(|i| i.record.ip == ip)
                .ok_or_else(|| ClusterError::NotFound {
                    what: format!("IP {ip}"),
                })?;
        Ok(shaping::ip_info(i, &st, &self.held.backoffs(), now))
    }
}
