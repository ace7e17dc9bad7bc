//! `Cluster`: the schedulers sharing one etcd prefix (`drover status`),
//! answered by standbys too.

use tonic::{Request, Response, Status};

use drover_api::pb;

use crate::store::Store;

#[derive(Clone)]
pub struct ClusterApi {
    pub store: Store,
    /// This scheduler's `--id`.
    pub id: String,
}

#[tonic::async_trait]
impl pb::cluster_server::Cluster for ClusterApi {
    async fn get_cluster_status(
        &self,
        _req: Request<pb::GetClusterStatusRequest>,
    ) -> Result<Response<pb::ClusterStatus>, Status> {
        let (mut schedulers, leader) = crate::leader::cluster(&self.store).await?;
        let leader_id = leader.as_ref().map(|l| l.id.clone()).unwrap_or_default();
        for s in &mut schedulers {
            if let Some(l) = leader.as_ref().filter(|l| l.id == s.id) {
                s.leader_since_ms = l.leader_since_ms;
                s.leader_revision = l.leader_revision;
            }
        }
        schedulers.sort_by(|a, b| a.id.cmp(&b.id));
        Ok(Response::new(pb::ClusterStatus {
            schedulers,
            leader_id,
            answered_by: self.id.clone(),
        }))
    }
}
