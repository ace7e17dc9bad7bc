//! The `drover.v1.Tokens` service (admin only, as the layer enforces).

use tonic::{Request, Response, Status};

use drover_api::pb;
use drover_api::pb::tokens_server;

use super::policy::{Caller, Role};
use super::{NewToken, Tokens};
use crate::error::SchedulerError;

#[derive(Clone)]
pub struct TokensApi {
    pub tokens: Tokens,
}

/// A record as listed: everything but the hash.
pub fn info(r: &pb::TokenRecord) -> pb::TokenInfo {
    pb::TokenInfo {
        name: r.name.clone(),
        role: r.role,
        queues: r.queues.clone(),
        created_at_ms: r.created_at_ms,
        expires_at_ms: r.expires_at_ms,
        created_by: r.created_by.clone(),
    }
}

#[tonic::async_trait]
impl tokens_server::Tokens for TokensApi {
    async fn create_token(
        &self,
        req: Request<pb::CreateTokenRequest>,
    ) -> Result<Response<pb::CreateTokenResponse>, Status> {
        let created_by = req
            .extensions()
            .get::<Caller>()
            .map(|c| c.name.clone())
            .unwrap_or_default();
        let req = req.into_inner();
        let role = Role::from_pb(req.role()).ok_or_else(|| SchedulerError::InvalidArgument {
            field: "role",
            message: format!(
                "`{}` is not a role (admin, operator, submitter or viewer)",
                req.role
            ),
        })?;
        let (secret, record) = self
            .tokens
            .create(NewToken {
                name: Some(req.name).filter(|n| !n.is_empty()),
                role,
                queues: req.queues,
                expires_in: (req.expires_in_ms > 0)
                    .then(|| std::time::Duration::from_millis(req.expires_in_ms)),
                created_by,
            })
            .await?;
        tracing::info!(token = %record.name, role = %role, "token created");
        Ok(Response::new(pb::CreateTokenResponse {
            token: Some(info(&record)),
            secret,
        }))
    }

    async fn list_tokens(
        &self,
        _: Request<pb::ListTokensRequest>,
    ) -> Result<Response<pb::ListTokensResponse>, Status> {
        let (mut records, _) = self.tokens.stored().await?;
        records.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(Response::new(pb::ListTokensResponse {
            tokens: records.iter().map(info).collect(),
        }))
    }

    async fn revoke_token(
        &self,
        req: Request<pb::RevokeTokenRequest>,
    ) -> Result<Response<pb::RevokeTokenResponse>, Status> {
        let name = req.into_inner().name;
        if name.is_empty() {
            return Err(SchedulerError::InvalidArgument {
                field: "name",
                message: "is required".into(),
            }
            .into());
        }
        self.tokens.revoke(&name).await?;
        tracing::info!(token = %name, "token revoked");
        Ok(Response::new(pb::RevokeTokenResponse {}))
    }
}
