//! Leader election on etcd, and what leadership allows.
//!
//! Any number of schedulers share one etcd prefix. Each keeps a lease alive
//! (`--leader-lease`) and campaigns on `<prefix>/leader` with it; the winner
//! runs the engine, the others stand by and answer UNAVAILABLE with the
//! leader's address. Holding the key is not enough — a paused process may
//! still believe it leads (Jepsen, etcd 3.4.3) — so leadership is checked
//! twice: every transaction compares the election key's create revision
//! ([`Fence`], in [`crate::store::Store`]), and nothing is sent to agents or
//! acked once the lease may have expired by this process's own monotonic
//! clock ([`Leadership::may_act`]): the lease's expiry is counted from
//! when the keep-alive that renewed it was sent, which is never later than
//! when etcd received it.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use etcd_client::{Client, LeaderKey, PutOptions, ResignOptions};
use prost::Message;
use tokio::sync::watch;
use tracing::{info, warn};

use drover_api::pb;

use crate::engine::{now_ms, Engine};
use crate::error::{Result, SchedulerError};
use crate::store::Store;

/// gRPC metadata key of the leader's address on a standby's UNAVAILABLE.
pub const LEADER_METADATA: &str = "drover-leader";

/// What every fenced transaction compares: the leader's election key and
/// the revision it was created at (a new campaign creates a new key).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Fence {
    pub key: Vec<u8>,
    pub revision: i64,
}

#[derive(Clone, Debug)]
enum Role {
    Standby { leader: Option<pb::SchedulerRecord> },
    Leader { fence: Fence },
}

struct Inner {
    role: RwLock<Role>,
    started: Instant,
    /// Milliseconds after `started` until which the lease is surely alive.
    valid_until_ms: AtomicU64,
}

/// This process's part in the election, shared by the engine, the store,
/// the bus and the gRPC layer.
#[derive(Clone)]
pub struct Leadership(Arc<Inner>);

impl Default for Leadership {
    fn default() -> Self {
        Self(Arc::new(Inner {
            role: RwLock::new(Role::Standby { leader: None }),
            started: Instant::now(),
            valid_until_ms: AtomicU64::new(0),
        }))
    }
}

impl Leadership {
    fn elapsed_ms(&self) -> u64 {
        self.0.started.elapsed().as_millis() as u64
    }

