//! Who may do what: roles, the gRPC method → needed role table, and the
//! decisions on a presented token. Pure: no etcd, no clock, no I/O; the
//! shell ([`super`]) feeds it the token table and the time.

use std::fmt;

use sha2::{Digest, Sha256};

use drover_api::pb;

/// Every token starts with this, so a leaked one is recognisable (secret
/// scanners, logs).
pub const TOKEN_PREFIX: &str = "drv_";

/// Random bytes in a token's secret.
pub const TOKEN_BYTES: usize = 32;

/// A token's role. `Viewer` reads; `Submitter` and `Operator` each add
/// their own writes to a viewer's reads; `Admin` may do everything.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Role {
    Admin,
    Operator,
    Submitter,
    Viewer,
}

impl Role {
    pub const ALL: [Role; 4] = [Role::Admin, Role::Operator, Role::Submitter, Role::Viewer];

    pub fn as_str(self) -> &'static str {
        match self {
            Role::Admin => "admin",
            Role::Operator => "operator",
            Role::Submitter => "submitter",
            Role::Viewer => "viewer",
        }
    }

    /// Whether this role covers what `needed` allows.
    pub fn covers(self, needed: Role) -> bool {
        self == Role::Admin || self == needed || needed == Role::Viewer
    }

    pub fn from_pb(role: pb::Role) -> Option<Role> {
        match role {
            pb::Role::Admin => Some(Role::Admin),
            pb::Role::Operator => Some(Role::Operator),
            pb::Role::Submitter => Some(Role::Submitter),
            pb::Role::Viewer => Some(Role::Viewer),
            pb::Role::Unspecified => None,
        }
    }

    pub fn to_pb(self) -> pb::Role {
        match self {
            Role::Admin => pb::Role::Admin,
            Role::Operator => pb::Role::Operator,
            Role::Submitter => pb::Role::Submitter,
            Role::Viewer => pb::Role::Viewer,
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for Role {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        Role::ALL
            .into_iter()
            .find(|r| r.as_str() == s)
            .ok_or_else(|| {
                format!("unknown role `{s}` (expected admin, operator, submitter or viewer)")
            })
    }
}

/// Services anyone may call, token or not: load balancers probe health,
/// and reflection only describes the API.
const OPEN_SERVICES: [&str; 3] = [
    "/grpc.health.v1.Health/",
    "/grpc.reflection.v1.ServerReflection/",
    "/grpc.reflection.v1alpha.ServerReflection/",
];

/// Every known method and the least role it needs. A method missing here
/// needs admin, so a new RPC is closed until someone decides otherwise.
pub const METHODS: [(&str, Role); 38] = [
    ("/drover.v1.Scheduler/SubmitRun", Role::Submitter),
    ("/drover.v1.Scheduler/CancelRun", Role::Submitter),
    ("/drover.v1.Scheduler/RetryRun", Role::Submitter),
    ("/drover.v1.Scheduler/StatCode", Role::Submitter),
    ("/drover.v1.Scheduler/PutCode", Role::Submitter),
    ("/drover.v1.Scheduler/SetRunPriority", Role::Operator),
    ("/drover.v1.Scheduler/GetRun", Role::Viewer),
    ("/drover.v1.Scheduler/ListRuns", Role::Viewer),
    ("/drover.v1.Scheduler/WatchRun", Role::Viewer),
    ("/drover.v1.Scheduler/GetLogs", Role::Viewer),
    ("/drover.v1.Scheduler/GetVersion", Role::Viewer),
    ("/drover.v1.Scheduler/ListCache", Role::Viewer),
    ("/drover.v1.Scheduler/GetLineage", Role::Viewer),
    ("/drover.v1.Scheduler/ForgetCache", Role::Admin),
    ("/drover.v1.Queues/ListQueues", Role::Viewer),
    ("/drover.v1.Queues/ShowQueue", Role::Viewer),
    ("/drover.v1.Queues/PauseQueue", Role::Operator),
    ("/drover.v1.Queues/ResumeQueue", Role::Operator),
    ("/drover.v1.Queues/CreateQueue", Role::Admin),
    ("/drover.v1.Queues/UpdateQueue", Role::Admin),
    ("/drover.v1.Queues/DeleteQueue", Role::Admin),
    ("/drover.v1.Agents/ListAgents", Role::Viewer),
    ("/drover.v1.Agents/DrainAgent", Role::Operator),
    ("/drover.v1.Agents/UndrainAgent", Role::Operator),
    ("/drover.v1.Agents/EnrollAgent", Role::Admin),
    ("/drover.v1.Agents/GetNatsConfig", Role::Admin),
    ("/drover.v1.Tokens/CreateToken", Role::Admin),
    ("/drover.v1.Tokens/ListTokens", Role::Admin),
    ("/drover.v1.Tokens/RevokeToken", Role::Admin),
    ("/drover.v1.Cluster/GetClusterStatus", Role::Viewer),
    // Triggers start runs: the queue a trigger's runs go to is checked
    // against a submitter's queues on create, update and fire.
    ("/drover.v1.Triggers/CreateTrigger", Role::Submitter),
    ("/drover.v1.Triggers/UpdateTrigger", Role::Submitter),
    ("/drover.v1.Triggers/FireTrigger", Role::Submitter),
    ("/drover.v1.Triggers/PauseTrigger", Role::Submitter),
    ("/drover.v1.Triggers/ResumeTrigger", Role::Submitter),
    ("/drover.v1.Triggers/DeleteTrigger", Role::Submitter),
    ("/drover.v1.Triggers/ListTriggers", Role::Viewer),
    ("/drover.v1.Triggers/GetTrigger", Role::Viewer),
];

/// Webhooks (`/hooks/alertmanager/<trigger>`) start runs like a submit.
const HOOKS: &str = "/hooks/";

/// What a call to a method needs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Needed {
    /// No token at all (health, reflection).
    Open,
    Role(Role),
}

