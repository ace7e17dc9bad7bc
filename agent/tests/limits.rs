//! Runaway tasks against a real agent: a full work disk, endless output,
//! daemons escaping the task's process group, oversized outputs.

mod common;

use std::os::unix::fs::MetadataExt as _;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use common::*;
use drover_api::pb::attempt_event::Kind;

/// A size-limited tmpfs, unmounted on drop (after the agent using it).
struct SmallDisk {
    dir: PathBuf,
    _tmp: tempfile::TempDir,
}

impl SmallDisk {
    fn mount(size: &str) -> Result<Self> {
        let tmp = tempfile::tempdir()?;
        let dir = tmp.path().join("disk");
        std::fs::create_dir(&dir)?;
        let status = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(&dir)
            .status()
            .context("running mount")?;
        // The tests run as root (as in CI): a failed mount is a failure, not a skip.
        ensure!(
            status.success(),
            "mounting a tmpfs at {} failed: {status}",
            dir.display()
        );
        Ok(SmallDisk { dir, _tmp: tmp })
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        // Lazy: a process still holding a file there cannot keep it mounted.
        let _ = std::process::Command::new("umount")
            .arg("-l")
            .arg(&self.dir)
            .status();
    }
}

fn failure_reason(ev: &Event) -> Result<String> {
    match ev.kind() {
        Kind::Failed(f) => Ok(f.reason.clone()),
        other => bail!("expected a failure, got {other:?}"),
    }
}

#[tokio::test]
async fn a_task_filling_the_work_disk_fails_naming_it_and_the_next_one_succeeds() -> Result<()> {
    let disk = SmallDisk::mount("16m")?;
    let work_dir = disk.dir.join("work");
    let h = Harness::start_with(|o| o.work_dir = work_dir.clone()).await?;
    let mut events = h.events().await?;

    let filler = attempt_ref("r1", "fill", 1);
    let script = r#"dd if=/dev/zero of="$DROVER_OUTPUTS/fill" bs=1M count=64"#;
    let a = with_output(assignment(&filler, &sh(script)), "fill", "fill");
    assert!(h.assign(&a).await?.accepted);
    let reason = failure_reason(&events.final_event(&filler).await?)?;
    assert!(
        reason.contains("no space left on device") && reason.contains("`outputs/fill`"),
        "{reason}"
    );
    // Its files were removed before it was reported, its log kept: the
    // agent's note made it in.
    let log = h.store.get_bytes("runs/r1/fill.1.log").await?;
    let log = String::from_utf8_lossy(&log);
    assert!(log.contains("[drover-agent] attempt failed: "), "{log}");

    // The failed attempt's files are gone: the next task has the space.
    let next = attempt_ref("r1", "after", 1);
    let script = r#"head -c 8000000 /dev/zero > "$DROVER_OUTPUTS/o" && echo done"#;
    let a = with_output(assignment(&next, &sh(script)), "o", "o");
    assert!(h.assign(&a).await?.accepted);
    let fin = events.final_event(&next).await?;
    let Kind::Succeeded(ok) = fin.kind() else {
        bail!("the task after the full disk did not succeed: {fin:?}");
    };
    assert_eq!(ok.outputs.first().map(|o| o.size), Some(8_000_000));
    drop(h);
    drop(disk);
    Ok(())
}

