//! NATS with one identity per component: a real nats-server configured with
//! the authorization block the enrollment code writes (the function behind
//! `drover nats-config`), over TLS with the dev CA.

mod common;

use std::path::Path;
use std::time::Duration;

use common::{Cluster, DIAMOND};
use drover_api::nats_connect::{self, NatsIdentity};
use drover_api::{naming, nats_auth, pb};
use drover_devcluster::pki::DevPki;
use drover_devcluster::{nats_synced, NatsSettings, Server};
use futures::StreamExt;

type TestResult = Result<(), Box<dyn std::error::Error>>;

/// A seed file for `seed` under `dir`, as `drover agent enroll --out` writes it.
fn seed_file(dir: &Path, name: &str, seed: &str) -> std::path::PathBuf {
    let path = dir.join(format!("{name}.nkey"));
    nats_connect::write_secret(&path, &nats_connect::seed_file(name, seed)).unwrap();
    path
}

async fn connect_as(
    url: &str,
    creds: &Path,
    ca: Option<&Path>,
    inbox_prefix: &str,
) -> Result<(async_nats::Client, nats_connect::ServerErrors), Box<dyn std::error::Error>> {
    let identity = NatsIdentity {
        creds: Some(creds.to_path_buf()),
        ca: ca.map(Path::to_path_buf),
    };
    let (options, errors) = nats_connect::options(&identity, "test", inbox_prefix)?;
    Ok((options.connect(url).await?, errors))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_holding_a1s_identity_cannot_use_a2s_subjects() -> TestResult {
    let prefix = format!("sec{}a", std::process::id());
    let tmp = tempfile::tempdir()?;
    let (sched_seed, sched_key) = nats_connect::new_identity()?;
    let (a1_seed, a1_key) = nats_connect::new_identity()?;
    let (_, a2_key) = nats_connect::new_identity()?;
    let block = nats_auth::authorization_block(
        &prefix,
        &sched_key,
        [("a1", a1_key.as_str()), ("a2", a2_key.as_str())],
    );
    let nats = Server::nats_with(
        None,
        &NatsSettings {
            authorization: Some(block),
            ..NatsSettings::default()
        },
    )
    .await?;
    let sched_file = seed_file(tmp.path(), "scheduler", &sched_seed);
    let a1_file = seed_file(tmp.path(), "a1", &a1_seed);
    let (sched, _) = connect_as(
        &nats.url,
        &sched_file,
        None,
        &nats_auth::scheduler_inbox_prefix(&prefix),
    )
    .await?;
    let (a1, a1_errors) = connect_as(
        &nats.url,
        &a1_file,
        None,
        &nats_auth::agent_inbox_prefix(&prefix, "a1"),
    )
    .await?;
    // Without an identity the server refuses the connection outright.
    assert!(async_nats::connect(&nats.url).await.is_err());

    let mut heartbeats = sched.subscribe(naming::heartbeat_wildcard(&prefix)).await?;
    let js_sched = async_nats::jetstream::new(sched.clone());
    js_sched
        .get_or_create_stream(naming::events_stream_config(&prefix))
        .await?;
    nats_synced(&sched).await?;

    // Its own subjects work: a heartbeat reaches the scheduler, an event is stored.
    a1.publish(naming::heartbeat_subject(&prefix, "a1"), "own".into())
        .await?;
    let got = tokio::time::timeout(Duration::from_secs(5), heartbeats.next())
        .await?
        .ok_or("heartbeats ended")?;
    assert_eq!(
        got.subject.as_str(),
        naming::heartbeat_subject(&prefix, "a1")
    );
    let mut js_a1 = async_nats::jetstream::new(a1.clone());
    js_a1.set_timeout(Duration::from_secs(1));
    js_a1
        .publish(naming::events_subject(&prefix, "a1"), "own".into())
        .await?
        .await?;
    let mut own_assigns = a1
        .subscribe(naming::assign_batch_subject(&prefix, "a1"))
        .await?;
    nats_synced(&a1).await?;
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(a1_errors.take(), Vec::<String>::new());

    // a2's are refused: its heartbeat, its events, its assignments.
    a1.publish(naming::heartbeat_subject(&prefix, "a2"), "forged".into())
        .await?;
    let forged_event = js_a1
        .publish(naming::events_subject(&prefix, "a2"), "forged".into())
        .await?
        .await;
    assert!(forged_event.is_err(), "the stream acked a2's event from a1");
    let mut stolen = a1
        .subscribe(naming::assign_batch_subject(&prefix, "a2"))
        .await?;
    nats_synced(&a1).await?;
    tokio::time::sleep(Duration::from_millis(200)).await;
    let errors = a1_errors.take().join("\n");
    // nats-server logs each refusal too (what the pipeline test relies on).
    assert!(nats.nats_log().contains("Violation"), "{}", nats.nats_log());
    for refused in [
        format!(
            "Publish to \"{}\"",
            naming::heartbeat_subject(&prefix, "a2")
        ),
        format!("Publish to \"{}\"", naming::events_subject(&prefix, "a2")),
        format!(
            "Subscription to \"{}\"",
            naming::assign_batch_subject(&prefix, "a2")
        ),
    ] {
        assert!(
            errors.contains(&refused) && errors.contains("Permissions Violation"),
            "no violation for {refused} in:\n{errors}"
        );
    }
    // Nothing forged got through: no heartbeat for the scheduler, one
    // event in the stream, and an assignment for a2 reaches only a1's own
    // subscription's silence.
    let more = tokio::time::timeout(Duration::from_millis(300), heartbeats.next()).await;
    assert!(more.is_err(), "a forged heartbeat arrived: {more:?}");
    let mut stream = js_sched.get_stream(naming::events_stream(&prefix)).await?;
    assert_eq!(stream.info().await?.state.messages, 1);
    sched
        .publish(naming::assign_batch_subject(&prefix, "a2"), "for a2".into())
        .await?;
    sched
        .publish(naming::assign_batch_subject(&prefix, "a1"), "for a1".into())
        .await?;
    let mine = tokio::time::timeout(Duration::from_secs(5), own_assigns.next())
        .await?
        .ok_or("own assignments ended")?;
    assert_eq!(mine.payload.as_ref(), b"for a1");
    let theirs = tokio::time::timeout(Duration::from_millis(300), stolen.next()).await;
    assert!(
        !matches!(theirs, Ok(Some(_))),
        "a1 read a2's assignment: {theirs:?}"
    );
    Ok(())
}

/// Runs `drover-scheduler` with `args` (an offline tool) and returns its stdout.
fn scheduler_tool(args: &[&str]) -> String {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_drover-scheduler"))
        .args(args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "drover-scheduler {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pipeline_runs_with_an_enrolled_agent_on_authorized_nats_over_tls() -> TestResult {
    let prefix = format!("sec{}b", std::process::id());
    let tmp = tempfile::tempdir()?;
    let pki = DevPki::ensure(&tmp.path().join("pki"))?;
    let ca = pki.ca();
    // Bootstrap: the scheduler's identity first, NATS knowing only it.
    let sched_file = tmp.path().join("scheduler.nkey");
    let sched_key = scheduler_tool(&["nats-identity", "--out", &sched_file.to_string_lossy()]);
    let sched_key = sched_key.trim();
    use std::os::unix::fs::PermissionsExt as _;
    assert_eq!(
        std::fs::metadata(&sched_file)?.permissions().mode() & 0o777,
        0o600
    );
    let nats = Server::nats_with(
        None,
        &NatsSettings {
            authorization: Some(nats_auth::authorization_block(&prefix, sched_key, [])),
            tls: Some(&pki),
            ..NatsSettings::default()
        },
    )
    .await?;
    assert!(nats.url.starts_with("tls://"), "{}", nats.url);
    let mut c = Cluster::on_nats(
        nats,
        &prefix,
        &[
            "--nats-creds",
            &sched_file.to_string_lossy(),
            "--nats-ca",
            &ca.to_string_lossy(),
        ],
    )
    .await;

    // Enroll a1 (what `drover agent enroll a1` asks), then configure NATS.
    let mut agents = c.agents_client().await;
    let enroll = |id: &str| pb::EnrollAgentRequest {
        agent_id: id.into(),
        replace: false,
    };
    let enrolled = agents.enroll_agent(enroll("a1")).await?.into_inner();
    let a1_key = enrolled.agent.clone().ok_or("no agent")?.public_key;
    assert_eq!(nats_connect::public_key(&enrolled.seed)?, a1_key);
    let again = agents.enroll_agent(enroll("a1")).await.unwrap_err();
    assert_eq!(again.code(), tonic::Code::AlreadyExists, "{again:?}");
    let bad = agents.enroll_agent(enroll("a.1")).await.unwrap_err();
    assert_eq!(bad.code(), tonic::Code::InvalidArgument, "{bad:?}");
    assert!(bad.message().contains("agent_id"), "{bad:?}");
    let config = agents
        .get_nats_config(pb::GetNatsConfigRequest {})
        .await?
        .into_inner();
    assert_eq!(config.scheduler_public_key, sched_key);
    assert_eq!(config.authorization, enrolled.authorization);
    assert!(config.authorization.contains(&a1_key));
    // The offline tool prints the same block from etcd and the seed file.
    let offline = scheduler_tool(&[
        "nats-config",
        "--etcd",
        &c.etcd.url,
        "--prefix",
        &c.prefix,
        "--nats-prefix",
        &prefix,
        "--nats-creds",
        &sched_file.to_string_lossy(),
    ]);
    assert_eq!(offline, config.authorization);
    c.nats.reload_nats(Some(&config.authorization)).await?;

    let a1_file = seed_file(tmp.path(), "a1", &enrolled.seed);
    let (a1_creds, a1_ca) = (a1_file.clone(), ca.clone());
    c.add_agent_with("a1", move |o| {
        o.nats_creds = Some(a1_creds);
        o.nats_ca = Some(a1_ca);
    })
    .await;
    let run = c.submit_with(DIAMOND, &[("greeting", "drover")]).await?;
    let r = c.wait_done(&run, Duration::from_secs(60)).await;
    assert_eq!(r.state(), pb::RunState::Succeeded, "{r:#?}");
    assert!(r
        .tasks
        .iter()
        .all(|t| t.attempts.iter().all(|a| a.agent_id == "a1")));
    // A live log followed over NATS works under the permissions too.
    assert!(c.logs(&run, "d", 1).await?.contains("task=d"));
    // Following a running task's log: the scheduler asks a1 for the log so
    // far (a1 answers through allow_responses) and reads a1's live chunks.
    let spec =
        "name: live\ntasks:\n  - name: t\n    command: [sh, -c, 'echo one; sleep 1.5; echo two']\n";
    let live = c.submit(spec).await?;
    c.wait_for(&live, "t running", |r| {
        r.tasks[0].state() == pb::TaskState::Running
    })
    .await;
    let mut follow = c.log_stream(&live, "t", 0, true).await?;
    let first = tokio::time::timeout(Duration::from_secs(30), follow.next())
        .await?
        .ok_or("follow ended at once")??;
    assert_eq!(
        c.get(&live).await.state(),
        pb::RunState::Running,
        "not live"
    );
    let mut followed = String::from_utf8_lossy(&first.data).into_owned();
    while let Some(chunk) = tokio::time::timeout(Duration::from_secs(30), follow.next()).await? {
        followed.push_str(&String::from_utf8_lossy(&chunk?.data));
    }
    assert_eq!(followed, "one\ntwo\n");
    let log = c.nats.nats_log();
    assert!(
        !log.contains("Violation"),
        "nats-server refused something:\n{log}"
    );

    // a1's identity under another id: refused, and the agent says why.
    let mut opts = drover_agent::AgentOptions::new(c.nats.url.clone(), c.artifacts.clone());
    opts.id = Some("a2".into());
    opts.executors = vec!["process".into()];
    opts.work_dir = tmp.path().join("work-a2");
    opts.nats_prefix = prefix.clone();
    opts.nats_creds = Some(a1_file);
    opts.nats_ca = Some(ca);
    let err = tokio::time::timeout(
        Duration::from_secs(30),
        drover_agent::Agent::run(opts, std::future::pending()),
    )
    .await?
    .unwrap_err()
    .to_string();
    assert!(
        err.contains("NATS refused agent `a2`") && err.contains("--nats-creds were enrolled for"),
        "{err}"
    );
    Ok(())
}
