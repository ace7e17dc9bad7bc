//! A TCP relay to nats-server the test controls: it forwards until frozen;
//! frozen, it keeps every socket open and passes nothing on, like a network
//! that drops packets (no reset reaches either side); cut, it closes every
//! connection and drops what it held, like a server or link that died with
//! messages on the wire. New connections are relayed after a cut.

use std::sync::{Arc, Mutex};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::AbortHandle;

pub struct Relay {
    pub url: String,
    frozen: watch::Sender<bool>,
    /// Every connection's two pipes, ended by [`Relay::cut`].
    pipes: Arc<Mutex<Vec<AbortHandle>>>,
}

impl Relay {
    pub async fn start(nats_url: &str) -> Self {
        let upstream = nats_url
            .trim_start_matches("nats://")
            .trim_end_matches('/')
            .to_owned();
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("nats://{}", listener.local_addr().unwrap());
        let (frozen, frozen_rx) = watch::channel(false);
        let pipes = Arc::new(Mutex::new(Vec::new()));
        let kept = pipes.clone();
        tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let Ok(server) = TcpStream::connect(&upstream).await else {
                    continue;
                };
                let (cr, cw) = client.into_split();
                let (sr, sw) = server.into_split();
                let up = tokio::spawn(pipe(cr, sw, frozen_rx.clone()));
                let down = tokio::spawn(pipe(sr, cw, frozen_rx.clone()));
                if let Ok(mut pipes) = kept.lock() {
                    pipes.extend([up.abort_handle(), down.abort_handle()]);
                }
            }
        });
        Relay { url, frozen, pipes }
    }

    pub fn freeze(&self, frozen: bool) {
        self.frozen.send_replace(frozen);
    }

    /// Closes every connection (what they held is lost) and thaws the relay.
    pub fn cut(&self) {
        if let Ok(mut pipes) = self.pipes.lock() {
            for pipe in pipes.drain(..) {
                pipe.abort();
            }
        }
        self.freeze(false);
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
