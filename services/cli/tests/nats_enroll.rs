//! `drover agent enroll` and `drover nats-config` against a real scheduler
//! that has a NATS identity: the files they write, and a config a real
//! nats-server accepts and lets the enrolled agent in with.

use std::process::Output;
use std::time::{Duration, Instant};

use clap::Parser;
use drover_api::{naming, nats_auth, nats_connect};
use drover_devcluster::{NatsSettings, Server};

const DROVER: &str = env!("CARGO_BIN_EXE_drover");

type TestResult = Result<(), Box<dyn std::error::Error>>;

#[derive(Parser)]
struct SchedulerCli {
    #[command(flatten)]
    opts: drover_scheduler::SchedulerOptions,
}

async fn drover(server: &str, args: &[&str]) -> Output {
    tokio::process::Command::new(DROVER)
        .args(args)
        .env("DROVER_SERVER", server)
        .output()
        .await
        .unwrap()
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn enroll_and_nats_config_give_a_config_nats_server_accepts() -> TestResult {
    let tmp = tempfile::tempdir()?;
    let etcd = Server::etcd(None).await?;
    let nats = Server::nats(None).await?;
    let sched_file = tmp.path().join("scheduler.nkey");
    let sched_key = drover_scheduler::enroll::create_identity(&sched_file)?;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let server = format!("http://{}", listener.local_addr()?);
    let artifacts = format!("file://{}", tmp.path().join("artifacts").display());
    let cli = SchedulerCli::try_parse_from([
        "drover-scheduler",
        "--etcd",
        &etcd.url,
        "--nats",
        &nats.url,
        "--artifacts",
        &artifacts,
        "--nats-creds",
        &sched_file.to_string_lossy(),
    ])?;
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let scheduler = tokio::spawn(drover_scheduler::serve(cli.opts, listener, async {
        let _ = stopped.await;
    }));

    // The scheduler answers once it serves.
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let out = drover(&server, &["agent", "list"]).await;
        if out.status.success() {
            break;
        }
        assert!(Instant::now() < deadline, "{}", text(&out.stderr));
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    let dir = tmp.path().join("creds");
    let dir_arg = dir.to_string_lossy().into_owned();
    let out = drover(&server, &["agent", "enroll", "gpu-1", "--out", &dir_arg]).await;
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(
        text(&out.stdout).contains("agent gpu-1 enrolled"),
        "{}",
        text(&out.stdout)
    );
    let creds = dir.join("gpu-1.nkey");
    use std::os::unix::fs::PermissionsExt as _;
    assert_eq!(
        std::fs::metadata(&creds)?.permissions().mode() & 0o777,
        0o600
    );
    let seed = nats_connect::parse_seed(&std::fs::read_to_string(&creds)?)?;
    let gpu1_key = nats_connect::public_key(&seed)?;
    let entry = std::fs::read_to_string(dir.join("gpu-1.nats-user.conf"))?;
    assert!(entry.contains(&gpu1_key), "{entry}");
    // The scheduler has an identity, so the whole block comes along.
    let whole = std::fs::read_to_string(dir.join("nats-authorization.conf"))?;
    assert!(
        whole.contains(&gpu1_key) && whole.contains(&sched_key),
        "{whole}"
    );

    // Without --out: the credentials and the entry on stdout.
    let out = drover(&server, &["agent", "enroll", "gpu-2"]).await;
    assert!(out.status.success(), "{}", text(&out.stderr));
    let printed = text(&out.stdout);
    let gpu2_key = nats_connect::public_key(&nats_connect::parse_seed(&printed)?)?;
    assert!(
        printed.contains(&format!("nkey: \"{gpu2_key}\"")),
        "{printed}"
    );
    // Again: refused, with the way out named.
    let out = drover(&server, &["agent", "enroll", "gpu-2"]).await;
    assert_eq!(out.status.code(), Some(2));
    assert!(
        text(&out.stderr).contains("--replace"),
        "{}",
        text(&out.stderr)
    );

    let out = drover(&server, &["nats-config"]).await;
    assert!(out.status.success(), "{}", text(&out.stderr));
    let block = text(&out.stdout);
    for key in [&sched_key, &gpu1_key, &gpu2_key] {
        assert!(block.contains(key.as_str()), "{key} missing from:\n{block}");
    }
    let _ = stop.send(());
    scheduler.await??;

    // nats-server starts with it, and lets gpu-1 in as itself only.
    let settings = NatsSettings {
        authorization: Some(block),
        ..NatsSettings::default()
    };
    let secured = Server::nats_with(None, &settings).await?;
    let prefix = naming::DEFAULT_NATS_PREFIX;
    let identity = nats_connect::NatsIdentity {
        creds: Some(creds.clone()),
        ca: None,
    };
    let (options, errors) = nats_connect::options(
        &identity,
        "gpu-1",
        &nats_auth::agent_inbox_prefix(prefix, "gpu-1"),
    )?;
    let client = options.connect(&secured.url).await?;
    client
        .publish(naming::heartbeat_subject(prefix, "gpu-1"), "hb".into())
        .await?;
    client
        .publish(naming::heartbeat_subject(prefix, "gpu-2"), "forged".into())
        .await?;
    drover_devcluster::nats_synced(&client).await?;
    tokio::time::sleep(Duration::from_millis(200)).await;
    let refused = errors.take();
    assert_eq!(refused.len(), 1, "{refused:?}");
    assert!(refused[0].contains("heartbeat.gpu-2"), "{refused:?}");
    Ok(())
}
