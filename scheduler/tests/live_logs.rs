//! `GetLogs` with `follow` on real etcd, NATS, scheduler and agents: output
//! while the task runs, what it printed before the follower attached, the
//! seam with the stored log, later attempts, and whole runs.

mod common;

use std::collections::BTreeMap;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use common::{task, Cluster};
use drover_api::pb;
use futures::StreamExt;

/// Follows the run (or one task) and returns every chunk with when it came,
/// and when the stream ended.
async fn follow(
    c: &Cluster,
    run: &str,
    task: &str,
    mut on_chunk: impl FnMut(&pb::LogChunk),
) -> (Vec<(Instant, pb::LogChunk)>, Instant) {
    let mut stream = c.log_stream(run, task, 0, true).await.unwrap();
    let mut chunks = Vec::new();
    let all = async {
        while let Some(chunk) = stream.next().await {
            let chunk = chunk.unwrap();
            on_chunk(&chunk);
            chunks.push((Instant::now(), chunk));
        }
    };
    if tokio::time::timeout(Duration::from_secs(60), all)
        .await
        .is_err()
    {
        panic!(
            "follow did not end: {:#?}\nscheduler log:\n{}",
            c.get(run).await,
            c.scheduler_log()
        );
    }
    (chunks, Instant::now())
}

/// The next chunk of a stream, `None` at its end.
async fn next(stream: &mut tonic::Streaming<pb::LogChunk>) -> Option<pb::LogChunk> {
    let next = tokio::time::timeout(Duration::from_secs(30), stream.next());
    next.await.expect("no chunk in 30 s").map(Result::unwrap)
}

