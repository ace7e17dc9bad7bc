//! The scheduler on an etcd with TLS, client certificates and authentication
//! enabled, as the README's "Running on a real network" sets it up: its user
//! may touch only keys under Drover's prefix.

mod common;

use std::path::Path;
use std::time::Duration;

use common::{Cluster, DIAMOND};
use drover_api::pb::RunState;
use drover_devcluster::etcd_auth::{self, EtcdUser};
use drover_devcluster::pki::DevPki;
use drover_devcluster::Server;

const LONG: Duration = Duration::from_secs(60);
const ROOT_PASSWORD: &str = "root-secret";
const PASSWORD: &str = "drover-secret";

fn tls_args(pki: &DevPki) -> Vec<String> {
    let path = |p: &Path| p.to_string_lossy().into_owned();
    vec![
        "--etcd-ca".into(),
        path(&pki.ca()),
        "--etcd-cert".into(),
        path(&pki.client_cert()),
        "--etcd-key".into(),
        path(&pki.client_key()),
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pipeline_runs_on_etcd_with_tls_and_a_user_limited_to_the_prefix() {
    let dir = tempfile::tempdir().unwrap();
    let pki = DevPki::ensure(&dir.path().join("pki")).unwrap();
    let etcd = Server::etcd_tls(None, &pki).await.unwrap();
    let tls = tls_args(&pki);
    let tls: Vec<&str> = tls.iter().map(String::as_str).collect();
    let mut c = Cluster::with_etcd(etcd, &tls, &[]).await;

    // Auth is enabled after the first start, once the prefix is known.
    c.kill_scheduler().await;
    let user = EtcdUser {
        name: "drover".into(),
        password: PASSWORD.into(),
        prefix: c.prefix.clone(),
    };
    etcd_auth::enable(&c.etcd.url, Some(&pki), ROOT_PASSWORD, &user)
        .await
        .unwrap();
    c.add_scheduler_args(
        &["--etcd-user", "drover"],
        &[("DROVER_ETCD_PASSWORD", PASSWORD)],
    );
    c.start_scheduler().await;
    c.add_agent("agent-1").await;

    let run = c.submit(DIAMOND).await.unwrap();
    let run = c.wait_done(&run, LONG).await;
    assert_eq!(run.state(), RunState::Succeeded, "{run:#?}");

    // The run is in etcd under the prefix, readable by Drover's user only:
    // the client certificate alone (its CN is no etcd user) gets nothing.
    let key = format!("{}/", c.prefix);
    let options = etcd_auth::connect_options(Some(&pki), Some(("drover", PASSWORD))).unwrap();
    let mut client = etcd_client::Client::connect([c.etcd.url.as_str()], Some(options))
        .await
        .unwrap();
    let found = client
        .get(
            key.as_str(),
            Some(
                etcd_client::GetOptions::new()
                    .with_prefix()
                    .with_count_only(),
            ),
        )
        .await
        .unwrap();
    assert!(found.count() > 0, "nothing under {key}");
    let outside = client.put("/elsewhere", "x", None).await;
    assert!(outside.is_err(), "the user wrote outside its prefix");

    let options = etcd_auth::connect_options(Some(&pki), None).unwrap();
    let mut anonymous = etcd_client::Client::connect([c.etcd.url.as_str()], Some(options))
        .await
        .unwrap();
    let denied = anonymous.get(key.as_str(), None).await;
    assert!(denied.is_err(), "read without a user: {denied:?}");
}

/// Runs the scheduler binary until it exits (it should, at once) and
/// returns its status and what it printed.
async fn scheduler_fails(args: &[&str], env: &[(&str, &str)]) -> (bool, String) {
    let out = tokio::time::timeout(
        Duration::from_secs(30),
        tokio::process::Command::new(env!("CARGO_BIN_EXE_drover-scheduler"))
            .args([
                "--listen",
                "127.0.0.1:0",
                "--artifacts",
                "file:///tmp/unused",
            ])
            .args(["--nats", "nats://127.0.0.1:1"])
            .args(args)
            .envs(env.iter().copied())
            .kill_on_drop(true)
            .output(),
    )
    .await
    .expect("the scheduler did not exit")
    .unwrap();
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    (out.status.success(), text)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_etcd_credentials_and_flags_stop_the_scheduler_with_the_flag_named() {
    let dir = tempfile::tempdir().unwrap();
    let pki = DevPki::ensure(&dir.path().join("pki")).unwrap();
    let etcd = Server::etcd_tls(None, &pki).await.unwrap();
    let user = EtcdUser {
        name: "drover".into(),
        password: PASSWORD.into(),
        prefix: "/drover".into(),
    };
    etcd_auth::enable(&etcd.url, Some(&pki), ROOT_PASSWORD, &user)
        .await
        .unwrap();
    let tls = tls_args(&pki);
    let mut args: Vec<&str> = vec!["--etcd", &etcd.url];
    args.extend(tls.iter().map(String::as_str));

    let mut wrong = args.clone();
    wrong.extend(["--etcd-user", "drover"]);
    let (ok, text) = scheduler_fails(&wrong, &[("DROVER_ETCD_PASSWORD", "wrong")]).await;
    assert!(!ok);
    assert!(text.contains("authentication failed"), "{text}");

    let (ok, text) = scheduler_fails(&["--etcd", &etcd.url, "--etcd-user", "drover"], &[]).await;
    assert!(!ok);
    assert!(text.contains("--etcd-ca"), "{text}");

    let (ok, text) = scheduler_fails(&["--etcd-user", "drover"], &[]).await;
    assert!(!ok);
    assert!(
        text.contains("--etcd-user `drover`: needs --etcd-password"),
        "{text}"
    );

    let plain = etcd.url.replace("https://", "http://");
    let mut mixed: Vec<&str> = vec!["--etcd", &plain];
    mixed.extend(tls.iter().map(String::as_str));
    let (ok, text) = scheduler_fails(&mixed, &[]).await;
    assert!(!ok);
    assert!(text.contains("is not https://"), "{text}");
}
