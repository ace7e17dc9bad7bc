//! Agents' NATS identities: `EnrollAgent` makes an NKey for an agent and
//! stores its public half in etcd; `GetNatsConfig` (and the offline
//! `drover-scheduler nats-config`) turns the enrolled agents and the
//! scheduler's own key into nats-server's `authorization` block
//! ([`drover_api::nats_auth`] says what each identity may do).
//!
//! The scheduler keeps no agent's seed: it is handed to the caller once.
//! Enrolling changes nothing on the NATS server by itself: an operator adds
//! the printed block to nats-server's config and reloads it.

use drover_api::{nats_auth, nats_connect, pb};

use crate::error::{Result, SchedulerError};
use crate::store::Store;

/// The scheduler's side of NATS identities.
#[derive(Clone, Debug)]
pub struct NatsAdmin {
    /// The NATS subject prefix the permissions are written for.
    pub nats_prefix: String,
    /// The scheduler's own NKey public key; None: it runs without one.
    pub scheduler_public_key: Option<String>,
}

impl NatsAdmin {
    /// Creates agent `req.agent_id`'s identity and stores its public key.
    pub async fn enroll(
        &self,
        store: &Store,
        req: pb::EnrollAgentRequest,
        now_ms: u64,
    ) -> Result<pb::EnrollAgentResponse> {
        nats_auth::check_agent_id(&req.agent_id).map_err(|message| {
            SchedulerError::InvalidArgument {
                field: "agent_id",
                message,
            }
        })?;
        let (seed, public_key) = nats_connect::new_identity().map_err(SchedulerError::Config)?;
        let agent = pb::EnrolledAgent {
            agent_id: req.agent_id.clone(),
            public_key,
            enrolled_at_ms: now_ms,
        };
        if !store.put_enrolled_agent(&agent, req.replace).await? {
            return Err(SchedulerError::AlreadyExists(format!(
                "agent `{}` is enrolled already (replace its identity with --replace)",
                req.agent_id
            )));
        }
        let user_entry =
            nats_auth::agent_user_entry(&self.nats_prefix, &agent.agent_id, &agent.public_key);
        let authorization = match &self.scheduler_public_key {
            Some(key) => block(&self.nats_prefix, key, &store.list_enrolled_agents().await?),
            None => String::new(),
        };
        Ok(pb::EnrollAgentResponse {
            agent: Some(agent),
            seed,
            user_entry,
            authorization,
        })
    }

    /// nats-server's authorization block for every enrolled agent.
    pub async fn config(&self, store: &Store) -> Result<pb::GetNatsConfigResponse> {
        let Some(key) = &self.scheduler_public_key else {
            return Err(SchedulerError::FailedPrecondition(
                "the scheduler has no NATS identity (--nats-creds): create one with \
                 `drover-scheduler nats-identity --out FILE`, then print the block with \
                 `drover-scheduler nats-config --nats-creds FILE`"
                    .to_owned(),
            ));
        };
        let agents = store.list_enrolled_agents().await?;
        Ok(pb::GetNatsConfigResponse {
            authorization: block(&self.nats_prefix, key, &agents),
            scheduler_public_key: key.clone(),
            agents,
        })
    }
}

/// The block for the scheduler's key and `agents`.
pub fn block(nats_prefix: &str, scheduler_key: &str, agents: &[pb::EnrolledAgent]) -> String {
    nats_auth::authorization_block(
        nats_prefix,
        scheduler_key,
        agents
            .iter()
            .map(|a| (a.agent_id.as_str(), a.public_key.as_str())),
    )
}

/// `drover-scheduler nats-identity --out FILE`: a new NKey for the
/// scheduler, its seed written to `out` (mode 0600, never over an existing
/// file); returns the public key.
pub fn create_identity(out: &std::path::Path) -> Result<String> {
    let (seed, public_key) = nats_connect::new_identity().map_err(SchedulerError::Config)?;
    nats_connect::write_secret(out, &nats_connect::seed_file("the drover scheduler", &seed))
        .map_err(|e| SchedulerError::Config(format!("--out `{}`: {e}", out.display())))?;
    Ok(public_key)
}

/// `drover-scheduler nats-config`: the block from etcd's enrolled agents
/// and the scheduler's seed file, without NATS (to configure it before the
/// scheduler can connect).
pub async fn offline_config(
    store: &Store,
    nats_prefix: &str,
    security: &crate::options::NatsSecurityOptions,
) -> Result<String> {
    let Some(key) = security.public_key().map_err(SchedulerError::Config)? else {
        return Err(SchedulerError::Config(
            "--nats-creds: the scheduler's NKey seed file is needed (its public key goes into the block)"
                .to_owned(),
        ));
    };
    Ok(block(
        nats_prefix,
        &key,
        &store.list_enrolled_agents().await?,
    ))
}
