//! A run is one trace, across processes and a scheduler restart: a real
//! OTLP/gRPC receiver runs inside the test, the scheduler binary exports to
//! it through `OTEL_EXPORTER_OTLP_ENDPOINT`, and the in-process agent through
//! the same telemetry set-up (configured directly: tests do not change the
//! process environment). This file holds one test: it installs the test
//! process's global tracing subscriber.

mod common;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{task, Cluster};
use drover_api::pb;
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
    TraceService, TraceServiceServer,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::{any_value, KeyValue};
use tokio_stream::wrappers::TcpListenerStream;

/// One received span, ids in hex.
#[derive(Clone, Debug)]
struct Got {
    service: String,
    name: String,
    trace_id: String,
    span_id: String,
    parent_span_id: String,
    attrs: HashMap<String, String>,
    events: Vec<String>,
}

#[derive(Clone, Default)]
struct Collector {
    spans: Arc<Mutex<Vec<Got>>>,
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn attrs(kvs: &[KeyValue]) -> HashMap<String, String> {
    kvs.iter()
        .map(|kv| {
            let v = match kv.value.as_ref().and_then(|v| v.value.as_ref()) {
                Some(any_value::Value::StringValue(s)) => s.clone(),
                Some(any_value::Value::IntValue(i)) => i.to_string(),
                Some(any_value::Value::BoolValue(b)) => b.to_string(),
                Some(other) => format!("{other:?}"),
                None => String::new(),
            };
            (kv.key.clone(), v)
        })
        .collect()
}

#[tonic::async_trait]
impl TraceService for Collector {
    async fn export(
        &self,
        req: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        let mut got = Vec::new();
        for rs in req.into_inner().resource_spans {
            let resource = rs
                .resource
                .map(|r| attrs(&r.attributes))
                .unwrap_or_default();
            let service = resource.get("service.name").cloned().unwrap_or_default();
            for ss in rs.scope_spans {
                for s in ss.spans {
                    got.push(Got {
                        service: service.clone(),
                        name: s.name.clone(),
                        trace_id: hex(&s.trace_id),
                        span_id: hex(&s.span_id),
                        parent_span_id: hex(&s.parent_span_id),
                        attrs: attrs(&s.attributes),
                        events: s.events.iter().map(|e| e.name.clone()).collect(),
                    });
                }
            }
        }
        self.spans.lock().unwrap().extend(got);
        Ok(tonic::Response::new(ExportTraceServiceResponse {
            partial_success: None,
        }))
    }
}

impl Collector {
    /// Serves OTLP/gRPC on a free loopback port; returns its URL.
    async fn serve(&self) -> String {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let svc = TraceServiceServer::new(self.clone());
        tokio::spawn(
            tonic::transport::Server::builder()
                .add_service(svc)
                .serve_with_incoming(TcpListenerStream::new(listener)),
        );
        format!("http://{addr}")
    }

    fn spans(&self) -> Vec<Got> {
        self.spans.lock().unwrap().clone()
    }

    /// Waits until `pred` holds for what was received.
    async fn wait_for(&self, what: &str, pred: impl Fn(&[Got]) -> bool) -> Vec<Got> {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let spans = self.spans();
            if pred(&spans) {
                return spans;
            }
            assert!(
                Instant::now() < deadline,
                "timed out waiting for {what}; received:\n{spans:#?}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

fn named<'a>(spans: &'a [Got], name: &str, task: &str) -> Vec<&'a Got> {
    spans
        .iter()
        .filter(|s| {
            s.name == name
                && (s.attrs.get("drover.task").map(String::as_str) == Some(task)
                    || s.attrs.get("task").map(String::as_str) == Some(task))
        })
        .collect()
}

fn one<'a>(spans: &'a [Got], name: &str, task: &str) -> &'a Got {
    let found = named(spans, name, task);
    assert_eq!(
        found.len(),
        1,
        "one `{name}` span of task {task}: {spans:#?}"
    );
    found[0]
}

