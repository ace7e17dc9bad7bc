//! Who may call the gRPC API: bearer tokens with roles, kept in etcd.
//!
//! - [`policy`] (pure): roles, the method → role table, the decisions;
//! - this module: the token records (`<prefix>/tokens/<name>` →
//!   `TokenRecord`, holding only the sha256 of the secret) and the
//!   in-memory [`TokenTable`] every call is checked against. The table is
//!   filled at start, updated by this scheduler's own writes at once, and
//!   kept current by an etcd watch on the tokens prefix, so a token revoked
//!   through another scheduler stops working there too, with no etcd round
//!   trip per call;
//! - [`layer`]: the tower layer in front of every service that reads the
//!   `authorization` header, refuses, logs and counts, and hands the
//!   [`Caller`] to handlers (queue limits are checked there: only a handler
//!   knows a request's queue);
//! - [`service`]: the `drover.v1.Tokens` service; [`tls`]: the server's TLS.

pub mod layer;
pub mod policy;
pub mod service;
pub mod tls;

use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, PoisonError, RwLock};
use std::time::Duration;

use etcd_client::{Compare, CompareOp, EventType, GetOptions, Txn, TxnOp, WatchOptions};
use prost::Message;
use tracing::{info, warn};

use drover_api::pb;

use crate::engine::now_ms;
use crate::error::{Result, SchedulerError};
use crate::store::Store;

pub use layer::{AuthLayer, Refusals, Who};
pub use policy::{Caller, Refusal, Role};

/// A token to create.
#[derive(Clone, Debug)]
pub struct NewToken {
    /// None: `<role>-<8 hex>`.
    pub name: Option<String>,
    pub role: Role,
    /// Submitter only: the queues it may act in (empty: all).
    pub queues: Vec<String>,
    /// None: never expires.
    pub expires_in: Option<Duration>,
    /// The name of the token creating it (empty: bootstrap).
    pub created_by: String,
}

impl NewToken {
    pub fn admin(name: Option<String>) -> Self {
        Self {
            name,
            role: Role::Admin,
            queues: Vec::new(),
            expires_in: None,
            created_by: String::new(),
        }
    }
}

#[derive(Default)]
struct Table {
    by_hash: HashMap<[u8; 32], pb::TokenRecord>,
    hash_of: HashMap<String, [u8; 32]>,
}

/// The valid tokens by hash: what each call is checked against.
#[derive(Clone, Default)]
pub struct TokenTable(Arc<RwLock<Table>>);

fn hash_of(record: &pb::TokenRecord) -> Option<[u8; 32]> {
    record.sha256.as_slice().try_into().ok()
}

impl TokenTable {
    fn put(&self, record: pb::TokenRecord) {
        let mut t = self.0.write().unwrap_or_else(PoisonError::into_inner);
        if let Some(old) = t.hash_of.remove(&record.name) {
            t.by_hash.remove(&old);
        }
        // A record without a whole hash matches no token; it is left out.
        if let Some(hash) = hash_of(&record) {
            t.hash_of.insert(record.name.clone(), hash);
            t.by_hash.insert(hash, record);
        }
    }

    fn remove(&self, name: &str) {
        let mut t = self.0.write().unwrap_or_else(PoisonError::into_inner);
        if let Some(old) = t.hash_of.remove(name) {
            t.by_hash.remove(&old);
        }
    }

    fn replace_all(&self, records: Vec<pb::TokenRecord>) {
        *self.0.write().unwrap_or_else(PoisonError::into_inner) = Table::default();
        for r in records {
            self.put(r);
        }
    }

    /// Who `token` is, at `now_ms`.
    pub fn identify(&self, token: &str, now_ms: u64) -> std::result::Result<Caller, Refusal> {
        let t = self.0.read().unwrap_or_else(PoisonError::into_inner);
        policy::identify(t.by_hash.get(&policy::hash(token)), now_ms)
    }