/// The peak resident set of this process (the agent runs in it), in bytes.
fn peak_rss() -> Result<u64> {
    let status = std::fs::read_to_string("/proc/self/status")?;
    let kib: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .context("no VmHWM in /proc/self/status")?;
    Ok(kib * 1024)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn endless_output_is_stored_as_head_marker_and_tail_with_disk_and_memory_bounded(
) -> Result<()> {
    const CAP: u64 = 1 << 20;
    let h = Harness::start_with(|o| o.max_log_bytes = CAP).await?;
    let mut events = h.events().await?;
    let before = peak_rss()?;

    let a = attempt_ref("r1", "chatty", 1);
    let printed = h.scratch.join("printed");
    // 200 MiB, then a pause in which the log on disk is looked at.
    let script = format!(
        r#"echo HEAD-START
yes 0123456789abcdef | head -c 209715200
echo
touch {printed}
sleep 1
echo TAIL-END"#,
        printed = printed.display()
    );
    assert!(h.assign(&assignment(&a, &sh(&script))).await?.accepted);

    let deadline = Instant::now() + Duration::from_secs(60);
    while !printed.exists() {
        ensure!(
            Instant::now() < deadline,
            "the task never finished printing"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    // A process attempt's log is in its slot, `_process/0`.
    let log = h.work_dir.join("_process/0/drover-attempt.log");
    let meta = std::fs::metadata(&log)?;
    assert!(
        meta.len() > 200 << 20,
        "the task wrote {} bytes",
        meta.len()
    );
    let on_disk = meta.blocks() * 512;
    assert!(
        on_disk < 3 * CAP,
        "{on_disk} bytes of the log on disk, cap {CAP}"
    );

    let fin = events.final_event(&a).await?;
    let Kind::Succeeded(ok) = fin.kind() else {
        bail!("expected success, got {fin:?}");
    };
    let stored = h.store.get_bytes(&ok.log_key).await?;
    let len = stored.len() as u64;
    assert!((CAP..CAP + 512).contains(&len), "stored log of {len} bytes");
    let text = String::from_utf8_lossy(&stored);
    assert!(
        text.starts_with("HEAD-START\n0123456789abcdef\n"),
        "{}",
        &text[..64]
    );
    // `head -c` cut the last line short; `echo` ended it.
    assert!(
        text.ends_with("\n0123456789abcdef\n0123\nTAIL-END\n"),
        "{}",
        &text[text.len() - 64..]
    );
    let dropped = 11 + 209_715_200 + 1 + 9 - CAP;
    assert!(
        text.contains(&format!(
            "[drover-agent] … {dropped} bytes of output dropped here"
        )),
        "no marker for {dropped} dropped bytes"
    );
    let grown = peak_rss()?.saturating_sub(before);
    assert!(
        grown < 32 << 20,
        "the agent's peak RSS grew by {grown} bytes"
    );
    Ok(())
}

/// Whether `pid` runs (a zombie, dead but not yet reaped by init, does not).
fn alive(pid: i32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|stat| {
        let state = stat.rsplit_once(')').map(|(_, rest)| rest.trim_start());
        !matches!(state.and_then(|s| s.chars().next()), Some('Z' | 'X') | None)
    })
}

async fn wait_gone(pid: i32, within: Duration) -> bool {
    let deadline = Instant::now() + within;
    while alive(pid) {
        if Instant::now() > deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    true
}

/// A daemon in a session of its own (`setsid`, so out of the task's
/// process group), started in the background by a shell that goes on.
fn daemon_script(pid_file: &Path, then: &str) -> String {
    format!(
        r#"( setsid sh -c 'echo $$ > {pid}; exec sleep 300' </dev/null >/dev/null 2>&1 & )
while [ ! -s {pid} ]; do sleep 0.01; done
{then}"#,
        pid = pid_file.display()
    )
}

/// Runs a task that starts a daemon then does `then`, cancelling it when
/// `cancel`; with `cgroups` the daemon must be gone once the attempt is
/// reported, without them it is out of the agent's reach (and killed here).
async fn the_daemon_dies_with_the_attempt(then: &str, cancel: bool, cgroups: bool) -> Result<()> {
    let h = Harness::start_with(|o| o.task_cgroups = cgroups).await?;
    let mut events = h.events().await?;
    let pid_file = h.scratch.join("daemon.pid");
    let a = attempt_ref("r1", "daemonize", 1);
    let script = daemon_script(&pid_file, then);
    assert!(h.assign(&assignment(&a, &sh(&script))).await?.accepted);
    let pid = read_pid(&pid_file).await?;
    if cancel {
        assert!(alive(pid));
        assert!(h.cancel(&a, 100).await?.found);
    }
    let fin = events.final_event(&a).await?;
    let ended_as_asked = match fin.kind() {
        Kind::Failed(f) => cancel && f.cancelled,
        Kind::Succeeded(_) => !cancel,
        _ => false,
    };
    ensure!(ended_as_asked, "{fin:?}");
    // Killed before the attempt was reported (a zombie counts as gone).
    let gone = wait_gone(pid, Duration::from_millis(200)).await;
    if !cgroups {
        // SAFETY: kill takes plain integers; `pid` is the test's own daemon.
        unsafe { libc::kill(pid, libc::SIGKILL) };
        assert!(
            !gone,
            "without cgroups, what left the process group is out of reach"
        );
        return Ok(());
    }
    assert!(gone, "daemon {pid} outlived its attempt");
    Ok(())
}

#[tokio::test]
async fn a_daemon_that_left_the_process_group_dies_when_the_attempt_ends() -> Result<()> {
    the_daemon_dies_with_the_attempt("exit 0", false, true).await
}

#[tokio::test]
async fn without_task_cgroups_only_the_process_group_is_killed() -> Result<()> {
    the_daemon_dies_with_the_attempt("exit 0", false, false).await
}

#[tokio::test]
async fn a_daemon_of_a_cancelled_task_dies_with_it() -> Result<()> {
    the_daemon_dies_with_the_attempt("sleep 300", true, true).await
}

#[tokio::test]
async fn an_output_over_max_output_bytes_fails_the_attempt_before_upload() -> Result<()> {
    let h = Harness::start_with(|o| o.max_output_bytes = Some(1000)).await?;
    let mut events = h.events().await?;
    let a = attempt_ref("r1", "big", 1);
    let script = r#"head -c 1000 /dev/zero > "$DROVER_OUTPUTS/ok"; head -c 2000 /dev/zero > "$DROVER_OUTPUTS/big""#;
    let assigned = with_output(
        with_output(assignment(&a, &sh(script)), "ok", "ok"),
        "big",
        "big",
    );
    assert!(h.assign(&assigned).await?.accepted);
    let reason = failure_reason(&events.final_event(&a).await?)?;
    assert_eq!(
        reason,
        "output `big` at outputs/big has 2000 bytes, over the agent's --max-output-bytes 1000"
    );
    assert!(
        h.store
            .get_bytes("runs/r1/big.1/outputs/big")
            .await
            .is_err(),
        "the oversized output was uploaded"
    );
    Ok(())
}