/// What calling `path` (`/package.Service/Method`) needs.
pub fn needed(path: &str) -> Needed {
    if OPEN_SERVICES.iter().any(|s| path.starts_with(s)) {
        return Needed::Open;
    }
    if is_webhook(path) {
        return Needed::Role(Role::Submitter);
    }
    Needed::Role(
        METHODS
            .iter()
            .find(|(m, _)| *m == path)
            .map_or(Role::Admin, |(_, r)| *r),
    )
}

/// Whether `path` is a webhook's (plain HTTP, not gRPC).
pub fn is_webhook(path: &str) -> bool {
    path.starts_with(HOOKS)
}

/// `path` as a metric label: a known method, else `other` (refused calls
/// come from anyone; their paths must not grow the label set).
pub fn method_label(path: &str) -> &'static str {
    if is_webhook(path) {
        return "hooks";
    }
    METHODS
        .iter()
        .find(|(m, _)| *m == path)
        .map_or("other", |(m, _)| m)
}

/// `SubmitRun` of `/drover.v1.Scheduler/SubmitRun`.
pub fn action(path: &str) -> &str {
    path.rsplit('/').next().unwrap_or(path)
}

/// Who is calling: what the auth layer puts in each request's extensions.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Caller {
    /// The token's name.
    pub name: String,
    pub role: Role,
    /// Submitter only: the queues it may act in (empty: all).
    pub queues: Vec<String>,
}

/// Why a call was refused; [`Refusal::reason`] is its metric label.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    #[error("missing `authorization: Bearer <token>` (set DROVER_TOKEN or --token-file)")]
    Missing,
    #[error("malformed authorization header (expected `Bearer drv_…`)")]
    Malformed,
    /// Unknown or revoked: the two look alike to the caller.
    #[error("invalid or revoked token")]
    Invalid,
    #[error("token {name} expired")]
    Expired { name: String },
    #[error("role {role} may not {action} (needs {needed})")]
    Role {
        /// The token's name, for the log.
        name: String,
        role: Role,
        action: String,
        needed: Role,
    },
    #[error("token {name} ({role}) may not {verb} queue {queue} (allowed: {allowed})")]
    Queue {
        name: String,
        role: Role,
        verb: &'static str,
        queue: String,
        allowed: String,
    },
}

impl Refusal {
    pub fn reason(&self) -> &'static str {
        match self {
            Refusal::Missing => "missing_token",
            Refusal::Malformed => "malformed_token",
            Refusal::Invalid => "invalid_token",
            Refusal::Expired { .. } => "expired_token",
            Refusal::Role { .. } => "role",
            Refusal::Queue { .. } => "queue",
        }
    }

    /// Unauthenticated for who-are-you failures, PermissionDenied for
    /// known callers asking too much.
    pub fn code(&self) -> tonic::Code {
        match self {
            Refusal::Role { .. } | Refusal::Queue { .. } => tonic::Code::PermissionDenied,
            _ => tonic::Code::Unauthenticated,
        }
    }

    /// The token's name, when the refusal knows it.
    pub fn token_name(&self) -> Option<&str> {
        match self {
            Refusal::Expired { name }
            | Refusal::Role { name, .. }
            | Refusal::Queue { name, .. } => Some(name),
            _ => None,
        }
    }
}

