//! The failover scenario: three schedulers on one etcd prefix and a real
//! agent; the leader is killed (-9) while a run's tasks flow, several times.
//! Measured from the kill to the first assignment the new leader sends (an
//! observer reads every assignment batch and its sender's term), and to the
//! new leader answering as such.

use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use futures::StreamExt;
use prost::Message;
use tokio::process::Child;

use drover_api::pb;

use crate::cluster::Cluster;
use crate::report::{fmt_num, Outcome, Target};
use crate::scenarios::{guarded, Settings};
use crate::stats::{r3, Summary};

/// `--leader-lease`'s default: the target is this plus 2 s.
const LEASE: Duration = Duration::from_secs(3);

/// A scheduler process of the scenario.
struct Member {
    id: String,
    server: String,
    /// Killed on drop; None for the cluster's own first scheduler.
    _child: Option<Child>,
    pid: u32,
}

async fn status(server: &str) -> Option<pb::ClusterStatus> {
    let mut client = pb::cluster_client::ClusterClient::connect(server.to_owned())
        .await
        .ok()?;
    let r = client
        .get_cluster_status(pb::GetClusterStatusRequest {})
        .await;
    Some(r.ok()?.into_inner())
}

/// The leader's id and term, as the first live member that answers says.
async fn leader(members: &[Member]) -> Option<(String, i64)> {
    for m in members {
        if let Some(st) = status(&m.server).await {
            let lead = st.schedulers.iter().find(|s| s.id == st.leader_id)?;
            return Some((lead.id.clone(), lead.leader_revision));
        }
    }
    None
}

