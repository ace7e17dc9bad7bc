//! The gRPC API over TLS with tokens and roles, against the real scheduler
//! binary, etcd and NATS: who is refused (Unauthenticated or
//! PermissionDenied, with which message), what each role may do, queue
//! limits, revocation and expiry (also through etcd, as another scheduler
//! would write it), mutual TLS, the refusal to serve an open API off
//! loopback, and the refused-calls metric.

mod common;

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use common::{http_get, Cluster};
use drover_api::pb;
use drover_devcluster::pki::DevPki;
use drover_devcluster::{free_port, Server};
use drover_scheduler::auth::{NewToken, Role};
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Identity};
use tonic::Code;

/// Sends `authorization: Bearer <token>` when it has one.
#[derive(Clone)]
struct Bearer(Option<String>);

impl tonic::service::Interceptor for Bearer {
    fn call(&mut self, mut req: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
        if let Some(t) = &self.0 {
            req.metadata_mut()
                .insert("authorization", format!("Bearer {t}").parse().unwrap());
        }
        Ok(req)
    }
}

type Svc = InterceptedService<Channel, Bearer>;

async fn tls_channel(
    server: &str,
    pki: &DevPki,
    client_cert: bool,
) -> Result<Channel, tonic::transport::Error> {
    let mut tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(std::fs::read(pki.ca()).unwrap()));
    if client_cert {
        tls = tls.identity(Identity::from_pem(
            std::fs::read(pki.client_cert()).unwrap(),
            std::fs::read(pki.client_key()).unwrap(),
        ));
    }
    Channel::from_shared(server.to_string())
        .unwrap()
        .tls_config(tls)?
        .connect()
        .await
}

/// A TLS cluster with `--auth tokens` whose first admin token came from
/// `--bootstrap-token-file`.
struct Secure {
    c: Cluster,
    pki: DevPki,
    admin: String,
    metrics: String,
    _dir: tempfile::TempDir,
}

impl Secure {
    async fn start() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let pki = DevPki::ensure(&dir.path().join("pki")).unwrap();
        let token_file = dir.path().join("admin.token");
        let metrics_addr = format!("127.0.0.1:{}", free_port().unwrap());
        let (cert, key, file) = (
            pki.server_cert().display().to_string(),
            pki.server_key().display().to_string(),
            token_file.display().to_string(),
        );
        let c = Cluster::with_scheduler_args(&[
            "--tls-cert",
            &cert,
            "--tls-key",
            &key,
            "--auth",
            "tokens",
            "--bootstrap-token-file",
            &file,
            "--metrics-listen",
            &metrics_addr,
        ])
        .await;
        let admin = wait_for_file(&token_file, &c).await;
        Self {
            c,
            pki,
            admin,
            metrics: format!("http://{metrics_addr}/metrics"),
            _dir: dir,
        }
    }

    async fn channel(&self) -> Channel {
        tls_channel(&self.c.server, &self.pki, false).await.unwrap()
    }

    async fn scheduler(&self, token: Option<&str>) -> pb::scheduler_client::SchedulerClient<Svc> {
        pb::scheduler_client::SchedulerClient::with_interceptor(
            self.channel().await,
            Bearer(token.map(str::to_owned)),
        )
    }

    async fn queues(&self, token: &str) -> pb::queues_client::QueuesClient<Svc> {
        pb::queues_client::QueuesClient::with_interceptor(
            self.channel().await,
            Bearer(Some(token.to_owned())),
        )
    }

    async fn agents(&self, token: &str) -> pb::agents_client::AgentsClient<Svc> {
        pb::agents_client::AgentsClient::with_interceptor(
            self.channel().await,
            Bearer(Some(token.to_owned())),
        )
    }

    async fn tokens(&self, token: &str) -> pb::tokens_client::TokensClient<Svc> {
        pb::tokens_client::TokensClient::with_interceptor(
            self.channel().await,
            Bearer(Some(token.to_owned())),
        )
    }

    /// Creates a token through the API with the admin token.
    async fn create(&self, name: &str, role: pb::Role, queues: &[&str], expires_ms: u64) -> String {
        self.tokens(&self.admin)
            .await
            .create_token(pb::CreateTokenRequest {
                name: name.into(),
                role: role as i32,
                queues: queues.iter().map(|q| q.to_string()).collect(),
                expires_in_ms: expires_ms,
            })
            .await
            .unwrap()
            .into_inner()
            .secret
    }

    async fn submit(&self, token: &str, queue: &str) -> Result<String, tonic::Status> {
        self.scheduler(Some(token))
            .await
            .submit_run(pb::SubmitRunRequest {
                spec_yaml: SPEC.into(),
                queue: queue.into(),
                ..Default::default()
            })
            .await
            .map(|r| r.into_inner().run_id)
    }

    async fn version(&self, token: Option<&str>) -> Result<pb::VersionInfo, tonic::Status> {
        self.scheduler(token)
            .await
            .get_version(pb::GetVersionRequest {})
            .await
            .map(tonic::Response::into_inner)
    }

    async fn store(&self) -> drover_scheduler::store::Store {
        drover_scheduler::store::Store::connect(
            std::slice::from_ref(&self.c.etcd.url),
            &self.c.prefix,
        )
        .await
        .unwrap()
    }
}

