//! Periodic heartbeat on core NATS: capacity, labels, machine and GPU usage,
//! running attempts.
//!
//! One sysinfo `System` and one NVML handle live as long as the heartbeat
//! task; each heartbeat refreshes only CPU usage, RAM and GPU usage, on a
//! blocking thread (NVML may stall on a sick GPU). A sample that takes
//! longer than `SAMPLE_WAIT` does not hold the heartbeat back: it goes out
//! with the last values.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use async_nats::Client;
use bytes::Bytes;
use drover_api::pb::{AttemptRef, Heartbeat};
use drover_api::{naming, nats_auth};
use futures::StreamExt;
use prost::Message as _;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tracing::{debug, info, warn};

use crate::core::capacity::{format_bytes, format_cpus, CapacityConfig};
use crate::core::ExecutorKind;
use crate::shell::gpu::{GpuMonitor, GpuSnapshot};
use crate::shell::host::{self, Machine, Usage};
use crate::shell::metrics::AgentMetrics;
use crate::shell::registry::Registry;

/// Longest a heartbeat waits for fresh usage numbers.
const SAMPLE_WAIT: Duration = Duration::from_millis(500);

/// What every heartbeat repeats.
#[derive(Debug, Clone)]
pub struct HeartbeatConfig {
    pub agent_id: String,
    pub subject: String,
    /// The reply subject: the scheduler answers with its agent timeout.
    pub ack_subject: String,
    pub executors: Vec<ExecutorKind>,
    pub interval: Duration,
    pub capacity: CapacityConfig,
    /// Random, once per `Agent::run`: a new value tells the scheduler this
    /// agent restarted (and lost whatever it did not report running).
    pub instance: String,
    /// Empty when unreadable.
    pub hostname: String,
}

impl HeartbeatConfig {
    pub fn new(
        prefix: &str,
        agent_id: &str,
        executors: &[ExecutorKind],
        interval: Duration,
        capacity: &CapacityConfig,
    ) -> Self {
        let hostname = host::hostname().unwrap_or_else(|e| {
            warn!(error = %e, "host name unreadable: heartbeats carry none");
            String::new()
        });
        HeartbeatConfig {
            agent_id: agent_id.to_owned(),
            subject: naming::heartbeat_subject(prefix, agent_id),
            ack_subject: nats_auth::heartbeat_ack_subject(prefix, agent_id),
            executors: executors.to_vec(),
            interval,
            capacity: capacity.clone(),
            instance: uuid::Uuid::new_v4().simple().to_string(),
            hostname,
        }
    }
}

/// What changes between heartbeats.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Sample {
    pub usage: Usage,
    pub gpus: GpuSnapshot,
}

/// The heartbeat for these values (pure).
pub fn compose(
    config: &HeartbeatConfig,
    sample: &Sample,
    running: Vec<AttemptRef>,
    now_ms: u64,
) -> Heartbeat {
    Heartbeat {
        agent_id: config.agent_id.clone(),
        executors: config
            .executors
            .iter()
            .map(|k| k.name().to_owned())
            .collect(),
        cpu_millis: config.capacity.cpu_millis,
        memory_bytes: config.capacity.memory_bytes,
        running,
        sent_at_ms: now_ms,
        gpus: sample.gpus.gpus.clone(),
        labels: config
            .capacity
            .labels
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect(),
        instance: config.instance.clone(),
        hostname: config.hostname.clone(),
        cpu_usage_percent: sample.usage.cpu_usage_percent,
        memory_used_bytes: sample.usage.memory_used_bytes,
        driver_version: sample.gpus.driver_version.clone(),
        cuda_version: sample.gpus.cuda_version.clone(),
    }
}

/// The machine and its GPUs, sampled on a blocking thread.
struct Sampler {
    machine: Machine,
    gpus: GpuMonitor,
}

impl Sampler {
    fn sample(&mut self) -> Sample {
        Sample {
            usage: self.machine.usage(),
            gpus: self.gpus.sample(),
        }
    }
}

/// The sampler, the last sample, and a sample still in flight.
struct Sampling {
    sampler: Arc<Mutex<Sampler>>,
    last: Sample,
    in_flight: Option<JoinHandle<Sample>>,
    agent_id: String,
}

impl Sampling {
    /// Opens the machine and NVML (logging what it found) and takes the
    /// first sample; waits as long as that takes, once.
    async fn start(config: &HeartbeatConfig) -> Self {
        let gpus = config.capacity.gpus.clone();
        let agent_id = config.agent_id.clone();
        let opened = tokio::task::spawn_blocking(move || {
            let mut sampler = Sampler {
                machine: Machine::new(),
                gpus: GpuMonitor::start(&gpus, &agent_id),
            };
            let first = sampler.sample();
            (sampler, first)
        })
        .await;
        let (sampler, last) = match opened {
            Ok(opened) => opened,
            // Only a panic inside sysinfo or nvml-wrapper gets here: carry
            // on without GPUs rather than without heartbeats.
            Err(e) => {
                warn!(agent = %config.agent_id, error = %e, "opening the machine's sensors failed: reporting no GPUs");
                let mut sampler = Sampler {
                    machine: Machine::new(),
                    gpus: GpuMonitor::none(),
                };
                let first = sampler.sample();
                (sampler, first)
            }
        };
        Sampling {
            sampler: Arc::new(Mutex::new(sampler)),
            last,
            in_flight: None,
            agent_id: config.agent_id.clone(),
        }
    }

