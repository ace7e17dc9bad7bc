//! Self-fencing agents: an agent cut off from NATS past the scheduler's
//! agent timeout stops its own attempts before they run elsewhere, so a
//! task's side effect happens once — through real etcd, NATS, the scheduler
//! binary, and agents reaching NATS through a relay the test can freeze.

mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use common::{task, Cluster};
use drover_api::pb::{AgentState, AttemptState, RunState, TaskState};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

const LONG: Duration = Duration::from_secs(90);

/// A TCP relay to nats-server that forwards until frozen: frozen, it keeps
/// every socket open and passes nothing on, like a network that drops
/// packets (no reset reaches either side).
struct Relay {
    url: String,
    frozen: watch::Sender<bool>,
}

impl Relay {
    async fn start(nats_url: &str) -> Self {
        let upstream = nats_url
            .trim_start_matches("nats://")
            .trim_end_matches('/')
            .to_owned();
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("nats://{}", listener.local_addr().unwrap());
        let (frozen, frozen_rx) = watch::channel(false);
        tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let Ok(server) = TcpStream::connect(&upstream).await else {
                    continue;
                };
                let (cr, cw) = client.into_split();
                let (sr, sw) = server.into_split();
                tokio::spawn(pipe(cr, sw, frozen_rx.clone()));
                tokio::spawn(pipe(sr, cw, frozen_rx.clone()));
            }
        });
        Relay { url, frozen }
    }

    fn freeze(&self, frozen: bool) {
        self.frozen.send_replace(frozen);
    }
}

/// Copies `from` to `to`, holding each chunk while frozen.
async fn pipe(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    mut frozen: watch::Receiver<bool>,
) {
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        if frozen.wait_for(|f| !*f).await.is_err() {
            return;
        }
        let n = match from.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        if frozen.wait_for(|f| !*f).await.is_err() || to.write_all(&buf[..n]).await.is_err() {
            return;
        }
    }
}

/// A task that records its start and its end in `marker`, and whether a
/// copy on another agent still ran when it started (`overlap`).
fn side_effect_spec(name: &str, scratch: &Path, secs: u32, extra: &str) -> String {
    let marker = scratch.join("marker");
    let pids = scratch.display();
    format!(
        r#"name: {name}
tasks:
  - name: work
{extra}    command: ["sh", "-c", "for f in {pids}/pid-*; do [ -f \"$f\" ] && kill -0 $(cat \"$f\") 2>/dev/null && echo overlap >> {m}; done; echo $$ > {pids}/pid-$DROVER_AGENT_ID; echo start $DROVER_AGENT_ID >> {m}; sleep {secs}; echo done $DROVER_AGENT_ID >> {m}"]
"#,
        m = marker.display(),
    )
}

fn marker(c: &Cluster) -> String {
    std::fs::read_to_string(c.scratch.join("marker")).unwrap_or_default()
}

/// Runs until the agent's first heartbeat ack has surely arrived (it
/// learns the timeout from it).
async fn settle() {
    tokio::time::sleep(Duration::from_millis(1500)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cut_off_agent_stops_its_copy_and_the_task_runs_once_elsewhere() {
    let mut c = Cluster::with_scheduler_args(&["--agent-timeout", "3s"]).await;
    let relay = Relay::start(&c.nats.url).await;
    let url = relay.url.clone();
    c.add_agent_with("cut", move |o| o.nats = url).await;
    let spec = side_effect_spec("fence", &c.scratch, 8, "");
    let id = c.submit(&spec).await.unwrap();
    c.wait_for(&id, "running on cut", |r| {
        task(r, "work").state() == TaskState::Running
    })
    .await;
    settle().await;
    c.add_agent("spare").await;
    let cut_at = Instant::now();
    relay.freeze(true);

    let run = c.wait_done(&id, LONG).await;
    assert_eq!(run.state(), RunState::Succeeded, "{run:#?}");
    let t = task(&run, "work");
    assert_eq!(t.attempts.len(), 2, "{t:#?}");
    assert_eq!(t.attempts[0].agent_id, "cut");
    assert_eq!(t.attempts[0].state(), AttemptState::Lost);
    assert_eq!(t.attempts[1].agent_id, "spare");
    assert_eq!(t.attempts[1].state(), AttemptState::Succeeded);
    // Past the end the cut-off copy would have reached unfenced.
    let unfenced_end = cut_at + Duration::from_secs(9);
    tokio::time::sleep_until(unfenced_end.into()).await;
    assert_eq!(
        marker(&c),
        "start cut\nstart spare\ndone spare\n",
        "the cut-off copy ran on (or overlapped the spare's)"
    );

    // Back in contact: the agent is Ready again and reported nothing twice.
    relay.freeze(false);
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let agents = c.agents().await;
        let cut = agents.iter().find(|a| a.id == "cut").unwrap();
        if cut.state() == AgentState::Ready {
            break;
        }
        assert!(Instant::now() < deadline, "cut agent never came back: {cut:#?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let run = c.get(&id).await;
    assert_eq!(task(&run, "work").attempts.len(), 2, "{run:#?}");
    assert_eq!(run.state(), RunState::Succeeded);
}
