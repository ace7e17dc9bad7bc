//! Triggers on real etcd, NATS and agents: per-second schedules across a
//! scheduler kill -9 (every catch-up mode), `--concurrency forbid`, a data
//! trigger on a directory, Alertmanager's webhook, manual firing, and bad
//! triggers refused naming the field.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::time::{Duration, Instant};

use common::Cluster;
use drover_api::pb;
use drover_api::pb::trigger_settings::Source;
use drover_api::pb::triggers_client::TriggersClient;
use tonic::transport::Channel;

const LONG: Duration = Duration::from_secs(60);

async fn triggers(c: &Cluster) -> TriggersClient<Channel> {
    c.triggers().await
}

/// A pipeline `name` whose one task appends `line` (params substituted) to `ledger`.
fn ledger_pipeline(name: &str, params: &str, line: &str, sleep: &str, ledger: &Path) -> String {
    format!(
        "name: {name}\nparams: {{{params}}}\ntasks:\n  - name: t\n    resources: {{cpu: 50m}}\n    command: [\"sh\", \"-c\", \"sleep {sleep}; echo '{line}' >> {}\"]\n",
        ledger.display()
    )
}

fn settings(name: &str, spec_yaml: String, source: Source) -> pb::TriggerSettings {
    pb::TriggerSettings {
        name: name.into(),
        spec_yaml,
        source: Some(source),
        ..Default::default()
    }
}

fn every_second(catch_up: pb::CatchUp) -> Source {
    Source::Cron(pb::CronSource {
        expression: "* * * * * *".into(),
        timezone: String::new(),
        catch_up: catch_up as i32,
    })
}

async fn runs_of(c: &Cluster, name: &str) -> Vec<pb::Run> {
    c.runs_named(name).await
}