    /// A fresh sample, or the last one when the fresh one is not ready
    /// within `SAMPLE_WAIT` (it is picked up by a later call).
    async fn next(&mut self) -> &Sample {
        let stalled = self.in_flight.is_some();
        let mut handle = self.in_flight.take().unwrap_or_else(|| {
            let sampler = Arc::clone(&self.sampler);
            tokio::task::spawn_blocking(move || {
                // A panic mid-sample leaves at worst stale readings behind.
                sampler
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .sample()
            })
        });
        match tokio::time::timeout(SAMPLE_WAIT, &mut handle).await {
            Ok(Ok(sample)) => self.last = sample,
            Ok(Err(e)) => {
                warn!(agent = %self.agent_id, error = %e, "sampling machine usage failed")
            }
            // Said once per stall, not on every heartbeat it lasts.
            Err(_) if stalled => {
                debug!(agent = %self.agent_id, "machine/GPU sampling still stalled");
                self.in_flight = Some(handle);
            }
            Err(_) => {
                warn!(agent = %self.agent_id, wait = ?SAMPLE_WAIT, "machine/GPU sampling is slow: sending the last values");
                self.in_flight = Some(handle);
            }
        }
        &self.last
    }
}

/// Sends a heartbeat now, then every `interval` and whenever a scheduler
/// asks on `now_subject`, until `stop` turns true.
pub async fn run(
    client: Client,
    config: HeartbeatConfig,
    now_subject: String,
    registry: Registry,
    metrics: AgentMetrics,
    mut stop: watch::Receiver<bool>,
) {
    let mut sampling = Sampling::start(&config).await;
    log_capacity(&config, &sampling.last);
    metrics.set_sample(&sampling.last);
    let mut tick = tokio::time::interval(config.interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut asks = match client.subscribe(now_subject).await {
        Ok(s) => Some(s),
        Err(e) => {
            warn!(agent = %config.agent_id, error = %e, "cannot subscribe to heartbeat requests");
            None
        }
    };
    loop {
        let ask = async {
            match asks.as_mut() {
                Some(s) => s.next().await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            _ = tick.tick() => {}
            Some(_) = ask => {}
            _ = stop.wait_for(|s| *s) => return,
        }
        let sample = sampling.next().await;
        metrics.set_sample(sample);
        let running = registry.running().iter().map(|k| k.to_ref()).collect();
        let body = Bytes::from(compose(&config, sample, running, host::now_ms()).encode_to_vec());
        let (subject, ack) = (config.subject.clone(), config.ack_subject.clone());
        if let Err(e) = client.publish_with_reply(subject, ack, body).await {
            warn!(agent = %config.agent_id, error = %e, "sending heartbeat failed");
        }
    }
}

/// One line with what this agent offers.
fn log_capacity(config: &HeartbeatConfig, first: &Sample) {
    let cap = &config.capacity;
    info!(
        agent = %config.agent_id,
        instance = %config.instance,
        cpus = %format_cpus(cap.cpu_millis),
        memory = %format_bytes(cap.memory_bytes),
        gpus = first.gpus.gpus.len(),
        labels = %labels_text(&cap.labels),
        "advertising capacity"
    );
}

fn labels_text(labels: &BTreeMap<String, String>) -> String {
    labels
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(",")
}

#[cfg(test)]
mod tests {
    type TestResult = Result<(), Box<dyn std::error::Error>>;
    use super::*;
    use crate::core::gpu::{simulated_gpus, GpuSource};

    fn config() -> HeartbeatConfig {
        let capacity = CapacityConfig {
            cpu_millis: 1_500,
            memory_bytes: 1 << 30,
            labels: BTreeMap::from([("zone".to_owned(), "a".to_owned())]),
            gpus: GpuSource::Nvml,
        };
        HeartbeatConfig::new(
            "t",
            "a1",
            &[ExecutorKind::Process],
            Duration::from_secs(2),
            &capacity,
        )
    }

    #[test]
    fn compose_carries_capacity_usage_gpus_and_identity() -> TestResult {
        let cfg = config();
        let sample = Sample {
            usage: Usage {
                cpu_usage_percent: 12.5,
                memory_used_bytes: 123,
            },
            gpus: GpuSnapshot {
                gpus: simulated_gpus("a1", 2, "Sim", 1 << 30),
                driver_version: "550.54.15".into(),
                cuda_version: "12.4".into(),
            },
        };
        let running = vec![AttemptRef {
            run_id: "r".into(),
            task: "t".into(),
            attempt: 1,
        }];
        let hb = compose(&cfg, &sample, running.clone(), 42);
        assert_eq!(hb.agent_id, "a1");
        assert_eq!(hb.executors, vec!["process".to_owned()]);
        assert_eq!((hb.cpu_millis, hb.memory_bytes), (1_500, 1 << 30));
        assert_eq!(hb.labels.get("zone").map(String::as_str), Some("a"));
        assert_eq!(hb.running, running);
        assert_eq!(hb.sent_at_ms, 42);
        assert_eq!(hb.gpus, sample.gpus.gpus);
        assert_eq!(
            (hb.driver_version.as_str(), hb.cuda_version.as_str()),
            ("550.54.15", "12.4")
        );
        assert_eq!(hb.cpu_usage_percent, 12.5);
        assert_eq!(hb.memory_used_bytes, 123);
        assert_eq!(hb.instance, cfg.instance);
        assert_eq!(hb.hostname, host::hostname()?);
        Ok(())
    }

    #[test]
    fn every_start_has_its_own_instance() {
        let (a, b) = (config(), config());
        assert_eq!(a.instance.len(), 32);
        assert_ne!(a.instance, b.instance);
        assert_eq!(labels_text(&a.capacity.labels), "zone=a");
    }
}
