//! Prometheus metrics of the scheduler and an agent, scraped over HTTP from
//! the real binaries (etcd, NATS, scheduler process, agent with simulated
//! GPUs) while a run goes through, and parsed as exposition text.

mod common;

use std::collections::{BTreeSet, HashMap};
use std::time::{Duration, Instant};

use common::{http_get, Cluster};
use drover_api::pb::RunState;
use drover_devcluster::free_port;
use prometheus_parse::{Scrape, Value};

const SPEC: &str = r#"
name: metrics
tasks:
  - name: prepare
    command: ["sh", "-c", "echo prepared"]
  - name: train
    depends_on: [prepare]
    command: ["sh", "-c", "sleep 2"]
    resources: {gpu: 1}
"#;

/// Checks what the parser is lenient about, then parses: the OpenMetrics
/// content type and `# EOF` terminator, every sample under a family
/// declared by a `# TYPE` line before it (with the suffixes its type
/// allows), and every value a number.
fn parse_strict(content_type: &str, text: &str) -> Scrape {
    assert!(
        content_type.starts_with("application/openmetrics-text; version=1.0.0"),
        "content type `{content_type}`"
    );
    assert!(text.ends_with("# EOF\n"), "no EOF marker:\n{text}");
    let mut families: HashMap<&str, &str> = HashMap::new();
    for line in text.lines() {
        if let Some(decl) = line.strip_prefix("# TYPE ") {
            let (name, kind) = decl.split_once(' ').expect("# TYPE name type");
            assert!(
                families.insert(name, kind).is_none(),
                "family `{name}` declared twice"
            );
            continue;
        }
        if line.starts_with('#') {
            continue;
        }
        let name_end = line.find(['{', ' ']).expect("a sample line");
        let name = &line[..name_end];
        let value = line.rsplit(' ').next().unwrap_or_default();
        assert!(value.parse::<f64>().is_ok(), "`{value}` in `{line}`");
        let declared = families.iter().any(|(family, kind)| {
            let suffixes: &[&str] = match *kind {
                "counter" => &["_total", "_created"],
                "histogram" => &["_bucket", "_sum", "_count", "_created"],
                _ => &[""],
            };
            suffixes
                .iter()
                .any(|s| name.strip_suffix(s) == Some(family) || (s.is_empty() && name == *family))
        });
        assert!(declared, "sample `{line}` belongs to no declared family");
    }
    Scrape::parse(text.lines().map(|l| Ok(l.to_string()))).expect("parsable exposition")
}

/// Every sample name the families declared in `text` may have (`# TYPE`
/// lines plus the suffixes of their type), whether or not a series exists yet.
fn declared_names(text: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    for decl in text.lines().filter_map(|l| l.strip_prefix("# TYPE ")) {
        let Some((name, kind)) = decl.split_once(' ') else {
            continue;
        };
        let suffixes: &[&str] = match kind {
            "counter" => &["_total"],
            "histogram" => &["_bucket", "_sum", "_count"],
            _ => &[""],
        };
        names.extend(suffixes.iter().map(|s| format!("{name}{s}")));
    }
    names
}

/// The value of the one sample of `metric` whose labels include `labels`.
fn value(scrape: &Scrape, metric: &str, labels: &[(&str, &str)]) -> Option<f64> {
    let mut found = scrape
        .samples
        .iter()
        .filter(|s| s.metric == metric && labels.iter().all(|(k, v)| s.labels.get(k) == Some(*v)));
    let sample = found.next()?;
    assert!(
        found.next().is_none(),
        "{metric} {labels:?} matches several series"
    );
    match sample.value {
        Value::Counter(v) | Value::Gauge(v) | Value::Untyped(v) => Some(v),
        _ => panic!("{metric} is not a single value"),
    }
}