    /// How many tokens are known.
    pub fn len(&self) -> usize {
        self.0
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .by_hash
            .len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// The token records in etcd and the table that mirrors them.
#[derive(Clone)]
pub struct Tokens {
    client: etcd_client::Client,
    dir: String,
    table: TokenTable,
}

/// 256 bits from the OS RNG.
fn secret() -> Result<[u8; policy::TOKEN_BYTES]> {
    let mut bytes = [0u8; policy::TOKEN_BYTES];
    getrandom::fill(&mut bytes)
        .map_err(|e| SchedulerError::Unavailable(format!("OS random number generator: {e}")))?;
    Ok(bytes)
}

fn invalid(field: &'static str, message: String) -> SchedulerError {
    SchedulerError::InvalidArgument { field, message }
}

impl Tokens {
    pub fn new(store: &Store) -> Self {
        Self {
            client: store.client(),
            dir: format!("{}/tokens/", store.prefix()),
            table: TokenTable::default(),
        }
    }

    pub fn table(&self) -> &TokenTable {
        &self.table
    }

    fn decode(key: &[u8], value: &[u8]) -> Result<pb::TokenRecord> {
        pb::TokenRecord::decode(value).map_err(|e| SchedulerError::Corrupt {
            key: String::from_utf8_lossy(key).into_owned(),
            reason: e.to_string(),
        })
    }

    /// Every stored token, and the etcd revision they were read at.
    pub async fn stored(&self) -> Result<(Vec<pb::TokenRecord>, i64)> {
        let resp = self
            .client
            .kv_client()
            .get(self.dir.as_str(), Some(GetOptions::new().with_prefix()))
            .await?;
        let at = resp.header().map_or(0, |h| h.revision());
        let records = resp
            .kvs()
            .iter()
            .map(|kv| Self::decode(kv.key(), kv.value()))
            .collect::<Result<Vec<_>>>()?;
        Ok((records, at))
    }

    /// Fills the table from etcd; returns the revision it was read at.
    pub async fn load(&self) -> Result<i64> {
        let (records, at) = self.stored().await?;
        self.table.replace_all(records);
        Ok(at)
    }

    /// Stores a new token; returns its text (shown once) and its record.
    pub async fn create(&self, new: NewToken) -> Result<(String, pb::TokenRecord)> {
        policy::check_new(new.role, &new.queues).map_err(|m| invalid("queues", m))?;
        let bytes = secret()?;
        let name = match new.name {
            Some(name) => {
                policy::check_name(&name).map_err(|m| invalid("name", m))?;
                name
            }
            None => format!("{}-{}", new.role, &policy::token_text(&bytes)[4..12]),
        };
        // The name's characters are not part of the secret: a second draw.
        let token = policy::token_text(&secret()?);
        let now = now_ms();
        let expires_at_ms = match new.expires_in {
            None => 0,
            Some(d) => u64::try_from(d.as_millis())
                .ok()
                .and_then(|ms| now.checked_add(ms))
                .ok_or_else(|| invalid("expires_in_ms", format!("{d:?} is too far away")))?,
        };
        let record = pb::TokenRecord {
            name: name.clone(),
            role: new.role.to_pb() as i32,
            queues: new.queues,
            sha256: policy::hash(&token).to_vec(),
            created_at_ms: now,
            expires_at_ms,
            created_by: new.created_by,
        };
        let key = format!("{}{name}", self.dir);
        let txn = Txn::new()
            .when([Compare::create_revision(key.as_str(), CompareOp::Equal, 0)])
            .and_then([TxnOp::put(key.as_str(), record.encode_to_vec(), None)]);
        if !self.client.kv_client().txn(txn).await?.succeeded() {
            return Err(SchedulerError::AlreadyExists(format!(
                "token `{name}` already exists"
            )));
        }
        self.table.put(record.clone());
        Ok((token, record))
    }

    /// Deletes a token; it stops working at once.
    pub async fn revoke(&self, name: &str) -> Result<()> {
        let resp = self
            .client
            .kv_client()
            .delete(format!("{}{name}", self.dir), None)
            .await?;
        self.table.remove(name);
        if resp.deleted() == 0 {
            return Err(SchedulerError::NotFound(format!(
                "token `{name}` not found"
            )));
        }
        Ok(())
    }

    /// Whether etcd holds an admin token that has not expired.
    pub async fn has_admin(&self) -> Result<bool> {
        let now = now_ms();
        Ok(self.stored().await?.0.iter().any(|r| {
            r.role() == pb::Role::Admin && (r.expires_at_ms == 0 || r.expires_at_ms > now)
        }))
    }

    /// Keeps the table current from `from` (a revision [`Tokens::load`]
    /// returned) until `stop`; after a broken or compacted watch it lists
    /// again and watches from there.
    pub async fn keep_current(self, mut from: i64, stop: impl Future<Output = ()>) {
        tokio::pin!(stop);
        loop {
            let err = tokio::select! {
                () = &mut stop => return,
                e = self.follow(from) => e,
            };
            warn!(error = %err, "token watch broken; listing tokens again");
            tokio::select! {
                () = &mut stop => return,
                () = tokio::time::sleep(Duration::from_secs(1)) => {}
            }
            match self.load().await {
                Ok(at) => from = at,
                Err(e) => warn!(error = %e, "cannot list tokens"),
            }
        }
    }

    /// Applies changes after revision `from` until the watch fails.
    async fn follow(&self, from: i64) -> SchedulerError {
        let opts = WatchOptions::new()
            .with_prefix()
            .with_start_revision(from + 1);
        let mut stream = match self
            .client
            .watch_client()
            .watch(self.dir.as_str(), Some(opts))
            .await
        {
            Ok(s) => s,
            Err(e) => return e.into(),
        };
        loop {
            let resp = match stream.message().await {
                Ok(Some(resp)) => resp,
                Ok(None) => return SchedulerError::Unavailable("token watch ended".into()),
                Err(e) => return e.into(),
            };
            if resp.canceled() || resp.compact_revision() > 0 {
                return SchedulerError::Unavailable(format!(
                    "token watch cancelled ({})",
                    resp.cancel_reason()
                ));
            }
            for event in resp.events() {
                let Some(kv) = event.kv() else { continue };
                match event.event_type() {
                    EventType::Put => match Self::decode(kv.key(), kv.value()) {
                        Ok(record) => self.table.put(record),
                        Err(e) => warn!(error = %e, "token record skipped"),
                    },
                    EventType::Delete => {
                        let key = String::from_utf8_lossy(kv.key());
                        if let Some(name) = key.strip_prefix(&self.dir) {
                            self.table.remove(name);
                        }
                    }
                }
            }
        }
    }
}

/// Creates a token in the store's etcd and returns its text, e.g. for
/// `drover dev --secure` or a bootstrap.
pub async fn create_token(store: &Store, new: NewToken) -> Result<String> {
    Ok(Tokens::new(store).create(new).await?.0)
}

/// Writes `token` to `path`, readable by its owner only.
pub fn write_token_file(path: &std::path::Path, token: &str) -> std::io::Result<()> {
    use std::io::Write as _;
    use std::os::unix::fs::{OpenOptionsExt as _, PermissionsExt as _};
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)?;
    // An existing file keeps its mode through `open`.
    f.set_permissions(std::fs::Permissions::from_mode(0o600))?;
    writeln!(f, "{token}")
}

/// `--bootstrap-token-file`: when etcd holds no valid admin token, creates
/// one and writes it to `path` before the API serves.
pub async fn bootstrap_file(tokens: &Tokens, path: &std::path::Path) -> Result<()> {
    if tokens.has_admin().await? {
        info!(file = %path.display(), "an admin token exists; no bootstrap token written");
        return Ok(());
    }
    let (token, record) = tokens.create(NewToken::admin(None)).await?;
    write_token_file(path, &token).map_err(|e| {
        SchedulerError::Config(format!("--bootstrap-token-file {}: {e}", path.display()))
    })?;
    info!(token = %record.name, file = %path.display(), "bootstrap admin token written");
    Ok(())
}