const PIPELINE: &str = r#"
name: traced
tasks:
  - name: prep
    command: ["sh", "-c", "sleep 2; env > $DROVER_OUTPUTS/env.txt"]
    outputs: [{name: env, path: env.txt}]
  - name: train
    depends_on: [prep]
    command: ["sh", "-c", "env > $DROVER_OUTPUTS/env.txt; cat $DROVER_INPUTS/prep-env > /dev/null"]
    inputs: [{name: prep-env, from: prep/env}]
    outputs: [{name: env, path: env.txt}]
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_is_one_trace_across_processes_and_a_scheduler_restart() {
    let collector = Collector::default();
    let endpoint = collector.serve().await;
    // The agent runs in this process: export its spans like a binary would.
    let telemetry = drover_telemetry::init_with(drover_telemetry::Options {
        default_filter: "warn".into(),
        json_logs: false,
        otlp_endpoint: Some(endpoint.clone()),
        service_name: "drover-agent".into(),
    });
    assert!(telemetry.exporting());

    let mut c = Cluster::with_scheduler(
        &[],
        &[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint.as_str()),
            ("OTEL_SERVICE_NAME", "drover-scheduler"),
            // Export within a tenth of a second rather than 5 s.
            ("OTEL_BSP_SCHEDULE_DELAY", "100"),
        ],
    )
    .await;
    c.add_agent("agent-1").await;

    let run_id = c.submit(PIPELINE).await.unwrap();
    let run = c
        .wait_for(&run_id, "prep running", |r| {
            task(r, "prep").state() == pb::TaskState::Running
        })
        .await;
    let trace_id = run.trace_id.clone();
    let root = run.root_span_id.clone();
    assert_eq!(trace_id.len(), 32, "trace id in GetRun: {run:#?}");
    assert_eq!(root.len(), 16);

    // Crash the scheduler while prep runs (once its own span is out: a crash
    // loses what was not exported yet); its successor finishes the run.
    collector
        .wait_for("the submit span", |s| {
            s.iter().any(|s| s.name == "submit run")
        })
        .await;
    c.kill_scheduler().await;
    c.start_scheduler().await;
    let run = c.wait_done(&run_id, Duration::from_secs(60)).await;
    assert_eq!(run.state(), pb::RunState::Succeeded, "{run:#?}");
    assert_eq!(
        (run.trace_id.as_str(), run.root_span_id.as_str()),
        (trace_id.as_str(), root.as_str()),
        "the restart kept the run's trace"
    );
    // train was ready when prep finished, and waited from then on.
    let prep = &task(&run, "prep").attempts[0];
    let train = &task(&run, "train").attempts[0];
    assert!(train.ready_at_ms >= prep.finished_at_ms && train.ready_at_ms > 0);
    assert!(train.assigned_at_ms >= train.ready_at_ms);

    // The scheduler exports on its own (every 100 ms); the agent's spans are
    // flushed here, as they end (the agent closes its attempt span after
    // the final event, so possibly after the run is done).
    let telemetry = Arc::new(telemetry);
    let flusher = {
        let telemetry = telemetry.clone();
        tokio::spawn(async move {
            loop {
                let t = telemetry.clone();
                let _ = tokio::task::spawn_blocking(move || t.flush()).await;
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        })
    };
    let spans = collector
        .wait_for("every span of the run", |s| {
            let count = |name: &str| s.iter().filter(|s| s.name == name).count();
            s.iter().any(|s| s.span_id == root)
                && ["agent attempt", "execute", "upload outputs"]
                    .iter()
                    .all(|n| count(n) == 2)
                && count("fetch inputs") == 1
                && count("task prep") + count("task train") == 2
        })
        .await;
    flusher.abort();

    // Every span received belongs to the run's trace.
    for s in &spans {
        assert_eq!(s.trace_id, trace_id, "span outside the run's trace: {s:#?}");
    }
    let root_span = spans.iter().find(|s| s.span_id == root).unwrap();
    assert_eq!(root_span.name, "run traced");
    assert_eq!(root_span.service, "drover-scheduler");
    assert_eq!(
        root_span.parent_span_id, "",
        "submitted without a traceparent"
    );
    assert_eq!(
        root_span.attrs.get("drover.run.state").map(String::as_str),
        Some("succeeded")
    );
    let submit = spans.iter().find(|s| s.name == "submit run").unwrap();
    assert_eq!(submit.parent_span_id, root);

    for name in ["prep", "train"] {
        // The scheduler's attempt span (prep's was emitted by the scheduler
        // started after the crash), a child of the root.
        let attempt = one(&spans, &format!("task {name}"), name);
        assert_eq!(attempt.service, "drover-scheduler");
        assert_eq!(attempt.parent_span_id, root);
        assert_eq!(
            attempt.attrs.get("drover.agent").map(String::as_str),
            Some("agent-1")
        );
        assert_eq!(
            attempt.attrs.get("drover.exit_code").map(String::as_str),
            Some("0")
        );
        assert_eq!(attempt.events, vec!["placed", "running"]);

        // The agent's spans hang under it, across the process boundary.
        let agent = one(&spans, "agent attempt", name);
        assert_eq!(agent.service, "drover-agent");
        assert_eq!(agent.parent_span_id, attempt.span_id);
        let children: Vec<&Got> = spans
            .iter()
            .filter(|s| s.parent_span_id == agent.span_id)
            .collect();
        let mut kinds: Vec<&str> = children.iter().map(|s| s.name.as_str()).collect();
        kinds.sort();
        // Only train has inputs to fetch: no empty span for prep.
        let expected = match name {
            "prep" => vec!["execute", "upload outputs"],
            _ => vec!["execute", "fetch inputs", "upload outputs"],
        };
        assert_eq!(kinds, expected);
        let execute = children.iter().find(|s| s.name == "execute").unwrap();

        // The task saw the execute span as its TRACEPARENT.
        let t = task(&run, name);
        let env_key = &t.attempts[0].outputs[0].key;
        let env = std::fs::read_to_string(c.artifact(env_key)).unwrap();
        let traceparent = env
            .lines()
            .find_map(|l| l.strip_prefix("TRACEPARENT="))
            .unwrap_or_else(|| panic!("no TRACEPARENT in the env of {name}:\n{env}"));
        assert_eq!(
            traceparent,
            format!("00-{trace_id}-{}-01", execute.span_id),
            "task {name}"
        );
    }

    // A submit that carries a traceparent (a traced `drover submit`) puts
    // the run in the caller's trace.
    let caller_trace = "4bf92f3577b34da6a3ce929d0e0e4736";
    let mut req = tonic::Request::new(pb::SubmitRunRequest {
        spec_yaml: "name: child\ntasks:\n  - name: t\n    command: [\"true\"]\n".into(),
        ..Default::default()
    });
    req.metadata_mut().insert(
        "traceparent",
        format!("00-{caller_trace}-00f067aa0ba902b7-01")
            .parse()
            .unwrap(),
    );
    let child = c
        .client()
        .await
        .submit_run(req)
        .await
        .unwrap()
        .into_inner()
        .run_id;
    let child = c.wait_done(&child, Duration::from_secs(30)).await;
    assert_eq!(child.trace_id, caller_trace);
    assert_ne!(child.root_span_id, "00f067aa0ba902b7");
}
