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
        let mut c = Cluster::start(&s.bins, &s.env).await?;
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
