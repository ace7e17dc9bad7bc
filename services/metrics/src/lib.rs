//! Prometheus metrics shared by `drover-scheduler` and `drover-agent`: the
//! `/metrics` HTTP endpoint (OpenMetrics text from a `prometheus-client`
//! registry) and helpers for collectors that render gauges from a snapshot
//! of state at scrape time, instead of gauges bumped up and down in place.

use std::convert::Infallible;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::header::{HeaderValue, ALLOW, CONTENT_TYPE};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use prometheus_client::encoding::{DescriptorEncoder, EncodeGaugeValue};
use prometheus_client::registry::Registry;
use tokio::net::TcpListener;
use tracing::{debug, info, warn};

/// What Prometheus expects for the OpenMetrics text format `prometheus-client` writes.
pub const CONTENT_TYPE_OPENMETRICS: &str =
    "application/openmetrics-text; version=1.0.0; charset=utf-8";
/// A client that sends no request head within this is dropped.
const HEADER_TIMEOUT: Duration = Duration::from_secs(10);

/// Serves `GET /metrics` from `registry` on `listener` until `shutdown`
/// resolves. Connection errors are logged, never fatal: metrics must not
/// take the service down.
pub async fn serve(
    listener: TcpListener,
    registry: Arc<Registry>,
    shutdown: impl Future<Output = ()>,
) {
    info!(listen = ?listener.local_addr().ok(), "serving metrics on /metrics");
    tokio::pin!(shutdown);
    loop {
        let (stream, peer) = tokio::select! {
            () = &mut shutdown => return,
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    // E.g. out of file descriptors: back off instead of spinning.
                    warn!(error = %e, "metrics listener: accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        let registry = Arc::clone(&registry);
        tokio::spawn(async move {
            let service = service_fn(move |req: Request<Incoming>| {
                let response = respond(req.method(), req.uri().path(), &registry);
                async move { Ok::<_, Infallible>(response) }
            });
            let conn = http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(HEADER_TIMEOUT)
                .serve_connection(TokioIo::new(stream), service);
            if let Err(e) = conn.await {
                debug!(peer = %peer, error = %e, "metrics connection ended with an error");
            }
        });
    }
}

/// The registry as OpenMetrics text: what `/metrics` serves.
pub fn text(registry: &Registry) -> Result<String, std::fmt::Error> {
    let mut body = String::new();
    prometheus_client::encoding::text::encode(&mut body, registry)?;
    Ok(body)
}

/// The answer to one request (pure apart from encoding the registry).
pub fn respond(method: &Method, path: &str, registry: &Registry) -> Response<Full<Bytes>> {
    if path != "/metrics" {
        return plain(
            StatusCode::NOT_FOUND,
            "not found: metrics are at /metrics\n",
        );
    }
    if method != Method::GET && method != Method::HEAD {
        let mut r = plain(StatusCode::METHOD_NOT_ALLOWED, "use GET\n");
        r.headers_mut()
            .insert(ALLOW, HeaderValue::from_static("GET, HEAD"));
        return r;
    }
    let body = match text(registry) {
        Ok(body) => body,
        Err(e) => {
            // Only a collector returning fmt::Error gets here.
            warn!(error = %e, "encoding metrics failed");
            return plain(
                StatusCode::INTERNAL_SERVER_ERROR,
                "encoding metrics failed\n",
            );
        }
    };
    let mut r = Response::new(Full::new(Bytes::from(body)));
    r.headers_mut().insert(
        CONTENT_TYPE,
        HeaderValue::from_static(CONTENT_TYPE_OPENMETRICS),
    );
    r
}

fn plain(status: StatusCode, text: &'static str) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from_static(text.as_bytes())));
    *r.status_mut() = status;
    r.headers_mut().insert(
        CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    r
}

/// Label pairs of one series.
pub type Labels = Vec<(&'static str, String)>;

/// Writes one gauge family from a snapshot: `series` are its label sets and
/// values. A family with no series is still described, so dashboards and
/// alerts see the name exist.
pub fn encode_gauges<V: EncodeGaugeValue>(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    series: impl IntoIterator<Item = (Labels, V)>,
) -> Result<(), std::fmt::Error> {
    let mut family = encoder.encode_descriptor(
        name,
        help,
        None,
        prometheus_client::metrics::MetricType::Gauge,
    )?;
    for (labels, value) in series {
        family.encode_family(&labels)?.encode_gauge(&value)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    type TestResult = Result<(), Box<dyn std::error::Error>>;
    use super::*;
    use http_body_util::BodyExt;
    use prometheus_client::collector::Collector;
    use prometheus_client::metrics::counter::Counter;

    #[derive(Debug)]
    struct Fixed;

    impl Collector for Fixed {
        fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
            encode_gauges(
                &mut encoder,
                "things",
                "Things by colour.",
                [
                    (vec![("colour", "red".to_string())], 2.0),
                    (vec![("colour", "a \"b\"".to_string())], 0.5),
                ],
            )?;
            encode_gauges::<u64>(&mut encoder, "empty", "Nothing yet.", [])
        }
    }

    fn registry() -> Registry {
        let mut r = Registry::with_prefix("drover_test");
        let c = Counter::<u64>::default();
        c.inc();
        r.register("hits", "Hits", c);
        r.register_collector(Box::new(Fixed));
        r
    }

    async fn body(r: Response<Full<Bytes>>) -> String {
        // A `Full` body cannot fail, and the exposition is UTF-8.
        let bytes = r.into_body().collect().await.expect("full body").to_bytes();
        String::from_utf8(bytes.to_vec()).expect("UTF-8 exposition")
    }

    #[tokio::test]
    async fn metrics_are_openmetrics_text_with_collector_gauges() {
        let r = respond(&Method::GET, "/metrics", &registry());
        assert_eq!(r.status(), StatusCode::OK);
        assert_eq!(r.headers()[CONTENT_TYPE], CONTENT_TYPE_OPENMETRICS);
        let text = body(r).await;
        let expected = "# HELP drover_test_hits Hits.\n\
                        # TYPE drover_test_hits counter\n\
                        drover_test_hits_total 1\n\
                        # HELP drover_test_things Things by colour.\n\
                        # TYPE drover_test_things gauge\n\
                        drover_test_things{colour=\"red\"} 2.0\n\
                        drover_test_things{colour=\"a \\\"b\\\"\"} 0.5\n\
                        # HELP drover_test_empty Nothing yet.\n\
                        # TYPE drover_test_empty gauge\n\
                        # EOF\n";
        assert_eq!(text, expected);
    }

    #[tokio::test]
    async fn other_paths_and_methods_are_refused() {
        let r = respond(&Method::GET, "/", &registry());
        assert_eq!(r.status(), StatusCode::NOT_FOUND);
        let r = respond(&Method::POST, "/metrics", &registry());
        assert_eq!(r.status(), StatusCode::METHOD_NOT_ALLOWED);
        assert_eq!(r.headers()[ALLOW], "GET, HEAD");
    }

    #[tokio::test]
    async fn serves_over_http_until_shutdown() -> TestResult {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let server = tokio::spawn(serve(listener, Arc::new(registry()), async {
            let _ = stopped.await;
        }));
        let mut s = tokio::net::TcpStream::connect(addr).await?;
        s.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            .await?;
        let mut out = String::new();
        s.read_to_string(&mut out).await?;
        assert!(out.starts_with("HTTP/1.1 200 OK\r\n"), "{out}");
        assert!(out.contains("drover_test_hits_total 1\n"), "{out}");
        assert!(out.ends_with("# EOF\n"), "{out}");
        let _ = stop.send(());
        server.await?;
        Ok(())
    }
}
