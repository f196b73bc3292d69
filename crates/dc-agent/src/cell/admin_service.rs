//! The cell's admin API for operators: read nodes, apps and tasks; drain and undrain nodes.

use std::sync::Arc;

use switchyard_proto::cell::v1 as pb;
use switchyard_proto::cell::v1::cell_admin_server::CellAdmin;
use switchyard_tls::{Identity, Role, peer_identity};
use tonic::{Request, Response, Status};

use super::Shared;

pub(crate) struct AdminService {
    shared: Arc<Shared>,
}

impl AdminService {
    pub(crate) fn new(shared: Arc<Shared>) -> Self {
        Self { shared }
    }
}

fn authorise<T>(req: &Request<T>, allowed: fn(Role) -> bool, what: &str) -> Result<Identity, Status> {
    let id = peer_identity(req)?;
    if !allowed(id.role) {
        return Err(Status::permission_denied(format!("{id} (role {}) may not {what}", id.role)));
    }
    Ok(id)
}

#[tonic::async_trait]
impl CellAdmin for AdminService {
    async fn list_nodes(&self, req: Request<pb::ListNodesRequest>) -> Result<Response<pb::ListNodesReply>, Status> {
        authorise(&req, Role::can_view, "list the cell's nodes")?;
        let st = self.shared.state();
        Ok(Response::new(pb::ListNodesReply { site: st.site().to_string(), nodes: st.admin_nodes() }))
    }

    async fn list_apps(&self, req: Request<pb::ListAppsRequest>) -> Result<Response<pb::ListAppsReply>, Status> {
        authorise(&req, Role::can_view, "list the cell's apps")?;
        let st = self.shared.state();
        Ok(Response::new(pb::ListAppsReply { site: st.site().to_string(), apps: st.admin_apps() }))
    }

    async fn list_tasks(&self, req: Request<pb::ListTasksRequest>) -> Result<Response<pb::ListTasksReply>, Status> {
        authorise(&req, Role::can_view, "list the cell's tasks")?;
        let node = Some(req.get_ref().node_id.as_str()).filter(|n| !n.is_empty());
        let st = self.shared.state();
        Ok(Response::new(pb::ListTasksReply { site: st.site().to_string(), tasks: st.admin_tasks(node) }))
    }

    async fn list_roles(&self, req: Request<pb::ListRolesRequest>) -> Result<Response<pb::ListRolesReply>, Status> {
        authorise(&req, Role::can_view, "list the cell's roles")?;
        let st = self.shared.state();
        let (roles, quota_error) = st.admin_roles();
        Ok(Response::new(pb::ListRolesReply { site: st.site().to_string(), roles, quota_error }))
    }

    async fn kill_tasks(&self, req: Request<pb::KillTasksRequest>) -> Result<Response<pb::KillTasksReply>, Status> {
        let id = authorise(&req, Role::can_switchover, "kill tasks")?;
        let r = req.into_inner();
        let killed = {
            let mut st = self.shared.state();
            st.kill_tasks(&r.task_ids, &r.group, &r.app, tokio::time::Instant::now())
                .map_err(Status::invalid_argument)?
        };
        tracing::info!(?killed, actor = %id, "tasks killed by an operator");
        self.shared.poke_reconcile();
        self.shared.poke_report();
        Ok(Response::new(pb::KillTasksReply { killed }))
    }

    async fn drain_node(&self, req: Request<pb::DrainNodeRequest>) -> Result<Response<pb::DrainNodeReply>, Status> {
        let id = authorise(&req, Role::can_switchover, "drain or undrain nodes")?;
        let r = req.into_inner();
        let (changed, node) = {
            let mut st = self.shared.state();
            let changed = st.set_draining(&r.node_id, r.drain).map_err(Status::not_found)?;
            (changed, st.admin_node(&r.node_id))
        };
        if changed {
            tracing::info!(node = %r.node_id, drain = r.drain, actor = %id, "node maintenance changed");
            self.shared.poke_reconcile();
            self.shared.poke_report();
        }
        Ok(Response::new(pb::DrainNodeReply { node, changed }))
    }
}
