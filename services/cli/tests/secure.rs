//! The `drover` binary against a scheduler serving TLS with `--auth tokens`
//! (in this process, as `drover dev` runs it; real etcd and NATS): the
//! `https://` server with `--ca` and `DROVER_TOKEN` or `--token-file`, and
//! `drover token create/list/revoke`.

use std::process::{Command, Output};
use std::time::{Duration, Instant};

use drover_devcluster::pki::DevPki;
use drover_devcluster::Server;
use drover_scheduler::auth::NewToken;
use drover_scheduler::options::{ApiSecurityOptions, AuthMode};

const DROVER: &str = env!("CARGO_BIN_EXE_drover");

const SPEC: &str = r#"
name: secured
tasks:
  - name: only
    command: ["sh", "-c", "echo hi"]
"#;

struct Secure {
    rt: tokio::runtime::Runtime,
    server: String,
    ca: String,
    admin: String,
    dir: tempfile::TempDir,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    _servers: (Server, Server),
}

impl Secure {
    fn start() -> Self {
        let rt = tokio::runtime::Runtime::new().unwrap();
        let dir = tempfile::tempdir().unwrap();
        let pki = DevPki::ensure(&dir.path().join("pki")).unwrap();
        let (etcd, nats) = rt.block_on(async {
            (
                Server::etcd(None).await.unwrap(),
                Server::nats(None).await.unwrap(),
            )
        });
        let prefix = format!("/cli{}", std::process::id());
        let admin = rt.block_on(async {
            let store =
                drover_scheduler::store::Store::connect(std::slice::from_ref(&etcd.url), &prefix)
                    .await
                    .unwrap();
            drover_scheduler::auth::create_token(&store, NewToken::admin(Some("root".into())))
                .await
                .unwrap()
        });
        let listener = rt
            .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
            .unwrap();
        let addr = listener.local_addr().unwrap();
        let opts = drover_scheduler::SchedulerOptions {
            listen: addr,
            etcd: vec![etcd.url.clone()],
            nats: nats.url.clone(),
            prefix,
            artifacts: format!("file://{}", dir.path().join("artifacts").display()),
            nats_prefix: format!("cli{}", std::process::id()),
            events_replicas: 1,
            agent_timeout: Duration::from_secs(10),
            cancel_grace: Duration::from_secs(2),
            preemption_grace: Duration::from_secs(2),
            placement: Default::default(),
            max_spec_bytes: drover_scheduler::options::DEFAULT_MAX_SPEC_BYTES,
            max_code_bytes: drover_scheduler::options::DEFAULT_MAX_CODE_BYTES,
            pass_depth: drover_scheduler::options::DEFAULT_PASS_DEPTH,
            cache_ttl: drover_scheduler::options::DEFAULT_CACHE_TTL,
            id: None,
            advertise: None,
            leader_lease: Duration::from_secs(3),
            metrics_listen: None,
            api_security: ApiSecurityOptions {
                tls_cert: Some(pki.server_cert()),
                tls_key: Some(pki.server_key()),
                auth: Some(AuthMode::Tokens),
                ..Default::default()
            },
            nats_security: Default::default(),
            etcd_security: Default::default(),
        };
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        rt.spawn(async move {
            if let Err(e) = drover_scheduler::serve(opts, listener, async {
                let _ = stopped.await;
            })
            .await
            {
                eprintln!("scheduler failed: {e}");
            }
        });
        let s = Self {
            rt,
            server: format!("https://127.0.0.1:{}", addr.port()),
            ca: pki.ca().display().to_string(),
            admin,
            dir,
            stop: Some(stop),
            _servers: (etcd, nats),
        };
        // Serving once an admin call answers.
        let deadline = Instant::now() + Duration::from_secs(20);
        while !s.as_admin(&["version"]).status.success() {
            assert!(Instant::now() < deadline, "the scheduler never answered");
            std::thread::sleep(Duration::from_millis(100));
        }
        s
    }

    /// `drover` with the server and CA in the environment, and `token`.
    fn drover(&self, token: Option<&str>, args: &[&str]) -> Output {
        let mut cmd = Command::new(DROVER);
        cmd.args(args)
            .env("DROVER_SERVER", &self.server)
            .env("DROVER_CA", &self.ca)
            .env_remove("DROVER_TOKEN")
            .env_remove("DROVER_TOKEN_FILE")
            .current_dir(self.dir.path());
        if let Some(t) = token {
            cmd.env("DROVER_TOKEN", t);
        }
        cmd.output().unwrap()
    }

    fn as_admin(&self, args: &[&str]) -> Output {
        self.drover(Some(&self.admin), args)
    }

    fn write(&self, name: &str, text: &str) -> String {
        let p = self.dir.path().join(name);
        std::fs::write(&p, text).unwrap();
        p.display().to_string()
    }
}

impl Drop for Secure {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        self.rt
            .block_on(async { tokio::time::sleep(Duration::from_millis(200)).await });
    }
}