/// Scrapes `url` until `ready` holds for what it serves.
async fn wait_scrape(url: &str, what: &str, ready: impl Fn(&Scrape) -> bool) -> Scrape {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (status, content_type, text) = http_get(url).await.expect("scrape");
        assert_eq!(status, 200, "{url}: {text}");
        let scrape = parse_strict(&content_type, &text);
        if ready(&scrape) {
            return scrape;
        }
        assert!(
            Instant::now() < deadline,
            "timed out waiting for {what} at {url}:\n{text}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

const DEFAULT: [(&str, &str); 1] = [("queue", "default")];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scheduler_and_agent_metrics_follow_a_run() {
    let mut c = Cluster::with_metrics().await;
    let scheduler = c.metrics_url.clone().expect("started with metrics");
    let agent_addr: std::net::SocketAddr = format!("127.0.0.1:{}", free_port().unwrap())
        .parse()
        .unwrap();
    let agent = format!("http://{agent_addr}/metrics");
    c.add_agent_with("gpu-1", |o| {
        o.simulate_gpus = 2;
        o.metrics_listen = Some(agent_addr);
    })
    .await;

    // Before: the agent is known, nothing ran, every state series is there at 0.
    let before = wait_scrape(&scheduler, "the agent to be ready", |s| {
        value(s, "drover_scheduler_agents", &[("state", "ready")]) == Some(1.0)
    })
    .await;
    for state in ["running", "succeeded", "failed", "cancelled"] {
        let v = value(&before, "drover_scheduler_runs", &[("state", state)]);
        assert_eq!(v, Some(0.0), "runs {state}");
    }
    assert_eq!(
        value(&before, "drover_scheduler_queue_pending_tasks", &DEFAULT),
        Some(0.0)
    );
    assert_eq!(
        value(
            &before,
            "drover_scheduler_admission_latency_seconds_count",
            &DEFAULT
        ),
        None,
        "no task admitted yet"
    );
    let gpus = wait_scrape(&agent, "per-GPU series", |s| {
        s.samples
            .iter()
            .filter(|x| x.metric == "drover_agent_gpu_memory_total_bytes")
            .count()
            == 2
    })
    .await;
    for sample in gpus
        .samples
        .iter()
        .filter(|x| x.metric.starts_with("drover_agent_gpu_"))
    {
        let labels = &sample.labels;
        assert_eq!(labels.get("agent"), Some("gpu-1"), "{sample:?}");
        assert_eq!(labels.get("simulated"), Some("true"), "{sample:?}");
        assert_eq!(labels.get("model"), Some("Simulated GPU"), "{sample:?}");
        assert!(matches!(labels.get("gpu"), Some("0" | "1")), "{sample:?}");
        assert!(
            labels
                .get("uuid")
                .is_some_and(|u| u.starts_with("GPU-SIMULATED-")),
            "{sample:?}"
        );
    }
    for gpu in ["0", "1"] {
        let total = value(
            &gpus,
            "drover_agent_gpu_memory_total_bytes",
            &[("gpu", gpu)],
        );
        assert_eq!(total, Some((80u64 << 30) as f64), "GPU {gpu}");
        let util = value(&gpus, "drover_agent_gpu_utilization_ratio", &[("gpu", gpu)]);
        assert_eq!(util, Some(0.0), "GPU {gpu}");
    }
    let process = [("executor", "process")];
    assert_eq!(
        value(&gpus, "drover_agent_task_starts_total", &process),
        Some(0.0)
    );

    // While `train` holds its GPU, the queue and the agent show it.
    let id = c.submit(SPEC).await.unwrap();
    let busy = wait_scrape(&scheduler, "train to hold a GPU", |s| {
        value(s, "drover_scheduler_queue_used_gpus", &DEFAULT) == Some(1.0)
    })
    .await;
    assert_eq!(
        value(&busy, "drover_scheduler_queue_running_tasks", &DEFAULT),
        Some(1.0)
    );
    assert_eq!(
        value(&busy, "drover_scheduler_runs", &[("state", "running")]),
        Some(1.0)
    );
    assert_eq!(
        value(&busy, "drover_scheduler_tasks", &[("state", "succeeded")]),
        Some(1.0),
        "prepare is done"
    );
    wait_scrape(&agent, "the agent to run one task", |s| {
        value(s, "drover_agent_running_tasks", &[]) == Some(1.0)
    })
    .await;

    let run = c.wait_done(&id, Duration::from_secs(60)).await;
    assert_eq!(run.state(), RunState::Succeeded, "{run:#?}");

    // After: counted as succeeded, nothing held, both tasks measured.
    let after = wait_scrape(&scheduler, "the run to count as succeeded", |s| {
        value(s, "drover_scheduler_runs", &[("state", "succeeded")]) == Some(1.0)
    })
    .await;
    assert_eq!(
        value(&after, "drover_scheduler_runs", &[("state", "running")]),
        Some(0.0)
    );
    for m in [
        "drover_scheduler_queue_running_tasks",
        "drover_scheduler_queue_pending_tasks",
        "drover_scheduler_queue_used_gpus",
        "drover_scheduler_queue_used_cpu_cores",
    ] {
        assert_eq!(value(&after, m, &DEFAULT), Some(0.0), "{m}");
    }
    assert_eq!(
        value(
            &after,
            "drover_scheduler_admission_latency_seconds_count",
            &DEFAULT
        ),
        Some(2.0)
    );
    assert_eq!(
        value(
            &after,
            "drover_scheduler_assign_to_start_latency_seconds_count",
            &DEFAULT
        ),
        Some(2.0)
    );
    assert_eq!(
        value(
            &after,
            "drover_scheduler_etcd_errors_total",
            &[("op", "commit")]
        ),
        Some(0.0)
    );
    let finished = wait_scrape(&agent, "two successful finishes", |s| {
        value(
            s,
            "drover_agent_task_finishes_total",
            &[("executor", "process"), ("outcome", "succeeded")],
        ) == Some(2.0)
    })
    .await;
    assert_eq!(
        value(&finished, "drover_agent_task_starts_total", &process),
        Some(2.0)
    );
    assert_eq!(
        value(&finished, "drover_agent_running_tasks", &[]),
        Some(0.0)
    );
    assert_eq!(
        value(&finished, "drover_agent_executor_errors_total", &process),
        Some(0.0)
    );

    // The Grafana dashboard asks only for what the two endpoints serve.
    let mut served = declared_names(&http_get(&scheduler).await.unwrap().2);
    served.extend(declared_names(&http_get(&agent).await.unwrap().2));
    let dashboard = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../ops/grafana/drover-dashboard.json"
    ))
    .unwrap();
    let used: BTreeSet<&str> = dashboard
        .match_indices("drover_")
        .map(|(i, _)| {
            let rest = &dashboard[i..];
            let end = rest
                .find(|c: char| !(c.is_ascii_lowercase() || c == '_'))
                .unwrap_or(rest.len());
            &rest[..end]
        })
        .filter(|name| name.starts_with("drover_scheduler_") || name.starts_with("drover_agent_"))
        .collect();
    assert!(used.len() > 20, "the dashboard reads {used:?}");
    let unknown: Vec<&&str> = used.iter().filter(|n| !served.contains(**n)).collect();
    assert!(
        unknown.is_empty(),
        "dashboard metrics not served: {unknown:?}"
    );

    // A restarted scheduler counts the finished run again from etcd.
    c.kill_scheduler().await;
    c.start_scheduler().await;
    let restarted = wait_scrape(&scheduler, "finished runs counted after a restart", |s| {
        value(s, "drover_scheduler_runs", &[("state", "succeeded")]) == Some(1.0)
    })
    .await;
    assert_eq!(
        value(
            &restarted,
            "drover_scheduler_admission_latency_seconds_count",
            &DEFAULT
        ),
        None,
        "histograms start again from zero"
    );
}