    fn role(&self) -> Role {
        self.0
            .role
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    fn set(&self, role: Role) {
        *self
            .0
            .role
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = role;
    }

    /// Leads, and the lease is surely still alive: sending and acking are allowed.
    pub fn may_act(&self) -> bool {
        matches!(self.role(), Role::Leader { .. })
            && self.elapsed_ms() < self.0.valid_until_ms.load(Ordering::Acquire)
    }

    /// The fence of this process's term, while it leads.
    pub fn fence(&self) -> Option<Fence> {
        match self.role() {
            Role::Leader { fence } => Some(fence),
            Role::Standby { .. } => None,
        }
    }

    pub fn is_leader(&self) -> bool {
        matches!(self.role(), Role::Leader { .. })
    }

    /// What a call to a standby gets: UNAVAILABLE naming the leader, its
    /// address in [`LEADER_METADATA`] for clients to follow. None on the leader.
    pub fn refusal(&self) -> Option<tonic::Status> {
        let leader = match self.role() {
            Role::Leader { .. } => return None,
            Role::Standby { leader } => leader,
        };
        let Some(leader) = leader else {
            return Some(tonic::Status::unavailable(
                "not the leader; no leader is elected yet, retry shortly",
            ));
        };
        let mut status = tonic::Status::unavailable(format!(
            "not the leader; leader is {} at {}",
            leader.id, leader.address
        ));
        if let Ok(value) = leader.address.parse() {
            status.metadata_mut().insert(LEADER_METADATA, value);
        }
        Some(status)
    }

    fn renewed(&self, sent_at_ms: u64, ttl: Duration) {
        let until = sent_at_ms + ttl.as_millis() as u64;
        self.0.valid_until_ms.fetch_max(until, Ordering::AcqRel);
    }
}

/// How this scheduler takes part in the election.
#[derive(Clone, Debug)]
pub struct ElectionOptions {
    /// `--id`: this scheduler's name in `drover status`.
    pub id: String,
    /// Where clients reach this scheduler.
    pub address: String,
    /// `--leader-lease`.
    pub lease: Duration,
}

fn election_name(prefix: &str) -> String {
    format!("{prefix}/leader")
}

fn presence_prefix(prefix: &str) -> String {
    format!("{prefix}/schedulers/")
}

/// Every scheduler with a live lease, and the leader's record (None while
/// none is elected).
pub async fn cluster(
    store: &Store,
) -> Result<(Vec<pb::SchedulerRecord>, Option<pb::SchedulerRecord>)> {
    let mut client = store.client();
    let prefix = presence_prefix(store.prefix());
    let resp = client
        .get(prefix, Some(etcd_client::GetOptions::new().with_prefix()))
        .await?;
    let members = resp
        .kvs()
        .iter()
        .filter_map(|kv| pb::SchedulerRecord::decode(kv.value()).ok())
        .collect();
    Ok((members, current_leader(&mut client, store.prefix()).await))
}

async fn current_leader(client: &mut Client, prefix: &str) -> Option<pb::SchedulerRecord> {
    let resp = client.leader(election_name(prefix)).await.ok()?;
    pb::SchedulerRecord::decode(resp.kv()?.value()).ok()
}

/// Campaigns until `stop` turns true; while leading, runs `engine`, and
/// steps down (dropping the engine's state) the moment leadership is lost.
/// `leading` says whether this process leads.
pub async fn run(
    store: Store,
    opts: ElectionOptions,
    leadership: Leadership,
    engine: &mut Engine,
    mut stop: watch::Receiver<bool>,
    leading: watch::Sender<bool>,
) -> Result<()> {
    let started_at_ms = now_ms();
    let ttl_secs = opts.lease.as_secs().max(1) as i64;
    let mut client = store.client();
    take_over_from_self(&mut client, store.prefix(), &opts.id).await;
    let mut retry = RETRY_FIRST;
    while !stopped(&stop) {
        let lease = match client.lease_grant(ttl_secs, None).await {
            Ok(l) => l.id(),
            Err(e) => {
                warn!(error = %e, "cannot get a lease from etcd; retrying");
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            }
        };
        let (lost_tx, mut lost) = watch::channel(false);
        let keeper = tokio::spawn(keep_alive(
            client.clone(),
            lease,
            opts.lease,
            leadership.clone(),
            lost_tx,
        ));
        let mut record = pb::SchedulerRecord {
            id: opts.id.clone(),
            address: opts.address.clone(),
            started_at_ms,
            leader_since_ms: 0,
            leader_revision: 0,
        };
        let presence = format!("{}{}", presence_prefix(store.prefix()), opts.id);
        let put = client
            .put(
                presence.as_str(),
                record.encode_to_vec(),
                Some(PutOptions::new().with_lease(lease)),
            )
            .await;
        if let Err(e) = put {
            warn!(error = %e, "cannot register with etcd; retrying");
        }
        let name = election_name(store.prefix());
        let won = {
            let mut campaigner = client.clone();
            let campaign = campaigner.campaign(name.as_str(), record.encode_to_vec(), lease);
            tokio::pin!(campaign);
            let mut poll = tokio::time::interval(Duration::from_millis(500));
            loop {
                tokio::select! {
                    r = &mut campaign => break Some(r),
                    _ = raised(&mut lost) => break None,
                    _ = raised(&mut stop) => break None,
                    _ = poll.tick() => {
                        let leader = current_leader(&mut client, store.prefix()).await;
                        leadership.set(Role::Standby { leader });
                    }
                }
            }
        };
        let leader_key = match won {
            Some(Ok(mut resp)) => resp.take_leader(),
            Some(Err(e)) => {
                warn!(error = %e, "campaign failed; starting over");
                None
            }
            None => None,
        };
        let Some(leader_key) = leader_key else {
            keeper.abort();
            let _ = client.lease_revoke(lease).await;
            continue;
        };
        record.leader_since_ms = now_ms();
        record.leader_revision = leader_key.rev();
        let fence = Fence {
            key: leader_key.key().to_vec(),
            revision: leader_key.rev(),
        };
        let proclaim = etcd_client::ProclaimOptions::new().with_leader(leader_key.clone());
        if let Err(e) = client
            .proclaim(record.encode_to_vec(), Some(proclaim))
            .await
        {
            warn!(error = %e, "could not publish the leader's start time");
        }
        info!(id = %opts.id, revision = fence.revision, "leading");
        leadership.set(Role::Leader { fence });
        let _ = leading.send(true);
        let term = {
            let (mut stop, mut lost) = (stop.clone(), lost.clone());
            engine.run_term(async move {
                tokio::select! {
                    _ = raised(&mut stop) => {}
                    _ = raised(&mut lost) => {}
                }
            })
        };
        let result = term.await;
        leadership.set(Role::Standby { leader: None });
        let _ = leading.send(false);
        engine.step_down();
        keeper.abort();
        resign(&mut client, leader_key, lease).await;
        match result {
            Ok(()) if stopped(&stop) => return Ok(()),
            Ok(()) | Err(SchedulerError::NotLeader) => {
                warn!(id = %opts.id, "leadership lost; standing by");
                retry = RETRY_FIRST;
            }
            Err(e) if fatal(&e) => return Err(e),
            // etcd or NATS failing mid-term (a member dies, a stream moves)
            // heals by waiting: stand by and campaign again, backing off
            // while it keeps failing, rather than leave no scheduler.
            Err(e) => {
                warn!(id = %opts.id, error = %e, retry_in = ?retry, "term ended by an error; standing by");
                tokio::select! {
                    _ = tokio::time::sleep(retry) => {}
                    _ = raised(&mut stop) => {}
                }
                retry = (retry * 2).min(RETRY_MAX);
            }
        }
    }
    Ok(())
}

/// Backoff between terms that end by an error.
const RETRY_FIRST: Duration = Duration::from_millis(500);
const RETRY_MAX: Duration = Duration::from_secs(8);

/// Errors that waiting does not heal: the operator must act.
fn fatal(e: &SchedulerError) -> bool {
    matches!(
        e,
        SchedulerError::Corrupt { .. } | SchedulerError::Config(_)
    )
}

fn stopped(stop: &watch::Receiver<bool>) -> bool {
    *stop.borrow()
}

/// Resolves once `flag` is true (or its sender is gone).
async fn raised(flag: &mut watch::Receiver<bool>) {
    let _ = flag.wait_for(|f| *f).await;
}

/// A leader with this process's id is an earlier run of it (ids are
/// unique): its lease is revoked so the election does not wait for it to expire.
async fn take_over_from_self(client: &mut Client, prefix: &str, id: &str) {
    let Ok(resp) = client.leader(election_name(prefix)).await else {
        return;
    };
    let Some(kv) = resp.kv() else { return };
    let ours = pb::SchedulerRecord::decode(kv.value()).is_ok_and(|r| r.id == id);
    if ours {
        info!(
            id,
            "the leader was an earlier run of this scheduler: taking over at once"
        );
        let _ = client.lease_revoke(kv.lease()).await;
    }
}

/// Gives the election up at once (SIGTERM, or a term that ended), so a
/// standby need not wait for the lease to expire.
async fn resign(client: &mut Client, leader: LeaderKey, lease: i64) {
    let _ = client
        .resign(Some(ResignOptions::new().with_leader(leader)))
        .await;
    let _ = client.lease_revoke(lease).await;
}

/// Renews `lease` every third of its TTL; each renewal extends how long
/// this process may act. Reports `lost` when etcd says the lease is gone or
/// when no renewal came back before it would have expired.
async fn keep_alive(
    mut client: Client,
    lease: i64,
    ttl: Duration,
    leadership: Leadership,
    lost: watch::Sender<bool>,
) {
    let every = ttl / 3;
    let mut keeper = None;
    let mut last_until = leadership.elapsed_ms() + ttl.as_millis() as u64;
    loop {
        if keeper.is_none() {
            keeper = client.lease_keep_alive(lease).await.ok();
        }
        let sent = leadership.elapsed_ms();
        let answer = match keeper.as_mut() {
            Some((k, stream)) => tokio::time::timeout(every, async {
                k.keep_alive().await?;
                stream.message().await
            })
            .await
            .ok(),
            None => None,
        };
        match answer {
            Some(Ok(Some(resp))) if resp.ttl() > 0 => {
                leadership.renewed(sent, ttl.min(Duration::from_secs(resp.ttl() as u64)));
                last_until = sent + ttl.as_millis() as u64;
            }
            Some(Ok(Some(_))) => {
                warn!(lease, "the leader lease expired");
                let _ = lost.send(true);
                return;
            }
            other => {
                if let Some(Err(e)) = other {
                    warn!(error = %e, "lease keep-alive failed");
                }
                keeper = None;
                if leadership.elapsed_ms() >= last_until {
                    warn!(lease, "no lease renewal before it would expire");
                    let _ = lost.send(true);
                    return;
                }
            }
        }
        tokio::time::sleep(every).await;
    }
}
