//! Alertmanager's webhook: `POST /hooks/alertmanager/<trigger>` on the API
//! port (same TLS, same bearer tokens: Alertmanager's `http_config`
//! `authorization` sends one). One run per alert group firing; repeats and
//! resolutions start nothing. 4xx answers are not retried by Alertmanager,
//! 5xx are.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http::{Method, StatusCode};
use http_body_util::{BodyExt, Full, Limited};
use serde::Deserialize;
use tracing::{info, warn};

use drover_api::pb::trigger_settings::Source;
use drover_scheduler_core::triggers::alerts::{self, Outcome};

use crate::error::SchedulerError;
use crate::leader::Leadership;
use crate::store::Write;

use super::fire::Cause;
use super::{records, Triggers};

/// Largest notification read (Alertmanager truncates long alert lists).
const MAX_BODY_BYTES: usize = 1 << 20;

/// Alertmanager's webhook payload (version 4), the parts used.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Notification {
    pub group_key: String,
    pub status: String,
    #[serde(default)]
    pub common_labels: BTreeMap<String, String>,
    #[serde(default)]
    pub common_annotations: BTreeMap<String, String>,
}

impl Notification {
    /// What the run gets (each only where the pipeline declares it).
    fn params(&self) -> BTreeMap<String, String> {
        let json = |m: &BTreeMap<String, String>| serde_json::to_string(m).unwrap_or_default();
        BTreeMap::from([
            ("alert_labels".to_string(), json(&self.common_labels)),
            (
                "alert_annotations".to_string(),
                json(&self.common_annotations),
            ),
            ("alert_group".to_string(), self.group_key.clone()),
        ])
    }
}

/// The `/hooks/*` service mounted on the gRPC server.
#[derive(Clone)]
pub struct Hooks {
    pub triggers: Triggers,
    pub leadership: Leadership,
}

impl tonic::server::NamedService for Hooks {
    const NAME: &'static str = "hooks";
}

type Reply = http::Response<tonic::body::Body>;

fn reply(status: StatusCode, message: impl Into<String>) -> Reply {
    let body = tonic::body::Body::new(Full::new(Bytes::from(message.into() + "\n")));
    let mut r = http::Response::new(body);
    *r.status_mut() = status;
    r
}

impl tower_service::Service<http::Request<tonic::body::Body>> for Hooks {
    type Response = Reply;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Reply, Infallible>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: http::Request<tonic::body::Body>) -> Self::Future {
        let this = self.clone();
        Box::pin(async move { Ok(this.handle(req).await) })
    }
}

impl Hooks {
    async fn handle(&self, req: http::Request<tonic::body::Body>) -> Reply {
        let path = req.uri().path().to_string();
        let Some(name) = path.strip_prefix("/hooks/alertmanager/") else {
            return reply(StatusCode::NOT_FOUND, format!("no hook at {path}"));
        };
        let name = name.trim_end_matches('/').to_string();
        if req.method() != Method::POST {
            return reply(
                StatusCode::METHOD_NOT_ALLOWED,
                "POST an Alertmanager notification",
            );
        }
        if let Some(refusal) = self.leadership.refusal() {
            return reply(StatusCode::SERVICE_UNAVAILABLE, refusal.message());
        }
        let body = match Limited::new(req.into_body(), MAX_BODY_BYTES)
            .collect()
            .await
        {
            Ok(b) => b.to_bytes(),
            Err(e) => return reply(StatusCode::BAD_REQUEST, format!("reading the body: {e}")),
        };
        let note: Notification = match serde_json::from_slice(&body) {
            Ok(n) => n,
            Err(e) => {
                return reply(
                    StatusCode::BAD_REQUEST,
                    format!("not an Alertmanager notification: {e}"),
                )
            }
        };
        match self.notify(&name, &note).await {
            Ok(message) => reply(StatusCode::OK, message),
            Err(e @ (SchedulerError::NotFound(_) | SchedulerError::InvalidArgument { .. })) => {
                reply(StatusCode::NOT_FOUND, e.to_string())
            }
            Err(e) => {
                warn!(trigger = %name, error = %e, "alert notification failed; Alertmanager retries it");
                reply(StatusCode::SERVICE_UNAVAILABLE, e.to_string())
            }
        }
    }

    /// Applies one notification to trigger `name`; returns what happened.
    async fn notify(&self, name: &str, note: &Notification) -> Result<String, SchedulerError> {
        let store = &self.triggers.store;
        for _ in 0..5 {
            let (record, _) = records::get(store, name)
                .await?
                .ok_or_else(|| SchedulerError::NotFound(format!("trigger `{name}` not found")))?;
            let is_alert = record
                .settings
                .as_ref()
                .is_some_and(|s| matches!(s.source, Some(Source::Alert(_))));
            if !is_alert {
                return Err(SchedulerError::InvalidArgument {
                    field: "trigger",
                    message: format!("trigger `{name}` is not an --on-alert trigger"),
                });
            }
            if record.paused {
                return Ok(format!("trigger `{name}` is paused; ignored"));
            }
            let (state, rev) = records::alert_group(store, name, &note.group_key).await?;
            match alerts::on_notification(state, note.status == "firing") {
                Outcome::Ignore => return Ok("nothing to do".into()),
                Outcome::Record(state) => {
                    let key = records::alert_key(store, name, &note.group_key);
                    let write = Write::put(key, records::alert_value(state), rev);
                    match store.commit_writes(vec![vec![write]]).await {
                        Ok(_) => return Ok(format!("alert group {:?}", state).to_lowercase()),
                        Err(SchedulerError::Conflict) => continue,
                        Err(e) => return Err(e),
                    }
                }
                Outcome::Fire => {
                    let cause = Cause::Alert {
                        group_key: note.group_key.clone(),
                        group_rev: rev,
                        params: note.params(),
                    };
                    match self.triggers.fire(name, cause).await {
                        Ok(Some(firing)) => {
                            info!(trigger = %name, run = %firing.run_id, "alert fired");
                            return Ok(format!("run {}", firing.run_id));
                        }
                        // Waits for the previous run (forbid): the repeat fires it.
                        Ok(None) => return Ok("the previous run still runs; not fired".into()),
                        Err(SchedulerError::Conflict) => continue,
                        Err(e) => return Err(e),
                    }
                }
            }
        }
        Err(SchedulerError::Conflict)
    }
}