/// The followed bytes of each (task, attempt), in order.
fn by_attempt(chunks: &[(Instant, pb::LogChunk)]) -> BTreeMap<(String, u32), String> {
    let mut out: BTreeMap<(String, u32), String> = BTreeMap::new();
    for (_, c) in chunks {
        out.entry((c.task.clone(), c.attempt))
            .or_default()
            .push_str(&String::from_utf8_lossy(&c.data));
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_followed_task_shows_lines_while_it_runs_and_its_whole_log_exactly_once() {
    let c = Cluster::start().await;
    // 300 kB at once (more than one read from the agent), then a line a second.
    let run = c
        .submit(
            r#"
name: ticker
tasks:
  - name: tick
    command: ["sh", "-c", "head -c 300000 /dev/zero | tr '\\0' x; echo; for i in 1 2 3 4 5 6; do echo line $i; sleep 1; done; echo bye"]
"#,
        )
        .await
        .unwrap();
    c.wait_for(&run, "tick running", |r| {
        task(r, "tick").state() == pb::TaskState::Running
    })
    .await;
    // Attach after the task has printed its first lines.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let attached = Instant::now();

    let mut first_new_line = None;
    let (chunks, ended) = follow(&c, &run, "tick", |chunk| {
        let text = String::from_utf8_lossy(&chunk.data);
        if first_new_line.is_none() && text.contains("line 5") {
            let now_ms = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .unwrap()
                .as_millis() as u64;
            first_new_line = Some((Instant::now(), now_ms));
        }
    })
    .await;

    // "line 5" is printed about 4 s after the start, the task ends about
    // 2 s later: it came live, well before the end.
    let (line5, line5_ms) = first_new_line.expect("line 5 never came");
    assert!(
        ended.duration_since(line5) > Duration::from_millis(1200),
        "line 5 came {:?} before the end",
        ended.duration_since(line5)
    );
    let r = c.get(&run).await;
    assert_eq!(r.state(), pb::RunState::Succeeded, "{r:#?}");
    let attempts = &task(&r, "tick").attempts;
    assert_eq!(attempts.len(), 1);
    // The task was still running (on the agent's clock, this machine's).
    assert!(
        line5_ms + 1000 < attempts[0].finished_at_ms,
        "line 5 came at {line5_ms}, the attempt ended at {}",
        attempts[0].finished_at_ms
    );

    // Exactly the stored log: nothing lost or repeated at either seam
    // (the log so far → live chunks → the stored rest).
    let followed = by_attempt(&chunks);
    let stored = c.logs(&run, "tick", 1).await.unwrap();
    let expected = format!(
        "{}\nline 1\nline 2\nline 3\nline 4\nline 5\nline 6\nbye\n",
        "x".repeat(300_000)
    );
    assert_eq!(stored, expected);
    assert_eq!(followed.len(), 1, "{:?}", followed.keys());
    assert!(
        followed[&("tick".to_string(), 1)] == expected,
        "followed log differs from the stored one:\n{:?}",
        &followed[&("tick".to_string(), 1)][300_000..]
    );
    // What was printed before the follower attached came first, at once.
    let early = chunks
        .iter()
        .take_while(|(at, _)| at.duration_since(attached) < Duration::from_millis(900))
        .map(|(_, c)| String::from_utf8_lossy(&c.data).into_owned())
        .collect::<String>();
    assert!(early.contains("line 1\nline 2\n"), "{early:?}");
    // The first chunk announces the attempt.
    assert!(chunks[0].1.data.is_empty() && chunks[0].1.attempt == 1);

    // Following a finished task gives its stored log and ends.
    let (again, _) = follow(&c, &run, "tick", |_| {}).await;
    assert_eq!(by_attempt(&again)[&("tick".to_string(), 1)], expected);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn following_a_run_gives_every_task_and_attempt_and_ends_with_the_run() {
    const SPEC: &str = r#"
name: sweep
tasks:
  - name: train
    matrix: {lr: ["0.1", "0.3"]}
    command: ["sh", "-c", "echo lr={{matrix.lr}} start; sleep 1; printf 'lr={{matrix.lr}} end'"]
  - name: flaky
    retries: {limit: 1, backoff: 1s}
    command: ["sh", "-c", "echo try; sleep 1; if [ ! -e MARKER ]; then touch MARKER; echo failing; exit 3; fi; echo ok"]
  - name: report
    depends_on: [train, flaky]
    command: ["sh", "-c", "echo report"]
"#;
    let mut c = Cluster::start().await;
    c.add_agent("agent-2").await;
    let marker = c.scratch.join("flaky-once");
    let run = c
        .submit(&SPEC.replace("MARKER", &marker.display().to_string()))
        .await
        .unwrap();
    let (chunks, _) = follow(&c, &run, "", |_| {}).await;
    // The stream ends only once the run has.
    let r = c.get(&run).await;
    assert_eq!(r.state(), pb::RunState::Succeeded, "{r:#?}");

    let followed = by_attempt(&chunks);
    let mut expected = BTreeMap::new();
    for t in &r.tasks {
        for a in &t.attempts {
            let stored = c.logs(&run, &t.name, a.number).await.unwrap();
            expected.insert((t.name.clone(), a.number), stored);
        }
    }
    assert_eq!(followed, expected);
    assert_eq!(
        followed[&("train[lr=0.3]".to_string(), 1)],
        "lr=0.3 start\nlr=0.3 end"
    );
    assert_eq!(
        followed[&("flaky".to_string(), 1)].lines().nth(1),
        Some("failing")
    );
    assert_eq!(followed[&("flaky".to_string(), 2)], "try\nok\n");
    // The retry is announced before its bytes.
    let announced = chunks
        .iter()
        .position(|(_, c)| c.task == "flaky" && c.attempt == 2)
        .unwrap();
    assert!(chunks[announced].1.data.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn follow_requests_are_checked() {
    let c = Cluster::start().await;
    let mut client = c.client().await;
    let ask = |run: &str, task: &str, attempt: u32| pb::GetLogsRequest {
        run_id: run.into(),
        task: task.into(),
        attempt,
        follow: true,
    };
    let e = client.get_logs(ask("nope", "", 0)).await.unwrap_err();
    assert_eq!(e.code(), tonic::Code::NotFound, "{e}");
    let run = c
        .submit("name: one\ntasks:\n  - name: a\n    command: [\"true\"]\n")
        .await
        .unwrap();
    let e = client.get_logs(ask(&run, "b", 0)).await.unwrap_err();
    assert_eq!(e.code(), tonic::Code::NotFound, "{e}");
    assert!(e.message().contains("`b`"), "{e}");
    let e = client.get_logs(ask(&run, "a", 2)).await.unwrap_err();
    assert_eq!(e.code(), tonic::Code::InvalidArgument, "{e}");
    assert!(e.message().starts_with("attempt: 2"), "{e}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_attempt_lost_with_its_agent_ends_where_live_output_stopped_and_the_next_follows() {
    let mut c = Cluster::with_scheduler_args(&["--agent-timeout", "1s"]).await;
    c.add_agent("agent-1").await;
    let run = c
        .submit("name: lost\ntasks:\n  - name: slow\n    command: [\"sh\", \"-c\", \"echo a; sleep 2; echo b\"]\n")
        .await
        .unwrap();
    let mut stream = c.log_stream(&run, "slow", 0, true).await.unwrap();
    let mut chunks = Vec::new();
    while !chunks
        .iter()
        .any(|(_, c): &(Instant, pb::LogChunk)| c.data == b"a\n")
    {
        let chunk = next(&mut stream).await.expect("ended before `a`");
        chunks.push((Instant::now(), chunk));
    }
    // The machine dies while the task sleeps; another one takes the task.
    c.kill_agent("agent-1");
    c.add_agent("agent-2").await;
    while let Some(chunk) = next(&mut stream).await {
        chunks.push((Instant::now(), chunk));
    }

    let r = c.get(&run).await;
    let attempts = &task(&r, "slow").attempts;
    assert_eq!(attempts.len(), 2, "{r:#?}");
    assert_eq!(attempts[0].state(), pb::AttemptState::Lost);
    let followed = by_attempt(&chunks);
    assert_eq!(followed[&("slow".to_string(), 1)], "a\n");
    assert_eq!(followed[&("slow".to_string(), 2)], "a\nb\n");
    assert_eq!(c.logs(&run, "slow", 2).await.unwrap(), "a\nb\n");
}