/// Item: events are checked, not trusted. An event for an attempt held by
/// `a1`, published on `a2`'s subject (as a2 could, with its own identity),
/// is dropped and counted; so is one on a2's subject naming a1, and a
/// heartbeat on a2's subject naming a1. The task stays running on a1.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_event_from_an_agent_not_holding_the_attempt_is_dropped_and_counted() {
    use drover_api::{naming, pb};
    use prost::Message as _;

    let mut c = Cluster::with_metrics().await;
    let scheduler = c.metrics_url.clone().expect("started with metrics");
    c.add_agent("a1").await;
    let run = c
        .submit("name: held\ntasks:\n  - name: t\n    command: [\"sleep\", \"30\"]\n")
        .await
        .unwrap();
    c.wait_for(&run, "t running on a1", |r| {
        r.tasks
            .iter()
            .any(|t| t.state() == pb::TaskState::Running && t.attempts[0].agent_id == "a1")
    })
    .await;
    let js = async_nats::jetstream::new(async_nats::connect(&c.nats.url).await.unwrap());
    let forged = |agent: &str, kind: &str| {
        let event = pb::AttemptEvent {
            attempt: Some(pb::AttemptRef {
                run_id: run.clone(),
                task: "t".into(),
                attempt: 1,
            }),
            agent_id: agent.into(),
            at_ms: 1,
            kind: Some(pb::attempt_event::Kind::Succeeded(Default::default())),
            started_at_ms: 0,
        };
        let headers = async_nats::HeaderMap::from_iter([(
            "Nats-Msg-Id".parse().unwrap(),
            format!("forged/{kind}").parse().unwrap(),
        )]);
        (headers, bytes::Bytes::from(event.encode_to_vec()))
    };
    let subject = naming::events_subject(&c.nats_prefix, "a2");
    for (agent, kind) in [("a2", "not_assigned"), ("a1", "agent_mismatch")] {
        let (headers, body) = forged(agent, kind);
        js.publish_with_headers(subject.clone(), headers, body)
            .await
            .unwrap()
            .await
            .unwrap();
    }
    // A heartbeat naming a1 (a restarted a1 running nothing, which would
    // lose its attempt) on a2's subject.
    let forged_heartbeat = pb::Heartbeat {
        agent_id: "a1".into(),
        instance: "forged".into(),
        cpu_millis: 1000,
        ..Default::default()
    };
    js.publish(
        naming::heartbeat_subject(&c.nats_prefix, "a2"),
        forged_heartbeat.encode_to_vec().into(),
    )
    .await
    .unwrap();
    let rejected = |s: &Scrape, reason| {
        value(
            s,
            "drover_scheduler_events_rejected_total",
            &[("reason", reason)],
        )
    };
    wait_scrape(&scheduler, "the forged events and heartbeat counted", |s| {
        rejected(s, "not_assigned") == Some(1.0)
            && rejected(s, "agent_mismatch") == Some(1.0)
            && rejected(s, "heartbeat_mismatch") == Some(1.0)
    })
    .await;
    let r = c.get(&run).await;
    assert_eq!(r.state(), RunState::Running, "{r:#?}");
    assert_eq!(r.tasks[0].state(), pb::TaskState::Running, "{r:#?}");
    assert!(
        c.scheduler_log()
            .contains("the attempt is not assigned to the agent that sent it"),
        "{}",
        c.scheduler_log()
    );
}
