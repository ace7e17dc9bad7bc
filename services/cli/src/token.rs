//! `drover token ...`: API tokens (an admin token is needed for all three).

use std::time::Duration;

use anyhow::Result;
use clap::Subcommand;
use serde_json::{json, Value};

use drover_api::pb;
use drover_api::pb::tokens_client::TokensClient;
use drover_scheduler::auth::Role;

use crate::connect::Svc;
use crate::output::{table, timestamp};
use crate::Format;

#[derive(Subcommand)]
pub enum TokenCommand {
    /// Create a token and print it once (only its hash is stored).
    Create {
        /// admin, operator, submitter or viewer.
        #[arg(long, value_parser = role)]
        role: Role,
        /// Submitter only: a queue it may submit to, cancel and retry in
        /// (repeatable; default: all).
        #[arg(long = "queue", value_name = "QUEUE", value_parser = crate::queue::queue_name)]
        queues: Vec<String>,
        /// It stops working after this long (e.g. 30d, 12h) [default: never].
        #[arg(long, value_name = "DURATION", value_parser = drover_api::duration::parse)]
        expires: Option<Duration>,
        /// Its name in `token list` and in logs [default: <role>-<8 hex>].
        #[arg(long)]
        name: Option<String>,
    },
    /// Every token: name, role, queues, created, expires (never the secret).
    List {
        #[arg(long, short = 'o', value_enum, default_value_t)]
        output: Format,
    },
    /// Delete a token; it stops working at once.
    Revoke { name: String },
}

fn role(s: &str) -> Result<Role, String> {
    s.parse()
}

fn role_name(r: i32) -> String {
    pb::Role::try_from(r)
        .ok()
        .and_then(Role::from_pb)
        .map_or_else(|| format!("unknown ({r})"), |r| r.to_string())
}

fn queues(q: &[String]) -> String {
    if q.is_empty() {
        "all".into()
    } else {
        q.join(",")
    }
}

fn expires(ms: u64) -> String {
    if ms == 0 {
        "never".into()
    } else {
        timestamp(ms)
    }
}

pub async fn run(mut client: TokensClient<Svc>, cmd: TokenCommand) -> Result<()> {
    match cmd {
        TokenCommand::Create {
            role,
            queues: qs,
            expires: ttl,
            name,
        } => {
            let resp = client
                .create_token(pb::CreateTokenRequest {
                    name: name.unwrap_or_default(),
                    role: role.to_pb() as i32,
                    queues: qs,
                    expires_in_ms: ttl.map_or(0, |d| d.as_millis() as u64),
                })
                .await?
                .into_inner();
            let info = resp.token.unwrap_or_default();
            // The secret alone on stdout, so `$(drover token create …)` captures it.
            println!("{}", resp.secret);
            eprintln!(
                "token {} ({}, queues {}, expires {}): shown only this once",
                info.name,
                role_name(info.role),
                queues(&info.queues),
                expires(info.expires_at_ms)
            );
        }
        TokenCommand::List { output } => {
            let tokens = client
                .list_tokens(pb::ListTokensRequest {})
                .await?
                .into_inner()
                .tokens;
            match output {
                Format::Table => print!("{}", tokens_table(&tokens)),
                Format::Json => println!("{:#}", tokens_json(&tokens)),
            }
        }
        TokenCommand::Revoke { name } => {
            client
                .revoke_token(pb::RevokeTokenRequest { name: name.clone() })
                .await?;
            println!("revoked {name}");
        }
    }
    Ok(())
}

fn tokens_table(tokens: &[pb::TokenInfo]) -> String {
    if tokens.is_empty() {
        return "no tokens\n".into();
    }
    let rows: Vec<Vec<String>> = tokens
        .iter()
        .map(|t| {
            vec![
                t.name.clone(),
                role_name(t.role),
                queues(&t.queues),
                timestamp(t.created_at_ms),
                expires(t.expires_at_ms),
                if t.created_by.is_empty() {
                    "-".into()
                } else {
                    t.created_by.clone()
                },
            ]
        })
        .collect();
    table(
        &["NAME", "ROLE", "QUEUES", "CREATED", "EXPIRES", "CREATED BY"],
        &[false; 6],
        &rows,
    )
}

fn tokens_json(tokens: &[pb::TokenInfo]) -> Value {
    json!(tokens
        .iter()
        .map(|t| json!({
            "name": t.name,
            "role": role_name(t.role),
            "queues": t.queues,
            "created_at_ms": t.created_at_ms,
            "expires_at_ms": (t.expires_at_ms > 0).then_some(t.expires_at_ms),
            "created_by": t.created_by,
        }))
        .collect::<Vec<_>>())
}