const SPEC: &str = r#"
name: guarded
tasks:
  - name: only
    command: ["sh", "-c", "sleep 30"]
"#;

async fn wait_for_file(path: &Path, c: &Cluster) -> String {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Ok(text) = std::fs::read_to_string(path) {
            if !text.trim().is_empty() {
                return text.trim().to_owned();
            }
        }
        assert!(
            Instant::now() < deadline,
            "no bootstrap token in {}:\n{}",
            path.display(),
            c.scheduler_log()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn assert_refused<T: std::fmt::Debug>(r: Result<T, tonic::Status>, code: Code, message: &str) {
    let s = r.expect_err("the call should be refused");
    assert_eq!(s.code(), code, "{s:?}");
    assert!(
        s.message().contains(message),
        "`{}` lacks `{message}`",
        s.message()
    );
}

/// Waits until `check` passes (a watch applies another writer's change soon, not at once).
async fn eventually<F, Fut>(what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + Duration::from_secs(10);
    while !check().await {
        assert!(Instant::now() < deadline, "{what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn tokens_roles_queue_limits_revocation_and_expiry_over_tls() {
    let mut s = Secure::start().await;

    // The bootstrap file is the owner's alone, and its token is an admin's.
    use std::os::unix::fs::PermissionsExt as _;
    let mode = std::fs::metadata(s._dir.path().join("admin.token"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);
    assert!(
        s.admin.starts_with("drv_") && s.admin.len() == 68,
        "{}",
        s.admin
    );

    // Health needs no token.
    let mut health = tonic_health::pb::health_client::HealthClient::new(s.channel().await);
    let status = health
        .check(tonic_health::pb::HealthCheckRequest {
            service: "drover.v1.Scheduler".into(),
        })
        .await
        .unwrap()
        .into_inner()
        .status;
    assert_eq!(
        status,
        tonic_health::pb::health_check_response::ServingStatus::Serving as i32
    );

    // No token, a made-up one, a malformed header: Unauthenticated.
    assert_refused(s.version(None).await, Code::Unauthenticated, "missing");
    assert_refused(
        s.version(Some("drv_0000")).await,
        Code::Unauthenticated,
        "invalid or revoked token",
    );
    assert!(s.version(Some(&s.admin)).await.is_ok());

    for queue in ["a", "b"] {
        s.queues(&s.admin)
            .await
            .create_queue(pb::Queue {
                name: queue.into(),
                ..Default::default()
            })
            .await
            .unwrap();
    }
    let viewer = s.create("look", pb::Role::Viewer, &[], 0).await;
    let ci = s.create("ci", pb::Role::Submitter, &["a"], 0).await;
    let operator = s.create("ops", pb::Role::Operator, &[], 0).await;

    // A viewer reads but cannot submit.
    assert!(s
        .scheduler(Some(&viewer))
        .await
        .list_runs(pb::ListRunsRequest {})
        .await
        .is_ok());
    assert_refused(
        s.submit(&viewer, "a").await,
        Code::PermissionDenied,
        "role viewer may not SubmitRun (needs submitter)",
    );

    // A submitter limited to `a`: submits there, not to `b`, and cannot
    // cancel a run in `b`.
    let in_a = s.submit(&ci, "a").await.unwrap();
    assert_refused(
        s.submit(&ci, "b").await,
        Code::PermissionDenied,
        "token ci (submitter) may not submit to queue b (allowed: a)",
    );
    let in_b = s.submit(&s.admin, "b").await.unwrap();
    assert_refused(
        s.scheduler(Some(&ci))
            .await
            .cancel_run(pb::CancelRunRequest { run_id: in_b })
            .await,
        Code::PermissionDenied,
        "may not cancel in queue b",
    );
    s.scheduler(Some(&ci))
        .await
        .cancel_run(pb::CancelRunRequest { run_id: in_a })
        .await
        .unwrap();
    // Tokens are admin business.
    assert_refused(
        s.tokens(&ci)
            .await
            .list_tokens(pb::ListTokensRequest {})
            .await,
        Code::PermissionDenied,
        "role submitter may not ListTokens (needs admin)",
    );

    // An operator drains an agent but creates no queue.
    s.c.add_agent("agent-1").await;
    eventually("agent-1 never registered", || async {
        let listed = s
            .agents(&operator)
            .await
            .list_agents(pb::ListAgentsRequest {})
            .await;
        listed.is_ok_and(|r| r.into_inner().agents.iter().any(|a| a.id == "agent-1"))
    })
    .await;
    let drained = s
        .agents(&operator)
        .await
        .drain_agent(pb::DrainAgentRequest {
            agent_id: "agent-1".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(drained.state(), pb::AgentState::Draining);
    assert_refused(
        s.queues(&operator)
            .await
            .create_queue(pb::Queue {
                name: "c".into(),
                ..Default::default()
            })
            .await,
        Code::PermissionDenied,
        "role operator may not CreateQueue (needs admin)",
    );

    // Revoked through the API: refused at once.
    let short = s.create("short", pb::Role::Viewer, &[], 0).await;
    assert!(s.version(Some(&short)).await.is_ok());
    s.tokens(&s.admin)
        .await
        .revoke_token(pb::RevokeTokenRequest {
            name: "short".into(),
        })
        .await
        .unwrap();
    assert_refused(
        s.version(Some(&short)).await,
        Code::Unauthenticated,
        "invalid or revoked token",
    );

    // Expired: refused once its time is up.
    let brief = s.create("brief", pb::Role::Viewer, &[], 1500).await;
    assert!(s.version(Some(&brief)).await.is_ok());
    tokio::time::sleep(Duration::from_millis(1600)).await;
    assert_refused(
        s.version(Some(&brief)).await,
        Code::Unauthenticated,
        "token brief expired",
    );

    // Written and deleted by another writer of the same etcd prefix (a
    // second scheduler, `drover dev --secure`): the watch applies both.
    let store = s.store().await;
    let other = drover_scheduler::auth::create_token(
        &store,
        NewToken {
            name: Some("elsewhere".into()),
            role: Role::Viewer,
            queues: vec![],
            expires_in: None,
            created_by: String::new(),
        },
    )
    .await
    .unwrap();
    eventually("a token written elsewhere never worked", || async {
        s.version(Some(&other)).await.is_ok()
    })
    .await;
    store
        .client()
        .kv_client()
        .delete(format!("{}/tokens/elsewhere", s.c.prefix), None)
        .await
        .unwrap();
    eventually("a token deleted elsewhere still works", || async {
        s.version(Some(&other)).await.is_err()
    })
    .await;

    // The list shows names and roles, never a secret or its hash.
    let listed = s
        .tokens(&s.admin)
        .await
        .list_tokens(pb::ListTokensRequest {})
        .await
        .unwrap()
        .into_inner()
        .tokens;
    let names: Vec<&str> = listed.iter().map(|t| t.name.as_str()).collect();
    for n in ["brief", "ci", "look", "ops"] {
        assert!(names.contains(&n), "{names:?}");
    }
    assert!(!names.contains(&"short"));
    let ci_info = listed.iter().find(|t| t.name == "ci").unwrap();
    assert_eq!(ci_info.queues, ["a"]);
    assert_eq!(ci_info.role(), pb::Role::Submitter);
    assert!(!format!("{listed:?}").contains(&ci[4..]));

    // Every refusal is counted by reason and method, and logged.
    let (_, _, text) = http_get(&s.metrics).await.unwrap();
    for (reason, method) in [
        ("missing_token", "/drover.v1.Scheduler/GetVersion"),
        ("invalid_token", "/drover.v1.Scheduler/GetVersion"),
        ("expired_token", "/drover.v1.Scheduler/GetVersion"),
        ("role", "/drover.v1.Scheduler/SubmitRun"),
        ("queue", "/drover.v1.Scheduler/SubmitRun"),
        ("queue", "/drover.v1.Scheduler/CancelRun"),
        ("role", "/drover.v1.Queues/CreateQueue"),
    ] {
        let line = format!(
            "drover_scheduler_api_refused_total{{reason=\"{reason}\",method=\"{method}\"}}"
        );
        let count: f64 = text
            .lines()
            .find_map(|l| l.strip_prefix(&line))
            .unwrap_or_else(|| panic!("no {line} in:\n{text}"))
            .trim()
            .parse()
            .unwrap();
        assert!(count >= 1.0, "{line} {count}");
    }
    let log = s.c.scheduler_log();
    assert!(
        log.contains("api call refused") && log.contains("token ci (submitter) may not submit"),
        "{log}"
    );
}

#[tokio::test]
async fn mutual_tls_refuses_a_client_without_a_certificate() {
    let dir = tempfile::tempdir().unwrap();
    let pki = DevPki::ensure(dir.path()).unwrap();
    let paths: Vec<String> = [pki.server_cert(), pki.server_key(), pki.ca()]
        .iter()
        .map(|p| p.display().to_string())
        .collect();
    let c = Cluster::with_scheduler_args(&[
        "--tls-cert",
        &paths[0],
        "--tls-key",
        &paths[1],
        "--client-ca",
        &paths[2],
    ])
    .await;
    let version = |channel: Channel| async move {
        pb::scheduler_client::SchedulerClient::new(channel)
            .get_version(pb::GetVersionRequest {})
            .await
    };
    // The handshake itself may pass (TLS 1.3 checks the client's
    // certificate after it); the call may not.
    match tls_channel(&c.server, &pki, false).await {
        Err(_) => {}
        Ok(channel) => assert!(
            version(channel).await.is_err(),
            "answered without a client certificate"
        ),
    }
    let channel = tls_channel(&c.server, &pki, true).await.unwrap();
    assert!(version(channel).await.is_ok(), "{}", c.scheduler_log());
    // Plain HTTP/2 to a TLS port gets nowhere either.
    let plain = Channel::from_shared(c.server.replace("https", "http"))
        .unwrap()
        .connect()
        .await;
    if let Ok(channel) = plain {
        assert!(version(channel).await.is_err());
    }
}

fn scheduler(args: &[&str], etcd: &str, nats: &str) -> tokio::process::Command {
    let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_drover-scheduler"));
    cmd.args([
        "--etcd",
        etcd,
        "--nats",
        nats,
        "--artifacts",
        "file:///tmp/unused",
    ])
    .args(args)
    .env_remove("DROVER_AUTH")
    .env_remove("DROVER_INSECURE")
    .stdin(Stdio::null())
    .kill_on_drop(true);
    cmd
}

#[tokio::test]
async fn an_open_api_off_loopback_is_refused_unless_insecure() {
    let etcd = Server::etcd(None).await.unwrap();
    let nats = Server::nats(None).await.unwrap();
    let out = scheduler(&["--listen", "0.0.0.0:0"], &etcd.url, &nats.url)
        .output()
        .await
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    assert!(
        err.contains("refusing to serve the API on 0.0.0.0:0 without TLS")
            && err.contains("--tls-cert")
            && err.contains("--insecure"),
        "{err}"
    );

    // TLS without tokens is refused too.
    let out = scheduler(
        &[
            "--listen",
            "0.0.0.0:0",
            "--auth",
            "none",
            "--tls-cert",
            "c",
            "--tls-key",
            "k",
        ],
        &etcd.url,
        &nats.url,
    )
    .output()
    .await
    .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("without tokens"));

    // A PEM file that holds no certificate is named with its flag.
    let dir = tempfile::tempdir().unwrap();
    let junk = dir.path().join("junk.pem");
    std::fs::write(&junk, "not a certificate").unwrap();
    let junk = junk.display().to_string();
    let out = scheduler(
        &[
            "--listen",
            "127.0.0.1:0",
            "--tls-cert",
            &junk,
            "--tls-key",
            &junk,
        ],
        &etcd.url,
        &nats.url,
    )
    .env("RUST_BACKTRACE", "0")
    .output()
    .await
    .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(&format!(
            "--tls-cert {junk}: no certificate in this PEM file"
        )),
        "{err}"
    );

    // With --insecure it serves (and says so once it does).
    let log = dir.path().join("scheduler.log");
    let file = std::fs::File::create(&log).unwrap();
    let mut child = scheduler(
        &[
            "--listen",
            "0.0.0.0:0",
            "--insecure",
            "--auth",
            "none",
            "--prefix",
            "/insecure",
            "--nats-prefix",
            &format!("insecure{}", std::process::id()),
        ],
        &etcd.url,
        &nats.url,
    )
    .stdout(file.try_clone().unwrap())
    .stderr(file)
    .spawn()
    .unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        if text.contains("scheduler serving") {
            break;
        }
        assert!(child.try_wait().unwrap().is_none(), "exited:\n{text}");
        assert!(Instant::now() < deadline, "never served:\n{text}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    child.kill().await.unwrap();
}

#[tokio::test]
async fn bootstrap_token_subcommand_writes_an_admin_token_the_scheduler_accepts() {
    let dir = tempfile::tempdir().unwrap();
    let pki = DevPki::ensure(&dir.path().join("pki")).unwrap();
    let (cert, key) = (
        pki.server_cert().display().to_string(),
        pki.server_key().display().to_string(),
    );
    let c =
        Cluster::with_scheduler_args(&["--tls-cert", &cert, "--tls-key", &key, "--auth", "tokens"])
            .await;
    let out: PathBuf = dir.path().join("first.token");
    let status = tokio::process::Command::new(env!("CARGO_BIN_EXE_drover-scheduler"))
        .args([
            "bootstrap-token",
            "--etcd",
            &c.etcd.url,
            "--prefix",
            &c.prefix,
        ])
        .args(["--name", "first", "--out"])
        .arg(&out)
        .status()
        .await
        .unwrap();
    assert!(status.success());
    let token = std::fs::read_to_string(&out).unwrap().trim().to_owned();
    let channel = tls_channel(&c.server, &pki, false).await.unwrap();
    let mut tokens =
        pb::tokens_client::TokensClient::with_interceptor(channel, Bearer(Some(token)));
    // The scheduler learns of it through its watch.
    let deadline = Instant::now() + Duration::from_secs(10);
    let listed = loop {
        match tokens.list_tokens(pb::ListTokensRequest {}).await {
            Ok(r) => break r.into_inner().tokens,
            Err(e) => {
                assert!(Instant::now() < deadline, "{e:?}\n{}", c.scheduler_log());
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    };
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].name, "first");
    assert_eq!(listed[0].role(), pb::Role::Admin);
}
