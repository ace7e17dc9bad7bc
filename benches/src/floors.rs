//! What etcd, NATS and the operating system allow on this machine: the
//! floors Drover's numbers are divided by. Each is measured with the same
//! clients the scheduler and the agents use, over loopback.

use std::process::Stdio;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use async_nats::jetstream;
use bytes::Bytes;
use etcd_client::{Compare, CompareOp, Txn, TxnOp};
use futures::StreamExt;
use serde::Serialize;

use crate::stats::{rate, Summary};

/// etcd's default `--max-txn-ops`, as the scheduler batches.
const TXN_OPS: usize = 128;
/// About the size of a task record with one attempt.
const VALUE_BYTES: usize = 200;

#[derive(Debug, Clone, Serialize)]
pub struct Floors {
    /// Sequential puts, one key each.
    pub etcd_put: Summary,
    /// Keys per second through transactions of 128 compare-and-put ops.
    pub etcd_txn_keys_per_s: f64,
    pub etcd_txn: Summary,
    /// Core NATS request/reply round trip to a responder on another connection.
    pub nats_rtt: Summary,
    /// JetStream publish, one at a time, each awaiting its ack.
    pub js_publish: Summary,
    /// JetStream publishes per second with acks awaited in parallel.
    pub js_publish_per_s: f64,
    /// Spawn and reap of `true`, one at a time.
    pub spawn: Summary,
    /// Spawn and reap of `true` per second, `spawn_concurrency` at a time.
    pub spawn_per_s: f64,
    pub spawn_concurrency: usize,
}

#[derive(Debug, Clone, Copy)]
pub struct FloorSizes {
    pub etcd_puts: usize,
    pub etcd_txn_keys: usize,
    pub nats_requests: usize,
    pub js_publishes: usize,
    pub spawns: usize,
}

pub async fn measure(
    etcd_url: &str,
    nats_url: &str,
    sizes: FloorSizes,
    spawn_concurrency: usize,
) -> Result<Floors> {
    let (etcd_put, (etcd_txn, etcd_txn_keys_per_s)) = {
        let mut etcd = etcd_client::Client::connect([etcd_url], None)
            .await
            .context("connecting to etcd")?;
        (
            etcd_puts(&mut etcd, sizes.etcd_puts).await?,
            etcd_txns(&mut etcd, sizes.etcd_txn_keys).await?,
        )
    };
    let plain = || async { Ok(async_nats::connect(nats_url).await?) };
    let nats_rtt = nats_round_trips(plain, sizes.nats_requests).await?;
    let (js_publish, js_publish_per_s) = js_publishes(plain, sizes.js_publishes).await?;
    let spawn = spawn_latency(sizes.spawns.min(500)).await?;
    let spawn_per_s = spawn_rate(sizes.spawns, spawn_concurrency).await?;
    Ok(Floors {
        etcd_put,
        etcd_txn_keys_per_s,
        etcd_txn,
        nats_rtt,
        js_publish,
        js_publish_per_s,
        spawn,
        spawn_per_s,
        spawn_concurrency,
    })
}

async fn etcd_puts(etcd: &mut etcd_client::Client, n: usize) -> Result<Summary> {
    let value = vec![b'x'; VALUE_BYTES];
    let mut took = Vec::with_capacity(n);
    for i in 0..n {
        let t = Instant::now();
        etcd.put(format!("/floor/put/{i}"), value.clone(), None)
            .await
            .context("etcd put")?;
        took.push(t.elapsed());
    }
    Ok(Summary::of_durations(&took))
}

/// Transactions shaped like the scheduler's commits: every key compared
/// (`create_revision == 0`) and put, 128 per transaction, one at a time.
async fn etcd_txns(etcd: &mut etcd_client::Client, keys: usize) -> Result<(Summary, f64)> {
    etcd_txns_of(etcd, keys, TXN_OPS, "txn").await
}

/// [`etcd_txns`] with `per_txn` keys in each, under `/floor/<name>/`.
async fn etcd_txns_of(
    etcd: &mut etcd_client::Client,
    keys: usize,
    per_txn: usize,
    name: &str,
) -> Result<(Summary, f64)> {
    let value = vec![b'x'; VALUE_BYTES];
    let mut took = Vec::new();
    let start = Instant::now();
    let mut written = 0;
    while written < keys {
        let n = per_txn.min(keys - written);
        let names: Vec<String> = (written..written + n)
            .map(|i| format!("/floor/{name}/{i}"))
            .collect();
        let txn = Txn::new()
            .when(
                names
                    .iter()
                    .map(|k| Compare::create_revision(k.clone(), CompareOp::Equal, 0))
                    .collect::<Vec<_>>(),
            )
            .and_then(
                names
                    .iter()
                    .map(|k| TxnOp::put(k.clone(), value.clone(), None))
                    .collect::<Vec<_>>(),
            );
        let t = Instant::now();
        let resp = etcd.txn(txn).await.context("etcd txn")?;
        took.push(t.elapsed());
        anyhow::ensure!(resp.succeeded(), "floor transaction compare failed");
        written += n;
    }
    Ok((
        Summary::of_durations(&took),
        rate(keys as u64, start.elapsed()),
    ))
}