fn out(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn err(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn ok(o: Output) -> String {
    assert!(
        o.status.success(),
        "stdout:\n{}\nstderr:\n{}",
        out(&o),
        err(&o)
    );
    out(&o)
}

#[test]
fn https_with_ca_and_token_and_token_commands() {
    let s = Secure::start();
    let spec = s.write("spec.yaml", SPEC);

    // The version answer comes over TLS with the admin token.
    assert!(ok(s.as_admin(&["version"])).contains("scheduler"));

    // No token: refused, said plainly, exit 2.
    let o = s.drover(None, &["list"]);
    assert_eq!(o.status.code(), Some(2), "{}", err(&o));
    assert!(err(&o).contains("missing `authorization"), "{}", err(&o));

    ok(s.as_admin(&["queue", "create", "a"]));
    let ci = ok(s.as_admin(&[
        "token",
        "create",
        "--role",
        "submitter",
        "--queue",
        "a",
        "--name",
        "ci",
    ]));
    let ci = ci.trim();
    assert!(ci.starts_with("drv_") && ci.lines().count() == 1, "{ci}");
    let viewer = ok(s.as_admin(&[
        "token",
        "create",
        "--role",
        "viewer",
        "--expires",
        "30d",
        "--name",
        "look",
    ]));

    // The list shows what each token may do, never a secret.
    let listed = ok(s.as_admin(&["token", "list"]));
    assert!(
        listed.contains("NAME") && listed.contains("EXPIRES"),
        "{listed}"
    );
    let ci_row = listed
        .lines()
        .find(|l| l.starts_with("ci "))
        .unwrap_or_default();
    assert!(
        ci_row.contains("submitter") && ci_row.contains(" a "),
        "{listed}"
    );
    let look_row = listed
        .lines()
        .find(|l| l.starts_with("look "))
        .unwrap_or_default();
    assert!(
        look_row.contains("viewer") && !look_row.contains("never"),
        "{listed}"
    );
    assert!(!listed.contains("drv_"), "{listed}");
    let json: serde_json::Value =
        serde_json::from_str(&ok(s.as_admin(&["token", "list", "-o", "json"]))).unwrap();
    assert_eq!(json.as_array().map(Vec::len), Some(3), "{json}");

    // The submitter, its token from a file: submits to `a`, not elsewhere.
    let file = s.write("ci.token", &format!("{ci}\n"));
    let run = ok(s.drover(
        None,
        &["--token-file", &file, "submit", "--queue", "a", &spec],
    ));
    assert!(run.trim().starts_with("secured-"), "{run}");
    let o = s.drover(Some(ci), &["submit", "--queue", "default", &spec]);
    assert_eq!(o.status.code(), Some(2));
    assert!(
        err(&o).contains("token ci (submitter) may not submit to queue default (allowed: a)"),
        "{}",
        err(&o)
    );
    // The viewer reads the run, and may not create tokens.
    assert!(ok(s.drover(Some(viewer.trim()), &["get", run.trim()])).contains("only"));
    let o = s.drover(Some(viewer.trim()), &["token", "list"]);
    assert!(
        err(&o).contains("role viewer may not ListTokens (needs admin)"),
        "{}",
        err(&o)
    );

    // Revoked: refused from the next call.
    assert!(ok(s.as_admin(&["token", "revoke", "ci"])).contains("revoked ci"));
    let o = s.drover(Some(ci), &["list"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(err(&o).contains("invalid or revoked token"), "{}", err(&o));
    let o = s.as_admin(&["token", "revoke", "ci"]);
    assert!(err(&o).contains("token `ci` not found"), "{}", err(&o));
}

#[test]
fn bad_tls_and_token_input_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let run = |args: &[&str], envs: &[(&str, &str)]| {
        Command::new(DROVER)
            .args(args)
            .env_remove("DROVER_TOKEN")
            .envs(envs.iter().copied())
            .current_dir(dir.path())
            .output()
            .unwrap()
    };
    let o = run(
        &["--server", "http://127.0.0.1:1", "--ca", "ca.pem", "list"],
        &[],
    );
    assert!(
        err(&o).contains("--ca needs an https:// --server"),
        "{}",
        err(&o)
    );
    let o = run(
        &[
            "--server",
            "https://127.0.0.1:1",
            "--ca",
            "missing.pem",
            "list",
        ],
        &[],
    );
    assert!(err(&o).contains("--ca missing.pem"), "{}", err(&o));
    let o = run(&["--token-file", "nope", "list"], &[]);
    assert!(err(&o).contains("--token-file nope"), "{}", err(&o));
    let o = run(&["token", "create", "--role", "bogus"], &[]);
    assert!(
        err(&o).contains("invalid value 'bogus' for '--role"),
        "{}",
        err(&o)
    );
    let o = run(
        &["token", "create", "--role", "viewer", "--expires", "soon"],
        &[],
    );
    assert!(
        err(&o).contains("invalid value 'soon' for '--expires"),
        "{}",
        err(&o)
    );
    let o = run(&["list"], &[("DROVER_TOKEN", "bad\u{7f}token")]);
    assert!(err(&o).contains("DROVER_TOKEN: not a token"), "{}", err(&o));
}
