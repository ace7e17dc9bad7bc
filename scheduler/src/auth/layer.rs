//! The tower layer in front of every gRPC service: reads the bearer token,
//! decides with [`super::policy`], and refuses, logs and counts, or passes
//! the [`Caller`] on in the request's extensions.

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use tonic::transport::server::{TcpConnectInfo, TlsConnectInfo};
use tracing::warn;

use super::policy::{self, Caller, Needed, Refusal};
use super::TokenTable;
use crate::engine::now_ms;
use crate::options::AuthMode;

type RefusedLabels = [(&'static str, &'static str); 2];

/// Refused calls: each is logged and counted in
/// `drover_scheduler_api_refused_total{reason,method}`.
#[derive(Clone, Debug, Default)]
pub struct Refusals(pub Family<RefusedLabels, Counter>);

impl Refusals {
    /// Logs and counts `refusal` of a call to `path`, and turns it into
    /// the status the caller gets.
    pub fn refuse(&self, path: &str, refusal: Refusal, peer: Option<SocketAddr>) -> tonic::Status {
        warn!(
            method = path,
            reason = refusal.reason(),
            token = refusal.token_name().unwrap_or(""),
            peer = ?peer,
            "api call refused: {refusal}"
        );
        self.0
            .get_or_create(&[
                ("reason", refusal.reason()),
                ("method", policy::method_label(path)),
            ])
            .inc();
        refusal.into()
    }

    /// A queue limit, checked by a handler that knows the request's queue.
    pub fn check_queue(
        &self,
        who: &Who,
        path: &str,
        verb: &'static str,
        queue: &str,
    ) -> Result<(), tonic::Status> {
        match &who.caller {
            Some(caller) => policy::may_use_queue(caller, verb, queue)
                .map_err(|r| self.refuse(path, r, who.peer)),
            None => Ok(()),
        }
    }
}

/// A request's caller (None with `--auth none`) and address, taken before
/// the handler consumes the request.
#[derive(Clone, Debug)]
pub struct Who {
    pub caller: Option<Caller>,
    pub peer: Option<SocketAddr>,
}

impl Who {
    pub fn of<T>(req: &tonic::Request<T>) -> Self {
        Self {
            caller: req.extensions().get::<Caller>().cloned(),
            peer: req.remote_addr(),
        }
    }

    /// Whether queue limits apply: only then must a handler find the queue.
    pub fn limited(&self) -> bool {
        self.caller
            .as_ref()
            .is_some_and(|c| c.role == policy::Role::Submitter && !c.queues.is_empty())
    }
}

struct Gate {
    mode: AuthMode,
    table: TokenTable,
    refusals: Refusals,
}

impl Gate {
    /// The caller, None when no token is needed, or the refusal's status.
    fn check<B>(&self, req: &http::Request<B>) -> Result<Option<Caller>, tonic::Status> {
        let path = req.uri().path();
        if self.mode == AuthMode::None || policy::needed(path) == Needed::Open {
            return Ok(None);
        }
        let header = req
            .headers()
            .get(http::header::AUTHORIZATION)
            .map(|v| v.to_str().unwrap_or(""));
        let decided = policy::bearer(header)
            .and_then(|token| self.table.identify(token, now_ms()))
            .and_then(|caller| policy::authorize(&caller, path).map(|()| caller));
        decided
            .map(Some)
            .map_err(|r| self.refusals.refuse(path, r, peer(req)))
    }
}

/// The caller's address, as the server recorded it for the connection.
fn peer<B>(req: &http::Request<B>) -> Option<SocketAddr> {
    let ext = req.extensions();
    ext.get::<TcpConnectInfo>()
        .and_then(TcpConnectInfo::remote_addr)
        .or_else(|| {
            ext.get::<TlsConnectInfo<TcpConnectInfo>>()
                .and_then(|i| i.get_ref().remote_addr())
        })
}

/// `Server::builder().layer(AuthLayer::new(…))`.
#[derive(Clone)]
pub struct AuthLayer(Arc<Gate>);

impl AuthLayer {
    pub fn new(mode: AuthMode, table: TokenTable, refusals: Refusals) -> Self {
        Self(Arc::new(Gate {
            mode,
            table,
            refusals,
        }))
    }
}

impl<S> tower_layer::Layer<S> for AuthLayer {
    type Service = AuthService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        AuthService {
            gate: Arc::clone(&self.0),
            inner,
        }
    }
}

#[derive(Clone)]
pub struct AuthService<S> {
    gate: Arc<Gate>,
    inner: S,
}

type BoxFuture<T, E> = Pin<Box<dyn Future<Output = Result<T, E>> + Send>>;

impl<S, B, R> tower_service::Service<http::Request<B>> for AuthService<S>
where
    S: tower_service::Service<http::Request<B>, Response = http::Response<R>>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
    R: Default + Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = BoxFuture<Self::Response, Self::Error>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: http::Request<B>) -> Self::Future {
        match self.gate.check(&req) {
            Ok(Some(caller)) => {
                req.extensions_mut().insert(caller);
            }
            Ok(None) => {}
            Err(status) => {
                let webhook = policy::is_webhook(req.uri().path());
                let code = status.code();
                let mut refused = status.into_http();
                // A webhook's sender reads the HTTP status, not grpc-status.
                if webhook {
                    *refused.status_mut() = match code {
                        tonic::Code::PermissionDenied => http::StatusCode::FORBIDDEN,
                        _ => http::StatusCode::UNAUTHORIZED,
                    };
                }
                return Box::pin(std::future::ready(Ok(refused)));
            }
        }
        // The clone is ready only after its own poll_ready: call the one
        // that was polled, keep the clone for next time.
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        Box::pin(inner.call(req))
    }
}
