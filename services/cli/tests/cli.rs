//! The `drover` binary against a real `drover dev` cluster: what a user types
//! and sees, exit codes included.

use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

const DROVER: &str = env!("CARGO_BIN_EXE_drover");

struct Dev {
    child: std::process::Child,
    dir: tempfile::TempDir,
    server: String,
    /// What `dev.env` says a shell needs (`DROVER_SERVER`, and with
    /// `--secure` `DROVER_CA` and `DROVER_TOKEN_FILE`).
    env: Vec<(String, String)>,
}

impl Dev {
    fn start() -> Dev {
        Dev::start_with(&[])
    }

    /// `drover dev` with more of its environment (its flags' variables).
    fn start_with(env: &[(&str, &str)]) -> Dev {
        let dir = tempfile::tempdir().unwrap();
        let log = std::fs::File::create(dir.path().join("dev.log")).unwrap();
        let child = Command::new(DROVER)
            .args(["dev", "--data-dir"])
            .arg(dir.path().join("state"))
            .env("DROVER_AGENT_ID", "cli-agent")
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap();
        let env_file = dir.path().join("state/dev.env");
        let deadline = Instant::now() + Duration::from_secs(30);
        while !env_file.exists() {
            assert!(
                Instant::now() < deadline,
                "drover dev did not come up:\n{}",
                log_of(dir.path())
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        let text = std::fs::read_to_string(&env_file).unwrap();
        let env: Vec<(String, String)> = text
            .lines()
            .filter_map(|l| l.split_once('='))
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
            .collect();
        let server = env
            .iter()
            .find(|(k, _)| k == "DROVER_SERVER")
            .map(|(_, v)| v.clone())
            .unwrap();
        Dev {
            child,
            dir,
            server,
            env,
        }
    }

    fn drover(&self, args: &[&str]) -> Output {
        Command::new(DROVER)
            .args(args)
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .current_dir(self.dir.path())
            .output()
            .unwrap()
    }

    fn write(&self, name: &str, text: &str) -> String {
        let p = self.dir.path().join(name);
        std::fs::write(&p, text).unwrap();
        p.display().to_string()
    }

    /// Writes a spec to `name` and submits it; returns the run id.
    fn submit(&self, name: &str, yaml: &str) -> String {
        let o = self.drover(&["submit", &self.write(name, yaml)]);
        assert!(o.status.success(), "{}", err(&o));
        out(&o).trim().to_string()
    }

    /// Ctrl-C, as a user would; returns whether it exited cleanly.
    fn interrupt(&mut self) -> bool {
        // SAFETY: signalling our own child, which has not been reaped.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGINT) };
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status.success();
            }
            assert!(Instant::now() < deadline, "drover dev ignored Ctrl-C");
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Dev {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn log_of(dir: &Path) -> String {
    std::fs::read_to_string(dir.join("dev.log")).unwrap_or_default()
}

fn out(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn err(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

#[test]
fn submit_watch_get_logs_list_and_ctrl_c() {
    let mut dev = Dev::start();
    let ok = dev.write(
        "ok.yaml",
        "name: hello\nparams: {who: world}\ntasks:\n  - name: greet\n    command: [\"sh\", \"-c\", \"echo hello {{params.who}}\"]\n",
    );
    let o = dev.drover(&["submit", &ok, "--param", "who=drover", "--watch"]);
    assert!(
        o.status.success(),
        "stdout:\n{}\nstderr:\n{}",
        out(&o),
        err(&o)
    );
    let stdout = out(&o);
    let run = stdout.lines().next().unwrap().to_string();
    assert!(run.starts_with("hello-"), "{stdout}");
    assert!(
        stdout.contains("greet") && stdout.contains("Succeeded"),
        "{stdout}"
    );
    // On a pipe: a line per change, no live summary (no carriage returns or
    // terminal escapes).
    assert!(
        !stdout.contains('\r') && !stdout.contains('\x1b'),
        "{stdout:?}"
    );
    assert!(!stdout.contains(" succeeded · "), "{stdout}");

    let o = dev.drover(&["get", &run, "-o", "json"]);
    assert!(o.status.success(), "{}", err(&o));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["state"], "succeeded");
    assert_eq!(v["params"]["who"], "drover");
    assert_eq!(v["tasks"][0]["attempts"][0]["agent_id"], "cli-agent");
    assert_eq!(v["tasks"][0]["attempts"][0]["exit_code"], 0);
    let trace_id = v["trace_id"].as_str().unwrap().to_string();
    assert_eq!(trace_id.len(), 32, "{v:#}");

    let o = dev.drover(&["get", &run]);
    assert!(out(&o).contains("State:     Succeeded"), "{}", out(&o));
    assert!(
        out(&o).contains(&format!("Trace:     {trace_id}")),
        "{}",
        out(&o)
    );

    let o = dev.drover(&["trace", &run]);
    assert!(o.status.success(), "{}", err(&o));
    let text = out(&o);
    assert!(text.contains("Critical path (*): greet"), "{text}");
    assert!(
        text.lines()
            .any(|l| l.starts_with("* greet #1") && l.contains('█')),
        "{text}"
    );
    let o = dev.drover(&["trace", &run, "-o", "json"]);
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["trace_id"], trace_id.as_str());
    assert_eq!(v["critical_path"], serde_json::json!(["greet"]));
    assert_eq!(v["attempts"][0]["task"], "greet");

    let o = dev.drover(&["logs", &run, "greet"]);
    assert_eq!(out(&o), "hello drover\n");

    let o = dev.drover(&["list", "-o", "json"]);
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v[0]["id"], run.as_str());
    assert!(out(&dev.drover(&["list"])).contains(&run));

    // A second `watch` of a finished run reports its outcome at once.
    assert!(dev.drover(&["watch", &run]).status.success());

    assert!(
        dev.interrupt(),
        "drover dev should exit 0 on Ctrl-C:\n{}",
        log_of(dev.dir.path())
    );
    assert!(!dev.dir.path().join("state/dev.env").exists());
}

#[test]
fn failures_and_bad_input_exit_non_zero_with_clear_messages() {
    let dev = Dev::start();
    let bad = dev.write(
        "bad.yaml",
        "name: broken\ntasks:\n  - name: a\n    command: [\"sh\", \"-c\", \"exit 4\"]\n",
    );
    let o = dev.drover(&["submit", &bad, "--watch"]);
    assert_eq!(o.status.code(), Some(1), "a failed run exits 1");
    let run = out(&o).lines().next().unwrap().to_string();
    assert!(
        out(&o).contains("task `a` failed: exited with code 4"),
        "{}",
        out(&o)
    );
    assert_eq!(dev.drover(&["watch", &run]).status.code(), Some(1));

    let invalid = dev.write(
        "invalid.yaml",
        "name: x\ntasks:\n  - name: a\n    command: []\n",
    );
    let o = dev.drover(&["submit", &invalid]);
    assert_eq!(o.status.code(), Some(2));
    assert_eq!(
        err(&o).trim(),
        "error: task `a`: command is empty (invalid argument)"
    );

    let o = dev.drover(&["submit", &invalid, "--param", "oops"]);
    assert_eq!(o.status.code(), Some(2));
    assert_eq!(err(&o).trim(), "error: --param `oops`: expected KEY=VALUE");

    let o = dev.drover(&["get", "nope-123"]);
    assert_eq!(o.status.code(), Some(2));
    assert_eq!(
        err(&o).trim(),
        "error: run `nope-123` not found (not found)"
    );

    let o = dev.drover(&["submit", "/no/such/file.yaml"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(
        err(&o).contains("reading /no/such/file.yaml"),
        "{}",
        err(&o)
    );

    let o = Command::new(DROVER)
        .args(["list"])
        .env("DROVER_SERVER", "http://127.0.0.1:1")
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(2));
    assert!(
        err(&o).contains("cannot reach the scheduler at http://127.0.0.1:1"),
        "{}",
        err(&o)
    );
}

#[test]
fn cancel_and_version_from_the_cli() {
    let dev = Dev::start();
    let run = dev.submit(
        "slow.yaml",
        "name: slow\ntasks:\n  - name: wait\n    command: [\"sleep\", \"60\"]\n",
    );
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let o = dev.drover(&["get", &run, "-o", "json"]);
        let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
        if v["tasks"][0]["state"] == "running" {
            break;
        }
        assert!(Instant::now() < deadline, "never started: {v}");
        std::thread::sleep(Duration::from_millis(100));
    }
    let o = dev.drover(&["cancel", &run]);
    assert!(o.status.success(), "{}", err(&o));
    let o = dev.drover(&["watch", &run]);
    assert_eq!(o.status.code(), Some(1));
    assert!(out(&o).contains("Cancelled"), "{}", out(&o));

    // The same build on both sides: one version and commit, no warning.
    let o = dev.drover(&["version"]);
    assert!(o.status.success(), "{}", err(&o));
    let text = out(&o);
    let lines: Vec<&str> = text.lines().collect();
    let cli = lines[0].strip_prefix("drover ").unwrap();
    let scheduler = lines[1].strip_prefix("scheduler ").unwrap();
    assert!(scheduler.starts_with(cli), "{lines:?}");
    assert!(
        scheduler.ends_with(&format!("at {}", dev.server)),
        "{lines:?}"
    );
    assert_eq!(err(&o), "");
}

#[test]
fn dev_fsyncs_events_where_nats_server_can_and_says_so_where_it_cannot() {
    let dev = Dev::start();
    let config = std::fs::read_to_string(dev.dir.path().join("state/nats/nats.conf")).unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while !log_of(dev.dir.path()).contains("scheduler  ") {
        assert!(Instant::now() < deadline, "{}", log_of(dev.dir.path()));
        std::thread::sleep(Duration::from_millis(50));
    }
    let said = log_of(dev.dir.path()).contains("cannot fsync each event");
    if drover_devcluster::nats_supports_sync_always() {
        assert!(config.contains("sync_interval: always"), "{config}");
        assert!(!said);
    } else {
        assert!(!config.contains("sync_interval"), "{config}");
        assert!(said, "{}", log_of(dev.dir.path()));
    }
}

#[test]
fn dev_secure_runs_a_pipeline_with_everything_secured() {
    let dev = Dev::start_with(&[("DROVER_DEV_SECURE", "true")]);
    assert!(dev.server.starts_with("https://"), "{}", dev.server);
    let log = log_of(dev.dir.path());
    assert!(log.contains("etcd       https://"), "{log}");
    assert!(log.contains("nats       tls://"), "{log}");
    let spec = dev.write(
        "secure.yaml",
        "name: secure\ntasks:\n  - name: a\n    command: [\"sh\", \"-c\", \"echo a > $DROVER_OUTPUTS/a.txt\"]\n    outputs: [{name: a, path: a.txt}]\n  - name: b\n    depends_on: [a]\n    inputs: [{name: a, from: a/a}]\n    command: [\"sh\", \"-c\", \"cat $DROVER_INPUTS/a\"]\n",
    );
    let o = dev.drover(&["submit", &spec, "--watch"]);
    assert!(o.status.success(), "{}{}", out(&o), err(&o));
    assert!(out(&o).contains("Succeeded"), "{}", out(&o));
    // The same call without the token is refused.
    let o = Command::new(DROVER)
        .args(["list"])
        .envs(
            dev.env
                .iter()
                .filter(|(k, _)| k != "DROVER_TOKEN_FILE")
                .map(|(k, v)| (k, v)),
        )
        .env_remove("DROVER_TOKEN")
        .output()
        .unwrap();
    assert!(!o.status.success());
    assert!(err(&o).contains("unauthenticated"), "{}", err(&o));
}

#[test]
fn help_names_every_flag_with_its_env_var() {
    let o = Command::new(DROVER).args(["--help"]).output().unwrap();
    assert!(out(&o).contains("[env: DROVER_SERVER="), "{}", out(&o));
    let o = Command::new(DROVER)
        .args(["dev", "--help"])
        .output()
        .unwrap();
    assert!(out(&o).contains("[env: DROVER_DEV_DIR="), "{}", out(&o));
}

/// `drover` with no scheduler anywhere: a closed port.
fn offline(args: &[&str], dir: &Path) -> Output {
    Command::new(DROVER)
        .args(args)
        .env("DROVER_SERVER", "http://127.0.0.1:1")
        .current_dir(dir)
        .output()
        .unwrap()
}

#[test]
fn dry_run_prints_the_expanded_dag_and_schema_the_spec_without_a_scheduler() {
    let dir = tempfile::tempdir().unwrap();
    let spec = dir.path().join("sweep.yaml");
    std::fs::write(
        &spec,
        "name: sweep\nparams: {data: d1}\ntasks:\n  - {name: prep, command: [prep, '{{params.data}}']}\n  - {name: train, depends_on: [prep], matrix: {lr: ['0.1', '0.3']}, max_parallel: 1, command: [train, '{{matrix.lr}}']}\n  - {name: eval, depends_on: [train], image: 'busybox', command: [eval]}\nfinally:\n  - {name: notify, command: [notify]}\n",
    )
    .unwrap();
    let spec = spec.display().to_string();
    let out = offline(
        &["submit", "--dry-run", &spec, "--param", "data=d2"],
        dir.path(),
    );
    assert!(out.status.success(), "{out:?}");
    let text = String::from_utf8_lossy(&out.stdout);
    let lines: Vec<&str> = text.lines().map(str::trim_end).collect();
    assert_eq!(
        lines[0],
        "pipeline sweep: 5 tasks, queue default, priority 0 (not submitted)"
    );
    assert!(lines[2].starts_with("prep "), "{text}");
    assert!(lines[2].ends_with("process: prep d2"), "{text}");
    assert!(
        lines[3].starts_with("train[lr=0.1] (max_parallel 1)"),
        "{text}"
    );
    assert!(lines[4].ends_with("process: train 0.3"), "{text}");
    assert!(lines[5].contains("train[lr=0.1], train[lr=0.3]"), "{text}");
    assert!(lines[5].ends_with("busybox: eval"), "{text}");
    assert!(lines[6].starts_with("notify (finally) "), "{text}");
    assert!(lines[6].contains(" every other task "), "{text}");

    // A condition adds a WHEN column.
    let gated = dir.path().join("gated.yaml");
    std::fs::write(
        &gated,
        "name: gated\ntasks:\n  - {name: a, command: [a]}\n  - {name: b, depends_on: [a], when: 'params.x == \"1\"', command: [b]}\nparams: {x: '1'}\n",
    )
    .unwrap();
    let out = offline(
        &["submit", "--dry-run", &gated.display().to_string()],
        dir.path(),
    );
    assert!(out.status.success(), "{out:?}");
    let text = String::from_utf8_lossy(&out.stdout);
    let lines: Vec<&str> = text.lines().map(str::trim_end).collect();
    assert!(lines[1].contains(" WHEN "), "{text}");
    assert!(lines[3].contains(r#"params.x == "1""#), "{text}");

    let bad = dir.path().join("bad.yaml");
    std::fs::write(
        &bad,
        "name: p\ntasks:\n  - {name: t, command: [x, '{{matrix.lr}}']}\n",
    )
    .unwrap();
    let out = offline(
        &["submit", "--dry-run", &bad.display().to_string()],
        dir.path(),
    );
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("task `t`: command: `{{matrix.lr}}` needs a `matrix` on the task"),
        "{err}"
    );

    let out = offline(&["schema"], dir.path());
    assert!(out.status.success(), "{out:?}");
    let schema: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(schema["title"], "Drover pipeline");
    assert!(schema["$defs"]["RawTask"]["properties"]["matrix"].is_object());
}

#[test]
fn an_unreachable_scheduler_is_said_once_per_cause() {
    let dir = tempfile::tempdir().unwrap();
    let out = offline(&["list"], dir.path());
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.starts_with("error: cannot reach the scheduler at http://127.0.0.1:1"),
        "{err}"
    );
    assert!(err.contains("Connection refused"), "{err}");
    assert_eq!(err.matches("tcp connect error").count(), 1, "{err}");
}

#[test]
fn completions_for_every_shell_know_the_commands() {
    let dir = tempfile::tempdir().unwrap();
    for shell in ["bash", "zsh", "fish", "powershell"] {
        let out = offline(&["completion", shell], dir.path());
        assert!(out.status.success(), "{shell}: {out:?}");
        let script = String::from_utf8_lossy(&out.stdout);
        for command in ["submit", "retry", "schema", "completion", "lineage"] {
            assert!(script.contains(command), "{shell}: no `{command}`");
        }
    }
    let out = offline(&["completion", "tcsh"], dir.path());
    assert!(!out.status.success());
}

/// Writes `files` (path, content) under `root`, creating directories.
fn write_tree(root: &Path, files: &[(&str, &str)]) {
    for (rel, text) in files {
        let path = root.join(rel);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, text).unwrap();
    }
}

/// The objects under `code/` in the dev cluster's artifact store.
fn code_objects(dev: &Dev) -> Vec<String> {
    let dir = dev.dir.path().join("state/artifacts/code");
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .map(|d| {
            d.map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    names.sort();
    names
}

/// `drover submit FILE --watch` that must succeed; returns the run's JSON.
fn submit_ok(dev: &Dev, spec: &str) -> serde_json::Value {
    let o = dev.drover(&["submit", spec, "--watch"]);
    assert!(
        o.status.success(),
        "stdout:\n{}\nstderr:\n{}\ndev log:\n{}",
        out(&o),
        err(&o),
        log_of(dev.dir.path())
    );
    let run = out(&o).lines().next().unwrap().to_string();
    let o = dev.drover(&["get", &run, "-o", "json"]);
    serde_json::from_slice(&o.stdout).unwrap()
}

const CODE_CHECK: &str = r#"set -e
[ "$(pwd -P)" = "$(cd "$DROVER_CODE" && pwd -P)" ] || { echo "cwd $(pwd) is not $DROVER_CODE"; exit 3; }
cat tool.txt
cat "$DROVER_CODE/sub/inner.txt"
[ ! -e debug.log ] || { echo "gitignored file packed"; exit 4; }
[ ! -e secret ] || { echo "droverignored dir packed"; exit 5; }
if touch new-file 2>/dev/null; then echo "snapshot dir writable"; exit 6; fi
if (echo x >> tool.txt) 2>/dev/null; then echo "snapshot file writable"; exit 7; fi
echo read-only
"#;

#[test]
fn code_snapshots_reach_every_task_read_only_and_are_stored_once() {
    let dev = Dev::start();
    let proj = dev.dir.path().join("proj");
    write_tree(
        &proj,
        &[
            ("src/tool.txt", "tool v1\n"),
            ("src/sub/inner.txt", "inner file\n"),
            ("src/.gitignore", "*.log\n"),
            ("src/debug.log", "not packed\n"),
            ("src/.droverignore", "secret/\n"),
            ("src/secret/key", "not packed either\n"),
            ("check.sh", CODE_CHECK),
        ],
    );
    let spec = proj.join("pipeline.yaml");
    let yaml = format!(
        "name: coded\ncode: src\ntasks:\n  - name: check\n    command: [sh, -c, {check}]\n  - name: inside\n    workdir: sub\n    command: [sh, -c, 'cat inner.txt && pwd']\n",
        check = serde_json::to_string(CODE_CHECK).unwrap()
    );
    std::fs::write(&spec, yaml).unwrap();
    let spec = spec.display().to_string();

    // Offline, the dry run says what would be uploaded.
    let o = offline(&["submit", "--dry-run", &spec], dev.dir.path());
    assert!(o.status.success(), "{}", err(&o));
    let dry = out(&o);
    assert!(
        dry.contains("(not uploaded)") && dry.contains("code: src"),
        "{dry}"
    );
    assert!(code_objects(&dev).is_empty(), "a dry run uploads nothing");

    let first = submit_ok(&dev, &spec);
    let digest = first["code_sha256"].as_str().unwrap().to_string();
    assert_eq!(digest.len(), 64, "{first:#}");
    assert!(dry.contains(&format!("sha256 {digest}")), "{dry}");
    assert_eq!(code_objects(&dev), vec![format!("{digest}.tar")]);
    let run = first["id"].as_str().unwrap();
    let log = out(&dev.drover(&["logs", run, "check"]));
    assert_eq!(log, "tool v1\ninner file\nread-only\n");
    let log = out(&dev.drover(&["logs", run, "inside"]));
    assert!(
        log.starts_with("inner file\n") && log.trim_end().ends_with("/sub"),
        "{log}"
    );
    assert!(out(&dev.drover(&["get", run])).contains(&format!("Code:      sha256:{digest}")));

    // Same files: same digest, still one object.
    let again = submit_ok(&dev, &spec);
    assert_eq!(again["code_sha256"], digest.as_str());
    assert_ne!(again["id"], first["id"]);
    assert_eq!(code_objects(&dev), vec![format!("{digest}.tar")]);

    // A changed file: a new digest, a second object, the new content.
    std::fs::write(proj.join("src/tool.txt"), "tool v2\n").unwrap();
    let changed = submit_ok(&dev, &spec);
    let new_digest = changed["code_sha256"].as_str().unwrap().to_string();
    assert_ne!(new_digest, digest);
    assert_eq!(code_objects(&dev).len(), 2);
    let log = out(&dev.drover(&["logs", changed["id"].as_str().unwrap(), "check"]));
    assert!(log.starts_with("tool v2\n"), "{log}");
}

/// Runs in the dev cluster, for the tests that check nothing was written.
fn run_count(dev: &Dev) -> usize {
    let o = dev.drover(&["list", "-o", "json"]);
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    v.as_array().map_or(0, Vec::len)
}

#[test]
fn bad_code_input_is_refused_naming_the_field_and_nothing_is_written() {
    let dev = Dev::start_with(&[("DROVER_MAX_CODE_BYTES", "64Ki")]);
    let proj = dev.dir.path().join("proj");
    write_tree(&proj, &[("small/a.txt", "a\n")]);
    std::fs::create_dir_all(proj.join("big")).unwrap();
    // Incompressible or not, a tar holds every byte: 100 KiB is over 64 KiB.
    std::fs::write(proj.join("big/blob"), vec![b'x'; 100 << 10]).unwrap();
    let spec = |name: &str, code: &str, extra: &str| {
        let path = proj.join(format!("{name}.yaml"));
        std::fs::write(
            &path,
            format!(
                "name: {name}\ncode: {code}\ntasks:\n  - {{name: t, command: [true]{extra}}}\n"
            ),
        )
        .unwrap();
        path.display().to_string()
    };

    // The CLI's own checks: exit 2 and one line on stderr.
    let refusal = |spec: &str| {
        let o = dev.drover(&["submit", spec]);
        assert_eq!(o.status.code(), Some(2), "{}", out(&o));
        err(&o).trim().to_owned()
    };
    let e = refusal(&spec("missing", "nope", ""));
    assert!(
        e.starts_with("error: code: `nope` is not a directory (looked for `")
            && e.contains("proj/nope"),
        "{e}"
    );

    let e = refusal(&spec("big", "big", ""));
    assert!(
        e.starts_with("error: code: `big` packs to ")
            && e.contains("the scheduler accepts at most 65536 (--max-code-bytes)"),
        "{e}"
    );

    assert_eq!(
        refusal(&spec("nodir", "small", ", workdir: sub")),
        "error: task `t`: workdir: `sub` is not a directory in code `small`"
    );

    // Straight to the API: a snapshot the store does not have, no snapshot
    // for a spec with `code:`, an upload over the limit or not matching its sha256.
    let rt = tokio::runtime::Runtime::new().unwrap();
    let server = dev.server.clone();
    let yaml = "name: direct\ncode: small\ntasks:\n  - {name: t, command: [true]}\n";
    let (unknown, missing, over, wrong) = rt.block_on(async move {
        use drover_api::pb;
        let mut client = pb::scheduler_client::SchedulerClient::connect(server)
            .await
            .unwrap();
        let submit = |code_sha256: String| pb::SubmitRunRequest {
            spec_yaml: yaml.to_owned(),
            code_sha256,
            ..Default::default()
        };
        let unknown = client
            .submit_run(submit("ab".repeat(32)))
            .await
            .unwrap_err();
        let missing = client.submit_run(submit(String::new())).await.unwrap_err();
        let put = |sha256: String, size_bytes: u64, data: Vec<u8>| {
            futures::stream::iter(vec![pb::CodeChunk {
                code: Some(pb::CodeRef { sha256, size_bytes }),
                data,
            }])
        };
        let over = client
            .put_code(put("cd".repeat(32), 1 << 20, vec![]))
            .await
            .unwrap_err();
        let wrong = client
            .put_code(put("ef".repeat(32), 3, b"abc".to_vec()))
            .await
            .unwrap_err();
        (unknown, missing, over, wrong)
    });
    assert_eq!(unknown.code(), tonic::Code::FailedPrecondition);
    assert_eq!(
        unknown.message(),
        format!(
            "code_sha256: snapshot `{}` is not in the artifact store (upload it with PutCode first)",
            "ab".repeat(32)
        )
    );
    assert_eq!(missing.code(), tonic::Code::InvalidArgument);
    assert!(
        missing.message().starts_with(
            "code_sha256: the spec has `code: small` but the request names no snapshot"
        ),
        "{}",
        missing.message()
    );
    assert_eq!(over.code(), tonic::Code::InvalidArgument);
    assert_eq!(
        over.message(),
        "code.size_bytes: the snapshot is 1048576 bytes; at most 65536 are accepted (--max-code-bytes)"
    );
    assert_eq!(wrong.code(), tonic::Code::InvalidArgument);
    assert!(
        wrong.message().starts_with(&format!(
            "code.sha256: `{}` does not match the uploaded bytes",
            "ef".repeat(32)
        )),
        "{}",
        wrong.message()
    );

    assert!(code_objects(&dev).is_empty(), "{:?}", code_objects(&dev));
    assert_eq!(run_count(&dev), 0);
}

#[test]
fn logs_follow_prints_lines_as_they_come_and_exits_when_the_run_ends() {
    use std::io::BufRead as _;
    const TICK: &str = r#"
name: tick
tasks:
  - {name: after, depends_on: [count], command: ["sh", "-c", "echo done"]}
  - {name: count, command: ["sh", "-c", "for i in 1 2 3 4; do echo n=$i; sleep 1; done"]}
"#;
    let dev = Dev::start();
    let run = dev.submit("tick.yaml", TICK);

    // The whole run, read line by line as the CLI prints it.
    let mut child = Command::new(DROVER)
        .args(["logs", "-f", &run])
        .env("DROVER_SERVER", &dev.server)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stdout).lines() {
            let _ = tx.send((Instant::now(), line.unwrap()));
        }
    });
    let mut lines = Vec::new();
    while let Ok(line) = rx.recv_timeout(Duration::from_secs(30)) {
        lines.push(line);
    }
    let status = child.wait().unwrap();
    assert!(status.success(), "{:?}", child.stderr.take());
    let text: Vec<&str> = lines.iter().map(|(_, l)| l.as_str()).collect();
    assert_eq!(
        text,
        [
            "count | n=1",
            "count | n=2",
            "count | n=3",
            "count | n=4",
            "after | done"
        ]
    );
    // `n=2` came while `count` still ran, seconds before the run ended.
    let (n2, end) = (lines[1].0, lines[4].0);
    assert!(
        end.duration_since(n2) > Duration::from_millis(1500),
        "n=2 came {:?} before the end",
        end.duration_since(n2)
    );

    // One task of the finished run: its bytes as they are, and the CLI exits.
    let o = dev.drover(&["logs", "-f", &run, "count"]);
    assert!(o.status.success(), "{}", err(&o));
    assert_eq!(out(&o), "n=1\nn=2\nn=3\nn=4\n");
    let o = dev.drover(&["logs", "-f", &run, "count", "--attempt", "1"]);
    assert!(!o.status.success());
    assert!(err(&o).contains("--attempt"), "{}", err(&o));
}

#[test]
fn lineage_prints_the_tree_behind_an_output_as_a_tree_and_as_json() {
    let dev = Dev::start();
    let proj = dev.dir.path().join("lineage");
    write_tree(&proj, &[("src/data.txt", "1,2,3\n")]);
    let spec = proj.join("pipeline.yaml");
    std::fs::write(
        &spec,
        r#"name: lin
code: src
tasks:
  - {name: prepare, command: [sh, -c, 'cp data.txt $DROVER_OUTPUTS/dataset.csv'], outputs: [{name: dataset, path: dataset.csv}]}
  - name: train
    depends_on: [prepare]
    matrix: {lr: ["0.1", "0.3"]}
    command: [sh, -c, 'echo "lr={{matrix.lr}}" | cat $DROVER_INPUTS/dataset - > $DROVER_OUTPUTS/model']
    inputs: [{name: dataset, from: prepare/dataset}]
    outputs: [{name: model, path: model}]
  - {name: evaluate, depends_on: [train], command: [sh, -c, 'cp $DROVER_INPUTS/models/1 $DROVER_OUTPUTS/best'],
     inputs: [{name: models, from: train/model}], outputs: [{name: best_model, path: best}]}
"#,
    )
    .unwrap();
    let run = submit_ok(&dev, &spec.display().to_string());
    let id = run["id"].as_str().unwrap();
    let code = run["code_sha256"].as_str().unwrap();
    let prepare = run["tasks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["name"] == "prepare")
        .unwrap();
    let dataset = prepare["attempts"][0]["outputs"][0]["sha256"]
        .as_str()
        .unwrap()
        .to_string();
    assert_eq!(dataset.len(), 64, "{prepare:#}");

    let o = dev.drover(&["lineage", id, "evaluate", "best_model"]);
    assert!(o.status.success(), "{}", err(&o));
    let tree = out(&o);
    assert!(tree.starts_with("evaluate #1  run "), "{tree}");
    assert!(
        tree.contains(&format!("  code     sha256:{code}\n")),
        "{tree}"
    );
    assert!(tree.contains("  agent    cli-agent\n"), "{tree}");
    assert!(
        tree.contains("\n  input    models ← train/model\n    train[lr=0.1] #1  sha256:"),
        "{tree}"
    );
    assert!(tree.contains("      matrix   lr=0.3\n"), "{tree}");
    assert!(
        tree.contains(&format!("        prepare #1  sha256:{dataset}\n")),
        "{tree}"
    );
    assert!(
        tree.contains(&format!(
            "        prepare #1  sha256:{dataset}  (shown above)\n"
        )),
        "{tree}"
    );

    let o = dev.drover(&["lineage", id, "evaluate", "-o", "json"]);
    assert!(o.status.success(), "{}", err(&o));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let nodes = v["nodes"].as_array().unwrap();
    assert_eq!(nodes.len(), 4, "{v:#}");
    let root = &nodes[v["roots"][0].as_u64().unwrap() as usize];
    assert_eq!(root["task"], "evaluate");
    assert_eq!(root["code_sha256"], code);
    let part = &root["inputs"][0]["parts"][1];
    let train = &nodes[part["node"].as_u64().unwrap() as usize];
    assert_eq!(train["matrix"]["lr"], "0.3");
    assert_eq!(train["inputs"][0]["parts"][0]["sha256"], dataset.as_str());

    let o = dev.drover(&["lineage", "--sha256", &dataset, "-o", "json"]);
    assert!(o.status.success(), "{}", err(&o));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["output"], "dataset");
    assert_eq!(v["nodes"][0]["task"], "prepare");

    let o = dev.drover(&["lineage", id, "evaluate", "nope"]);
    assert_eq!(o.status.code(), Some(2));
    assert_eq!(
        err(&o).trim(),
        format!("error: task `evaluate` of run `{id}` has no output `nope` (it declares: best_model) (not found)")
    );
    let o = dev.drover(&["lineage", id, "--sha256", &dataset]);
    assert_eq!(o.status.code(), Some(2), "clap refuses RUN with --sha256");
}

#[test]
fn trigger_fire_watch_exits_with_the_runs_outcome_for_ci() {
    let dev = Dev::start();
    let spec = dev.write(
        "ci.yaml",
        "name: ci\nparams: {code: \"0\"}\ntasks:\n  - name: check\n    command: [\"sh\", \"-c\", \"exit {{params.code}}\"]\n",
    );
    let o = dev.drover(&[
        "trigger",
        "create",
        "nightly",
        "--pipeline",
        &spec,
        "--cron",
        "0 3 * * *",
        "--timezone",
        "Europe/Paris",
    ]);
    assert!(o.status.success(), "{}", err(&o));
    assert!(
        out(&o).contains("cron \"0 3 * * *\" Europe/Paris"),
        "{}",
        out(&o)
    );

    let o = dev.drover(&["trigger", "fire", "nightly", "--watch"]);
    assert_eq!(o.status.code(), Some(0), "{}{}", out(&o), err(&o));
    let o = dev.drover(&["trigger", "fire", "nightly", "-p", "code=3", "--watch"]);
    assert_eq!(o.status.code(), Some(1), "a failed run fails the CI job");
    assert!(out(&o).contains("exited with code 3"), "{}", out(&o));

    let o = dev.drover(&["trigger", "show", "nightly"]);
    assert!(o.status.success(), "{}", err(&o));
    let shown = out(&o);
    assert_eq!(shown.matches("manual").count(), 2, "{shown}");
    assert!(shown.contains("started"), "{shown}");
    let o = dev.drover(&["trigger", "list"]);
    assert!(out(&o).contains("nightly"), "{}", out(&o));

    let o = dev.drover(&[
        "trigger",
        "create",
        "bad",
        "--pipeline",
        &spec,
        "--cron",
        "0 25 * * *",
    ]);
    assert_eq!(o.status.code(), Some(2));
    assert!(
        err(&o).contains("cron") && err(&o).contains("0 25 * * *"),
        "{}",
        err(&o)
    );
    let o = dev.drover(&["trigger", "fire", "nightly", "-p", "branch=main"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(err(&o).contains("branch"), "{}", err(&o));

    assert!(dev
        .drover(&["trigger", "delete", "nightly"])
        .status
        .success());
    let o = dev.drover(&["trigger", "show", "nightly"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(
        err(&o).contains("trigger `nightly` not found"),
        "{}",
        err(&o)
    );
}