/// The latency of one request to etcd and to NATS, as the scheduler's and
/// agents' clients see it: what a transport (TLS, authentication) adds to
/// each is what it adds to a hop.
#[derive(Debug, Clone, Serialize)]
pub struct Transport {
    pub etcd_put: Summary,
    /// Of 4 keys, about a dependent hop's commit (a task's success, the
    /// next one's assignment).
    pub etcd_hop_txn: Summary,
    pub etcd_txn: Summary,
    pub nats_rtt: Summary,
    pub js_publish: Summary,
}

impl Transport {
    /// The sides of [`crate::secure::transport_floors`], as metric suffixes.
    pub const SIDES: [&str; 4] = ["open", "tls", "auth", "both"];
}

/// [`Transport`] through `etcd` and the NATS connections `nats` makes,
/// `n` of each request (transactions of 128 keys: `n` / 8 of them).
pub async fn transport<C, F>(etcd: &mut etcd_client::Client, nats: C, n: usize) -> Result<Transport>
where
    C: Fn() -> F,
    F: std::future::Future<Output = Result<async_nats::Client>>,
{
    Ok(Transport {
        etcd_put: etcd_puts(etcd, n).await?,
        etcd_hop_txn: etcd_txns_of(etcd, 4 * n, 4, "hop").await?.0,
        etcd_txn: etcd_txns(etcd, TXN_OPS * (n / 8).max(1)).await?.0,
        nats_rtt: nats_round_trips(&nats, n).await?,
        js_publish: js_publishes(&nats, n).await?.0,
    })
}

async fn nats_round_trips<C, F>(connect: C, n: usize) -> Result<Summary>
where
    C: Fn() -> F,
    F: std::future::Future<Output = Result<async_nats::Client>>,
{
    let responder = connect().await?;
    let requester = connect().await?;
    let mut sub = responder.subscribe("floor.rtt").await?;
    let answer = responder.clone();
    let serve = tokio::spawn(async move {
        while let Some(m) = sub.next().await {
            if let Some(to) = m.reply {
                let _ = answer.publish(to, Bytes::from_static(b"ok")).await;
            }
        }
    });
    drover_devcluster::nats_synced(&responder).await?;
    let body = Bytes::from(vec![0u8; 256]);
    let mut took = Vec::with_capacity(n);
    for _ in 0..n {
        let t = Instant::now();
        requester
            .request("floor.rtt", body.clone())
            .await
            .context("nats request")?;
        took.push(t.elapsed());
    }
    serve.abort();
    Ok(Summary::of_durations(&took))
}

/// A file-backed stream like the events stream, with `Nats-Msg-Id` on each message.
async fn js_publishes<C, F>(connect: C, n: usize) -> Result<(Summary, f64)>
where
    C: Fn() -> F,
    F: std::future::Future<Output = Result<async_nats::Client>>,
{
    let client = connect().await?;
    let js = jetstream::new(client);
    js.get_or_create_stream(jetstream::stream::Config {
        name: "FLOOR".into(),
        subjects: vec!["floor.js.>".into()],
        storage: jetstream::stream::StorageType::File,
        duplicate_window: Duration::from_secs(120),
        ..Default::default()
    })
    .await
    .context("creating the floor stream")?;
    let body = Bytes::from(vec![0u8; 128]);
    let publish = |id: String| {
        jetstream::message::PublishMessage::build()
            .payload(body.clone())
            .message_id(id)
    };
    let mut took = Vec::with_capacity(n);
    for i in 0..n {
        let t = Instant::now();
        js.send_publish("floor.js.seq", publish(format!("s{i}")))
            .await?
            .await
            .context("jetstream ack")?;
        took.push(t.elapsed());
    }
    let start = Instant::now();
    let mut acks = Vec::with_capacity(n);
    for i in 0..n {
        acks.push(
            js.send_publish("floor.js.par", publish(format!("p{i}")))
                .await?,
        );
    }
    for a in
        futures::future::join_all(acks.into_iter().map(std::future::IntoFuture::into_future)).await
    {
        a.context("jetstream ack")?;
    }
    Ok((
        Summary::of_durations(&took),
        rate(n as u64, start.elapsed()),
    ))
}

fn no_op() -> tokio::process::Command {
    let mut c = tokio::process::Command::new("true");
    c.stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .process_group(0);
    c
}

async fn spawn_latency(n: usize) -> Result<Summary> {
    let mut took = Vec::with_capacity(n);
    for _ in 0..n {
        let t = Instant::now();
        no_op().status().await.context("spawning `true`")?;
        took.push(t.elapsed());
    }
    Ok(Summary::of_durations(&took))
}

/// `n` spawns and reaps of `true`, `concurrency` in flight at a time.
async fn spawn_rate(n: usize, concurrency: usize) -> Result<f64> {
    let next = Arc::new(AtomicU64::new(0));
    let start = Instant::now();
    let mut workers = tokio::task::JoinSet::new();
    for _ in 0..concurrency.max(1) {
        let next = next.clone();
        workers.spawn(async move {
            while next.fetch_add(1, Ordering::Relaxed) < n as u64 {
                no_op().status().await?;
            }
            anyhow::Ok(())
        });
    }
    while let Some(r) = workers.join_next().await {
        r.context("spawn worker")?.context("spawning `true`")?;
    }
    Ok(rate(n as u64, start.elapsed()))
}