impl From<Refusal> for tonic::Status {
    fn from(r: Refusal) -> Self {
        tonic::Status::new(r.code(), r.to_string())
    }
}

/// The token in an `authorization` header value.
pub fn bearer(header: Option<&str>) -> Result<&str, Refusal> {
    let value = header.ok_or(Refusal::Missing)?;
    let (scheme, token) = value.trim().split_once(' ').ok_or(Refusal::Malformed)?;
    let token = token.trim();
    if !scheme.eq_ignore_ascii_case("bearer") || token.is_empty() {
        return Err(Refusal::Malformed);
    }
    Ok(token)
}

/// What is stored of a token (and compared): the sha256 of its text.
pub fn hash(token: &str) -> [u8; 32] {
    Sha256::digest(token.as_bytes()).into()
}

/// The token text of `secret`: the prefix and the bytes in hex.
pub fn token_text(secret: &[u8; TOKEN_BYTES]) -> String {
    let mut out = String::with_capacity(TOKEN_PREFIX.len() + 2 * TOKEN_BYTES);
    out.push_str(TOKEN_PREFIX);
    for b in secret {
        out.push_str(&format!("{b:02x}"));
    }
    out
}

/// The caller a stored record stands for, if it is still valid at `now_ms`.
pub fn identify(record: Option<&pb::TokenRecord>, now_ms: u64) -> Result<Caller, Refusal> {
    let record = record.ok_or(Refusal::Invalid)?;
    if record.expires_at_ms != 0 && now_ms >= record.expires_at_ms {
        return Err(Refusal::Expired {
            name: record.name.clone(),
        });
    }
    let role = Role::from_pb(record.role()).ok_or(Refusal::Invalid)?;
    Ok(Caller {
        name: record.name.clone(),
        role,
        queues: record.queues.clone(),
    })
}

/// May `caller` call `path` at all (queue limits come later, in the handler)?
pub fn authorize(caller: &Caller, path: &str) -> Result<(), Refusal> {
    match needed(path) {
        Needed::Open => Ok(()),
        Needed::Role(needed) if caller.role.covers(needed) => Ok(()),
        Needed::Role(needed) => Err(Refusal::Role {
            name: caller.name.clone(),
            role: caller.role,
            action: action(path).to_string(),
            needed,
        }),
    }
}

/// May `caller` `verb` (submit to, cancel in, retry in) `queue`? Only
/// submitter tokens carry queue limits; reads are not limited.
pub fn may_use_queue(caller: &Caller, verb: &'static str, queue: &str) -> Result<(), Refusal> {
    if caller.role != Role::Submitter
        || caller.queues.is_empty()
        || caller.queues.iter().any(|q| q == queue)
    {
        return Ok(());
    }
    Err(Refusal::Queue {
        name: caller.name.clone(),
        role: caller.role,
        verb,
        queue: queue.to_string(),
        allowed: caller.queues.join(", "),
    })
}

/// A token name: 1 to 64 of lowercase letters, digits, `-`, `_` and `.`,
/// so it can be an etcd key segment and read in a log.
pub fn check_name(name: &str) -> Result<(), String> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '-' | '_' | '.'))
        && !name.starts_with('.');
    if ok {
        Ok(())
    } else {
        Err(format!(
            "invalid token name `{name}` (1 to 64 lowercase letters, digits, `-`, `_` or `.`)"
        ))
    }
}

/// Checks a new token's role and queues: only submitters are limited to queues.
pub fn check_new(role: Role, queues: &[String]) -> Result<(), String> {
    if !queues.is_empty() && role != Role::Submitter {
        return Err(format!(
            "queues: only submitter tokens are limited to queues, not {role}"
        ));
    }
    match queues.iter().find(|q| !drover_api::spec::is_queue_name(q)) {
        Some(q) => Err(format!(
            "queues: invalid queue name `{q}` (use lowercase letters, digits and `-`)"
        )),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests;