/// Waits until every run of `name` has ended; returns them.
async fn settled(c: &Cluster, name: &str) -> Vec<pb::Run> {
    let deadline = Instant::now() + LONG;
    loop {
        let runs = runs_of(c, name).await;
        if runs
            .iter()
            .all(|r| !matches!(r.state(), pb::RunState::Running | pb::RunState::Cancelling))
        {
            return runs;
        }
        assert!(Instant::now() < deadline, "runs of {name} did not end");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

fn seconds(rfc3339: &str) -> i64 {
    chrono::DateTime::parse_from_rfc3339(rfc3339)
        .unwrap_or_else(|e| panic!("{rfc3339}: {e}"))
        .timestamp()
}

/// The scheduled second of each run of `name`; asserts none is there twice
/// and each ran once (its line in `ledger` once).
async fn fired_seconds(c: &Cluster, name: &str, ledger: &Path) -> Vec<(i64, pb::Run)> {
    let runs = settled(c, name).await;
    let mut fired: Vec<(i64, pb::Run)> = runs
        .into_iter()
        .map(|r| (seconds(&r.params["scheduled_time"]), r))
        .collect();
    fired.sort_by_key(|(s, _)| *s);
    let mut set = BTreeSet::new();
    for (s, r) in &fired {
        assert!(set.insert(*s), "{name}: second {s} fired twice");
        assert_eq!(r.state(), pb::RunState::Succeeded, "{name}: {r:?}");
    }
    let text = std::fs::read_to_string(ledger).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    let unique: BTreeSet<&str> = lines.iter().copied().collect();
    assert_eq!(lines.len(), unique.len(), "{name}: a run ran twice: {text}");
    assert_eq!(lines.len(), fired.len(), "{name}: {text}");
    fired
}

/// Seconds between the first and last fired that did not fire.
fn gaps(fired: &[(i64, pb::Run)]) -> Vec<i64> {
    let set: BTreeSet<i64> = fired.iter().map(|(s, _)| *s).collect();
    match (set.first(), set.last()) {
        (Some(&a), Some(&b)) => (a..=b).filter(|s| !set.contains(s)).collect(),
        _ => Vec::new(),
    }
}

async fn leader_since_ms(c: &Cluster) -> u64 {
    let channel = Channel::from_shared(c.server.clone())
        .unwrap()
        .connect()
        .await
        .unwrap();
    let status = pb::cluster_client::ClusterClient::new(channel)
        .get_cluster_status(pb::GetClusterStatusRequest {})
        .await
        .unwrap()
        .into_inner();
    status
        .schedulers
        .iter()
        .map(|s| s.leader_since_ms)
        .max()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn per_second_schedules_fire_once_per_second_across_a_kill_9_in_every_catch_up_mode() {
    let mut c = Cluster::start().await;
    let modes = [
        ("tick-none", pb::CatchUp::None),
        ("tick-last", pb::CatchUp::Last),
        ("tick-all", pb::CatchUp::All),
    ];
    let mut t = triggers(&c).await;
    for (name, mode) in modes {
        let ledger = c.scratch.join(name);
        let yaml = ledger_pipeline(
            name,
            "scheduled_time: \"\"",
            "{{params.scheduled_time}}",
            "0",
            &ledger,
        );
        t.create_trigger(settings(name, yaml, every_second(mode)))
            .await
            .unwrap();
    }
    tokio::time::sleep(Duration::from_secs(3)).await;
    c.kill_scheduler().await;
    tokio::time::sleep(Duration::from_secs(4)).await;
    c.start_scheduler().await;
    let back = leader_since_ms(&c).await as i64;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let mut t = triggers(&c).await;
    for (name, _) in modes {
        t.pause_trigger(pb::TriggerRef { name: name.into() })
            .await
            .unwrap();
    }
    // Caught up: scheduled before the scheduler came back, run after.
    let caught_up = |fired: &[(i64, pb::Run)]| {
        fired
            .iter()
            .filter(|(s, r)| s * 1000 < back && r.created_at_ms as i64 >= back)
            .count()
    };
    let all = fired_seconds(&c, "tick-all", &c.scratch.join("tick-all")).await;
    assert!(gaps(&all).is_empty(), "tick-all lost {:?}", gaps(&all));
    assert!(
        caught_up(&all) >= 3,
        "tick-all caught up {}",
        caught_up(&all)
    );
    assert!(all.len() >= 9, "tick-all fired {}", all.len());
    assert!(
        all.last().unwrap().0 * 1000 >= back,
        "fired after the restart too"
    );

    let none = fired_seconds(&c, "tick-none", &c.scratch.join("tick-none")).await;
    assert_eq!(caught_up(&none), 0);
    assert!(gaps(&none).len() >= 3, "tick-none: {:?}", gaps(&none));
    let last = fired_seconds(&c, "tick-last", &c.scratch.join("tick-last")).await;
    assert_eq!(caught_up(&last), 1);
    assert!(gaps(&last).len() >= 2, "tick-last: {:?}", gaps(&last));

    // The trigger records what it missed.
    let shown = t
        .get_trigger(pb::TriggerRef {
            name: "tick-none".into(),
        })
        .await
        .unwrap()
        .into_inner();
    let record = shown.trigger.unwrap();
    let missed: Vec<_> = record
        .firings
        .iter()
        .filter(|f| f.outcome() == pb::FiringOutcome::Missed)
        .collect();
    assert_eq!(missed.len(), 1, "{:?}", record.firings);
    assert!(record.paused);
    assert_eq!(shown.next_due_ms, 0, "paused: no next firing");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forbid_skips_firings_while_the_previous_run_runs() {
    let c = Cluster::start().await;
    let ledger = c.scratch.join("slow");
    let yaml = ledger_pipeline(
        "slow",
        "scheduled_time: \"\"",
        "{{params.scheduled_time}}",
        "2.5",
        &ledger,
    );
    let mut t = triggers(&c).await;
    let mut s = settings("slow", yaml, every_second(pb::CatchUp::Last));
    s.concurrency = pb::Concurrency::Forbid as i32;
    t.create_trigger(s).await.unwrap();
    tokio::time::sleep(Duration::from_secs(7)).await;
    t.pause_trigger(pb::TriggerRef {
        name: "slow".into(),
    })
    .await
    .unwrap();
    let fired = fired_seconds(&c, "slow", &ledger).await;
    assert!((2..=4).contains(&fired.len()), "{} runs", fired.len());
    let mut spans: Vec<(u64, u64)> = fired
        .iter()
        .map(|(_, r)| (r.created_at_ms, r.finished_at_ms))
        .collect();
    spans.sort();
    for w in spans.windows(2) {
        assert!(w[1].0 >= w[0].1, "runs overlap: {spans:?}");
    }
    let record = t
        .get_trigger(pb::TriggerRef {
            name: "slow".into(),
        })
        .await
        .unwrap()
        .into_inner()
        .trigger
        .unwrap();
    let skipped = record
        .firings
        .iter()
        .filter(|f| f.outcome() == pb::FiringOutcome::Skipped)
        .count();
    assert!(skipped >= 3, "{:?}", record.firings);
}

fn objects_of(run: &pb::Run) -> Vec<String> {
    let list: Vec<serde_json::Value> = serde_json::from_str(&run.params["objects"]).unwrap();
    list.iter()
        .map(|o| o["key"].as_str().unwrap().to_string())
        .collect()
}

async fn wait_runs(c: &Cluster, name: &str, n: usize) -> Vec<pb::Run> {
    c.wait_runs_named(name, n, LONG).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_data_trigger_fires_once_per_batch_and_not_again_after_a_restart() {
    let mut c = Cluster::start().await;
    let incoming = c.scratch.join("incoming");
    std::fs::create_dir_all(incoming.join("day1")).unwrap();
    std::fs::write(incoming.join("old.parquet"), "there before").unwrap();
    let ledger = c.scratch.join("ingest");
    // The list reaches the task as a file, as a long one must.
    let yaml = format!(
        "name: ingest\nparams: {{objects: \"[]\"}}\ntasks:\n  - name: t\n    resources: {{cpu: 50m}}\n    inputs: [{{name: objects.json, param: objects}}]\n    command: [\"sh\", \"-c\", \"cat $DROVER_INPUTS/objects.json >> {0}; echo >> {0}\"]\n",
        ledger.display()
    );
    let mut t = triggers(&c).await;
    let source = Source::Objects(pb::ObjectsSource {
        url: format!("file://{}", incoming.display()),
        glob: "*.parquet".into(),
        batch_window_ms: 1_000,
        max_per_run: 0,
        poll_interval_ms: 200,
    });
    let created = t
        .create_trigger(settings("ingest", yaml, source))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(created.trigger.unwrap().objects_seen, 1);

    for name in ["a.parquet", "b.parquet", "day1/c.parquet", "notes.txt"] {
        std::fs::write(incoming.join(name), name).unwrap();
    }
    let runs = wait_runs(&c, "ingest", 1).await;
    assert_eq!(
        objects_of(&runs[0]),
        ["a.parquet", "b.parquet", "day1/c.parquet"]
    );
    // Each with the sha256 of its content (the content is its name).
    let listed: Vec<serde_json::Value> = serde_json::from_str(&runs[0].params["objects"]).unwrap();
    for o in &listed {
        use sha2::{Digest, Sha256};
        let key = o["key"].as_str().unwrap();
        assert_eq!(
            o["sha256"],
            format!("{:x}", Sha256::digest(key.as_bytes())),
            "{o}"
        );
        assert_eq!(o["size"], key.len(), "{o}");
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(runs_of(&c, "ingest").await.len(), 1, "fired again");

    c.kill_scheduler().await;
    c.start_scheduler().await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(
        runs_of(&c, "ingest").await.len(),
        1,
        "fired again after a restart"
    );

    std::fs::write(incoming.join("d.parquet"), "fourth").unwrap();
    let runs = wait_runs(&c, "ingest", 2).await;
    let mut batches: Vec<Vec<String>> = runs.iter().map(objects_of).collect();
    batches.sort_by_key(Vec::len);
    assert_eq!(batches[0], ["d.parquet"]);
    let runs = settled(&c, "ingest").await;
    assert!(runs.iter().all(|r| r.state() == pb::RunState::Succeeded));
    let mut given: Vec<&str> = runs.iter().map(|r| r.params["objects"].as_str()).collect();
    given.sort_unstable();
    let written = std::fs::read_to_string(&ledger).unwrap();
    let mut read: Vec<&str> = written.lines().collect();
    read.sort_unstable();
    assert_eq!(
        read, given,
        "each run's task read its object list from its input file"
    );
    let shown = t
        .get_trigger(pb::TriggerRef {
            name: "ingest".into(),
        })
        .await
        .unwrap()
        .into_inner()
        .trigger
        .unwrap();
    assert_eq!(shown.objects_seen, 5);
    assert_eq!(shown.firings.len(), 2);
}

/// POSTs `body` to `path` on the scheduler's API port (HTTP/1.1).
async fn post(c: &Cluster, path: &str, body: &str) -> (u16, String) {
    let url = format!("{}{path}", c.server);
    let json = [("Content-Type", "application/json")];
    let (status, _, body) = common::http_request("POST", &url, &json, body)
        .await
        .unwrap();
    (status, body)
}

/// An Alertmanager notification (webhook payload version 4).
fn notification(group: &str, status: &str) -> String {
    serde_json::json!({
        "version": "4",
        "groupKey": format!("{{}}:{{alertname=\"{group}\"}}"),
        "truncatedAlerts": 0,
        "status": status,
        "receiver": "drover",
        "groupLabels": {"alertname": group},
        "commonLabels": {"alertname": group, "model": "churn", "severity": "warning"},
        "commonAnnotations": {"summary": "feature drift over 0.3"},
        "externalURL": "http://alertmanager:9093",
        "alerts": [{
            "status": status,
            "labels": {"alertname": group, "model": "churn"},
            "annotations": {"summary": "feature drift over 0.3"},
            "startsAt": "2026-12-07T10:00:00Z",
            "endsAt": "0001-01-01T00:00:00Z",
            "generatorURL": "http://prometheus:9090/graph",
            "fingerprint": "c0ffee"
        }]
    })
    .to_string()
}

/// A cluster with the alert trigger `retrain`, whose runs record their
/// `alert_labels`.
async fn retrain_on_alerts() -> Cluster {
    let c = Cluster::start().await;
    let yaml = ledger_pipeline(
        "retrain",
        "alert_labels: \"{}\"",
        "{{params.alert_labels}}",
        "0",
        &c.scratch.join("retrain"),
    );
    c.triggers()
        .await
        .create_trigger(settings("retrain", yaml, Source::Alert(pb::AlertSource {})))
        .await
        .unwrap();
    c
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn alertmanager_notifications_start_one_run_per_group_firing() {
    let c = retrain_on_alerts().await;
    let hook = "/hooks/alertmanager/retrain";

    let (status, body) = post(&c, hook, &notification("Drift", "firing")).await;
    assert_eq!(status, 200, "{body}");
    assert!(body.starts_with("run "), "{body}");
    let runs = wait_runs(&c, "retrain", 1).await;
    let labels: BTreeMap<String, String> =
        serde_json::from_str(&runs[0].params["alert_labels"]).unwrap();
    assert_eq!(labels["model"], "churn");

    // Repeats and resolutions start nothing; firing again after resolving does.
    for (group, status, runs) in [
        ("Drift", "firing", 1),
        ("Drift", "resolved", 1),
        ("Drift", "resolved", 1),
        ("Drift", "firing", 2),
        ("Drift", "firing", 2),
        ("LatencySLO", "firing", 3),
    ] {
        let (code, body) = post(&c, hook, &notification(group, status)).await;
        assert_eq!(code, 200, "{body}");
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert_eq!(
            runs_of(&c, "retrain").await.len(),
            runs,
            "{group} {status}: {body}"
        );
    }
    let (code, _) = post(
        &c,
        "/hooks/alertmanager/nope",
        &notification("Drift", "firing"),
    )
    .await;
    assert_eq!(code, 404);
    let (code, body) = post(&c, hook, "{\"not\": \"alertmanager\"}").await;
    assert_eq!(code, 400, "{body}");
    let runs = settled(&c, "retrain").await;
    assert!(runs.iter().all(|r| r.state() == pb::RunState::Succeeded));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fire_starts_a_run_with_its_params_and_bad_triggers_are_refused_naming_the_field() {
    let c = Cluster::start().await;
    let ledger = c.scratch.join("ci");
    let yaml = ledger_pipeline("ci", "commit: none", "{{params.commit}}", "0", &ledger);
    let mut t = triggers(&c).await;
    let daily = || {
        Source::Cron(pb::CronSource {
            expression: "0 3 * * *".into(),
            timezone: "Europe/Paris".into(),
            catch_up: 0,
        })
    };
    let created = t
        .create_trigger(settings("ci", yaml.clone(), daily()))
        .await
        .unwrap()
        .into_inner();
    assert!(created.next_due_ms > 0);

    let fired = t
        .fire_trigger(pb::FireTriggerRequest {
            name: "ci".into(),
            params: [("commit".to_string(), "abc123".to_string())].into(),
        })
        .await
        .unwrap()
        .into_inner()
        .firing
        .unwrap();
    assert_eq!(fired.outcome(), pb::FiringOutcome::Started);
    let done = c.wait_done(&fired.run_id, LONG).await;
    assert_eq!(done.state(), pb::RunState::Succeeded);
    assert_eq!(std::fs::read_to_string(&ledger).unwrap(), "abc123\n");

    let refused = |r: Result<tonic::Response<pb::FireTriggerResponse>, tonic::Status>| {
        r.expect_err("refused")
    };
    let e = refused(
        t.fire_trigger(pb::FireTriggerRequest {
            name: "ci".into(),
            params: [("branch".to_string(), "main".to_string())].into(),
        })
        .await,
    );
    assert_eq!(e.code(), tonic::Code::InvalidArgument, "{e:?}");
    assert!(e.message().contains("branch"), "{e:?}");
    let e = refused(
        t.fire_trigger(pb::FireTriggerRequest {
            name: "nope".into(),
            params: Default::default(),
        })
        .await,
    );
    assert_eq!(e.code(), tonic::Code::NotFound, "{e:?}");

    let keys_before = c.etcd_keys().await;
    let cron = |expression: &str, timezone: &str| {
        Source::Cron(pb::CronSource {
            expression: expression.into(),
            timezone: timezone.into(),
            catch_up: 0,
        })
    };
    let objects = |url: &str| {
        Source::Objects(pb::ObjectsSource {
            url: url.into(),
            ..Default::default()
        })
    };
    let bad = [
        (
            settings("b", yaml.clone(), cron("0 25 * * *", "")),
            tonic::Code::InvalidArgument,
            "0 25 * * *",
        ),
        (
            settings("b", yaml.clone(), cron("0 3 * *", "")),
            tonic::Code::InvalidArgument,
            "cron",
        ),
        (
            settings("b", yaml.clone(), cron("0 3 * * *", "Mars/Olympus")),
            tonic::Code::InvalidArgument,
            "Mars/Olympus",
        ),
        (
            settings("b", yaml.clone(), objects("ftp://host/data/")),
            tonic::Code::InvalidArgument,
            "ftp://host/data/",
        ),
        (
            settings("b", yaml.clone(), objects("gs://bucket/data/")),
            tonic::Code::InvalidArgument,
            "on_new_objects",
        ),
        (
            settings("b", yaml.replace("resources:", "resourcez:"), daily()),
            tonic::Code::InvalidArgument,
            "resourcez",
        ),
        (
            settings("Bad_Name", yaml.clone(), daily()),
            tonic::Code::InvalidArgument,
            "Bad_Name",
        ),
        (
            pb::TriggerSettings {
                source: None,
                ..settings("b", yaml.clone(), daily())
            },
            tonic::Code::InvalidArgument,
            "source",
        ),
        (
            pb::TriggerSettings {
                params: [("lr".to_string(), "1".to_string())].into(),
                ..settings("b", yaml.clone(), daily())
            },
            tonic::Code::InvalidArgument,
            "lr",
        ),
        (
            pb::TriggerSettings {
                queue: "missing".into(),
                ..settings("b", yaml.clone(), daily())
            },
            tonic::Code::NotFound,
            "missing",
        ),
        (
            settings("ci", yaml.clone(), daily()),
            tonic::Code::AlreadyExists,
            "ci",
        ),
    ];
    for (s, code, named) in bad {
        let e = t.create_trigger(s).await.expect_err(named);
        assert_eq!(e.code(), code, "{named}: {e:?}");
        assert!(e.message().contains(named), "{named}: {}", e.message());
    }
    let mut objects_bad = pb::ObjectsSource {
        url: format!("file://{}/", c.scratch.display()),
        max_per_run: 500,
        ..Default::default()
    };
    let e = t
        .create_trigger(settings(
            "b",
            yaml.clone(),
            Source::Objects(objects_bad.clone()),
        ))
        .await
        .unwrap_err();
    assert!(
        e.message().contains("max_per_run") && e.message().contains("500"),
        "{e:?}"
    );
    objects_bad.max_per_run = 1;
    objects_bad.glob = "[".into();
    let e = t
        .create_trigger(settings("b", yaml, Source::Objects(objects_bad)))
        .await
        .unwrap_err();
    assert!(e.message().contains("glob"), "{e:?}");
    assert_eq!(
        c.etcd_keys().await,
        keys_before,
        "a refused trigger wrote something"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_tokens_on_the_webhook_takes_a_submitter_token_and_refuses_others_over_http() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("admin.token");
    let path = file.display().to_string();
    let c =
        Cluster::with_scheduler_args(&["--auth", "tokens", "--bootstrap-token-file", &path]).await;
    let deadline = Instant::now() + LONG;
    let admin = loop {
        match std::fs::read_to_string(&file) {
            Ok(t) if !t.trim().is_empty() => break t.trim().to_string(),
            _ => {}
        }
        assert!(Instant::now() < deadline, "no admin token");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let channel = Channel::from_shared(c.server.clone())
        .unwrap()
        .connect()
        .await
        .unwrap();
    let bearer = |token: String| {
        move |mut req: tonic::Request<()>| {
            let value = format!("Bearer {token}").parse().unwrap();
            req.metadata_mut().insert("authorization", value);
            Ok(req)
        }
    };
    let mut tokens =
        pb::tokens_client::TokensClient::with_interceptor(channel.clone(), bearer(admin.clone()));
    let mut secrets = Vec::new();
    for (name, role) in [
        ("dashboards", pb::Role::Viewer),
        ("alertmanager", pb::Role::Submitter),
    ] {
        let req = pb::CreateTokenRequest {
            name: name.into(),
            role: role as i32,
            ..Default::default()
        };
        secrets.push(tokens.create_token(req).await.unwrap().into_inner().secret);
    }
    let (viewer, submitter) = (secrets[0].clone(), secrets[1].clone());
    let yaml = ledger_pipeline("retrain", "", "ran", "0", &c.scratch.join("ran"));
    TriggersClient::with_interceptor(channel, bearer(admin))
        .create_trigger(settings("retrain", yaml, Source::Alert(pb::AlertSource {})))
        .await
        .unwrap();
    let url = format!("{}/hooks/alertmanager/retrain", c.server);
    let body = notification("Drift", "firing");
    let post_as = |token: Option<String>| {
        let (url, body) = (url.clone(), body.clone());
        async move {
            let auth = token.map(|t| format!("Bearer {t}"));
            let headers: Vec<(&str, &str)> =
                auth.iter().map(|a| ("Authorization", a.as_str())).collect();
            let (status, _, text) = common::http_request("POST", &url, &headers, &body)
                .await
                .unwrap();
            (status, text)
        }
    };
    assert_eq!(post_as(None).await.0, 401);
    assert_eq!(post_as(Some("drv_nonsense".into())).await.0, 401);
    assert_eq!(post_as(Some(viewer)).await.0, 403);
    let (status, text) = post_as(Some(submitter)).await;
    assert_eq!(status, 200, "{text}");
    assert!(text.starts_with("run "), "{text}");
}

/// An alert as Prometheus posts it to Alertmanager; resolved when `ends_at` is given.
fn prometheus_alert(model: &str, ends_at: Option<chrono::DateTime<chrono::Utc>>) -> String {
    let mut alert = serde_json::json!({
        "labels": {"alertname": "FeatureDrift", "model": model, "severity": "warning"},
        "annotations": {"summary": "PSI over 0.25"},
        "generatorURL": "http://prometheus:9090/graph",
    });
    if let Some(t) = ends_at {
        alert["endsAt"] = serde_json::Value::String(t.to_rfc3339());
    }
    serde_json::Value::Array(vec![alert]).to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_real_alertmanager_starts_one_run_per_firing_and_again_after_a_resolution() {
    use drover_devcluster::alertmanager::Alertmanager;
    let c = retrain_on_alerts().await;
    let am = Alertmanager::start(&format!("{}/hooks/alertmanager/retrain", c.server))
        .await
        .unwrap();
    am.post_alerts(&prometheus_alert("churn", None))
        .await
        .unwrap();
    let runs = c.wait_runs_named("retrain", 1, LONG).await;
    let labels: BTreeMap<String, String> =
        serde_json::from_str(&runs[0].params["alert_labels"]).unwrap();
    assert_eq!(labels["model"], "churn", "{labels:?}");
    assert_eq!(labels["alertname"], "FeatureDrift");

    // Prometheus sends a firing alert again every evaluation: no new run.
    for _ in 0..3 {
        am.post_alerts(&prometheus_alert("churn", None))
            .await
            .unwrap();
        tokio::time::sleep(Duration::from_millis(700)).await;
    }
    assert_eq!(c.runs_named("retrain").await.len(), 1, "{}", am.log());
    // Resolved (sent after group_interval, 1s): recorded, no run. Then
    // firing again: a second run.
    let now = chrono::Utc::now();
    am.post_alerts(&prometheus_alert("churn", Some(now)))
        .await
        .unwrap();
    let mut etcd = etcd_client::Client::connect([c.etcd.url.as_str()], None)
        .await
        .unwrap();
    let groups = format!("{}/trigger-alerts/retrain/", c.prefix);
    let deadline = Instant::now() + LONG;
    loop {
        let options = etcd_client::GetOptions::new().with_prefix();
        let got = etcd.get(groups.as_str(), Some(options)).await.unwrap();
        if got.kvs().iter().any(|kv| kv.value() == b"resolved") {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no resolution arrived:\n{}",
            am.log()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(c.runs_named("retrain").await.len(), 1, "{}", am.log());
    am.post_alerts(&prometheus_alert("churn", None))
        .await
        .unwrap();
    c.wait_runs_named("retrain", 2, LONG).await;
    let runs = settled(&c, "retrain").await;
    assert!(runs.iter().all(|r| r.state() == pb::RunState::Succeeded));
}