pub async fn failover(s: &Settings, kills: usize) -> Outcome {
    let mut o = Outcome::new("failover", false);
    o.param("kills", kills)
        .param("schedulers", 3)
        .param("leader_lease_s", LEASE.as_secs());
    let target = (LEASE + Duration::from_secs(2)).as_secs_f64() * 1000.0;
    guarded(o, &[("kill → next assignment max ms", "<=", target)], async |o: &mut Outcome| {
        let mut c = Cluster::start(&s.bins, &s.env, s.nats_sync_always).await?;
        c.add_agent("real-1", s.real_cpus).await?;
        c.wait_agents(1, Duration::from_secs(30)).await?;
        let mut members = vec![Member {
            id: "scheduler-1".into(),
            server: c.server.clone(),
            _child: None,
            pid: c.scheduler_pid()?,
        }];
        let mut next_id = 2;
        let mut standby = |c: &Cluster, members: &mut Vec<Member>| -> Result<()> {
            let id = format!("scheduler-{next_id}");
            next_id += 1;
            let (child, server) = c.spawn_scheduler(&id)?;
            let pid = child.id().context("a standby exited at once")?;
            members.push(Member {
                id,
                server,
                _child: Some(child),
                pid,
            });
            Ok(())
        };
        standby(&c, &mut members)?;
        standby(&c, &mut members)?;
        // Every assignment batch, when it arrived and under which term.
        let observer = c.nats_observer().await?;
        let mut batches = observer
            .subscribe(format!("{}.agent.*.assigns", c.nats_prefix))
            .await?;
        let (to_assign, to_lead) = (&mut Vec::new(), &mut Vec::new());
        for _ in 0..kills {
            // Tasks flow: one run that outlasts the failover.
            let spec = crate::specs::sleepers(400, "0.05");
            let (old, term) = leader(&members).await.context("no leader before the kill")?;
            let run = submit_to_leader(&members, &old, spec).await?;
            // Wait for assignments under the current term, then kill.
            let deadline = Instant::now() + Duration::from_secs(60);
            loop {
                let msg = tokio::time::timeout(Duration::from_secs(30), batches.next()).await?;
                let batch = pb::AssignBatch::decode(msg.context("observer closed")?.payload)?;
                if batch.leader_revision == term {
                    break;
                }
                if Instant::now() > deadline {
                    bail!("no assignment under term {term}");
                }
            }
            let at = members.iter().position(|m| m.id == old).context("leader not ours")?;
            let killed = members.remove(at);
            // SAFETY: a plain syscall on a scheduler process we started.
            unsafe { libc::kill(killed.pid as i32, libc::SIGKILL) };
            let t0 = Instant::now();
            let assigned = loop {
                let msg = tokio::time::timeout(Duration::from_secs(30), batches.next())
                    .await
                    .context("no assignment within 30 s of the kill")?;
                let batch = pb::AssignBatch::decode(msg.context("observer closed")?.payload)?;
                if batch.leader_revision > term {
                    break t0.elapsed();
                }
            };
            let led = loop {
                if let Some((id, t)) = leader(&members).await {
                    if id != old && t > term {
                        break t0.elapsed();
                    }
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            };
            to_assign.push(assigned.as_secs_f64() * 1000.0);
            to_lead.push(led.as_secs_f64() * 1000.0);
            drop(killed);
            standby(&c, &mut members)?;
            let _ = run;
        }
        let assign = Summary::of_ms(to_assign.clone());
        let lead = Summary::of_ms(to_lead.clone());
        o.metric("kill_to_next_assignment", assign)
            .metric("kill_to_new_leader", lead)
            .metric("kill_to_next_assignment_ms", serde_json::json!(to_assign.iter().map(|v| r3(*v)).collect::<Vec<_>>()));
        o.summary = format!(
            "kill -9 of the leader → next task assigned: p50 {} ms, max {} ms; → new leader answering: p50 {} ms ({} kills, lease {} s)",
            fmt_num(assign.p50_ms),
            fmt_num(assign.max_ms),
            fmt_num(lead.p50_ms),
            kills,
            LEASE.as_secs()
        );
        o.targets.push(Target::at_most("kill → next assignment max ms", assign.max_ms, target));
        Ok(())
    })
    .await
}

/// Submits `spec` at the leader `id`.
async fn submit_to_leader(members: &[Member], id: &str, spec: String) -> Result<String> {
    let m = members
        .iter()
        .find(|m| m.id == id)
        .context("leader not found")?;
    let mut client = pb::scheduler_client::SchedulerClient::connect(m.server.clone()).await?;
    let r = client
        .submit_run(pb::SubmitRunRequest {
            spec_yaml: spec,
            ..Default::default()
        })
        .await?;
    Ok(r.into_inner().run_id)
}

/// What fencing costs etcd: transactions shaped like the scheduler's
/// commits, with and without the leader's fence (one more compare on the
/// election key, and its read on failure), alternating on one etcd. Small
/// ones (3 keys, a hop's commit) by latency; full ones by keys per second.
pub async fn fence_cost(rounds: usize) -> Outcome {
    let mut o = Outcome::new("fence-cost", false);
    o.param("rounds", rounds);
    guarded(o, &[("fenced ÷ unfenced keys/s", ">=", 0.95)], async |o: &mut Outcome| {
        let etcd_server = drover_devcluster::Server::etcd(None).await?;
        let mut etcd = etcd_client::Client::connect([etcd_server.url.as_str()], None).await?;
        let lease = etcd.lease_grant(30, None).await?.id();
        let won = etcd.campaign("/fence/leader", "bench", lease).await?;
        let leader = won.leader().context("no leader key")?;
        let fence = (leader.key().to_vec(), leader.rev());
        let mut next = 0usize;
        let (mut small, mut rate) = ([Vec::new(), Vec::new()], [0.0f64; 2]);
        for round in 0..rounds {
            let order = if round % 2 == 0 { [false, true] } else { [true, false] };
            for fenced in order {
                let side = usize::from(fenced);
                let fence = fenced.then_some(&fence);
                for _ in 0..200 {
                    let t = Instant::now();
                    commit(&mut etcd, &mut next, 3, fence).await?;
                    small[side].push(t.elapsed().as_secs_f64() * 1000.0);
                }
                let keys_per_txn = if fenced { 127 } else { 128 };
                let t = Instant::now();
                let mut keys = 0;
                while keys < 20_000 {
                    commit(&mut etcd, &mut next, keys_per_txn, fence).await?;
                    keys += keys_per_txn;
                }
                rate[side] = rate[side].max(keys as f64 / t.elapsed().as_secs_f64());
            }
        }
        let [off, on] = small.map(Summary::of_ms);
        let ratio = rate[1] / rate[0];
        o.metric("small_txn_unfenced", off)
            .metric("small_txn_fenced", on)
            .metric("keys_per_s_unfenced", r3(rate[0]))
            .metric("keys_per_s_fenced", r3(rate[1]))
            .metric("ratio_keys_per_s", r3(ratio));
        o.summary = format!(
            "3-key commit p50 {} → {} ms fenced; full commits {} → {} keys/s (fenced ÷ unfenced = {})",
            fmt_num(off.p50_ms),
            fmt_num(on.p50_ms),
            fmt_num(rate[0]),
            fmt_num(rate[1]),
            fmt_num(ratio)
        );
        o.targets.push(Target::at_least("fenced ÷ unfenced keys/s", ratio, 0.95));
        Ok(())
    })
    .await
}

/// One commit of `n` new keys, each compared absent, fenced when asked.
async fn commit(
    etcd: &mut etcd_client::Client,
    next: &mut usize,
    n: usize,
    fence: Option<&(Vec<u8>, i64)>,
) -> Result<()> {
    use etcd_client::{Compare, CompareOp, Txn, TxnOp};
    let keys: Vec<String> = (*next..*next + n)
        .map(|i| format!("/fence/k/{i}"))
        .collect();
    *next += n;
    let mut compares: Vec<Compare> = keys
        .iter()
        .map(|k| Compare::create_revision(k.clone(), CompareOp::Equal, 0))
        .collect();
    let puts: Vec<TxnOp> = keys
        .iter()
        .map(|k| TxnOp::put(k.clone(), vec![b'x'; 200], None))
        .collect();
    let mut txn = Txn::new();
    if let Some((key, rev)) = fence {
        compares.push(Compare::create_revision(
            key.clone(),
            CompareOp::Equal,
            *rev,
        ));
        txn = txn
            .when(compares)
            .and_then(puts)
            .or_else([TxnOp::get(key.clone(), None)]);
    } else {
        txn = txn.when(compares).and_then(puts);
    }
    let resp = etcd.txn(txn).await?;
    anyhow::ensure!(resp.succeeded(), "a bench commit's compare failed");
    Ok(())
}
