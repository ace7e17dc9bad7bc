//! How a Drover component connects to NATS: with its own NKey (from a seed
//! file, or a `.creds` file of a JWT-based setup), the CA of a `tls://`
//! server, and its own inbox prefix (see [`crate::nats_auth`]). Errors the
//! server sends later (a permissions violation) are logged and kept, so a
//! component can tell an operator its identity does not fit its subjects.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};

/// What a component was given to prove who it is and whom to trust.
#[derive(Clone, Debug, Default)]
pub struct NatsIdentity {
    /// NKey seed file (or `.creds` file); None: connect without one.
    pub creds: Option<PathBuf>,
    /// CA certificate(s), PEM, of a NATS server over TLS; None: the system roots.
    pub ca: Option<PathBuf>,
}

#[derive(Debug, thiserror::Error)]
pub enum NatsConnectError {
    #[error("--nats-creds `{}`: {reason}", path.display())]
    Creds { path: PathBuf, reason: String },
    #[error("--nats-ca `{}`: {reason}", path.display())]
    Ca { path: PathBuf, reason: String },
}

/// Most server errors kept for [`ServerErrors::take`].
const KEPT_ERRORS: usize = 16;

/// Errors the server sent on one connection (e.g. `Permissions Violation
/// for Subscription to "…"`), oldest first.
#[derive(Clone, Debug, Default)]
pub struct ServerErrors(Arc<Mutex<Vec<String>>>);

impl ServerErrors {
    fn push(&self, error: String) {
        let mut kept = self
            .0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if kept.len() < KEPT_ERRORS {
            kept.push(error);
        }
    }

    /// The errors so far, forgetting them.
    pub fn take(&self) -> Vec<String> {
        std::mem::take(
            &mut *self
                .0
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner),
        )
    }
}

/// The seed in the text of a seed file: its first line that is neither
/// empty nor a `#` comment, which must be an NKey user seed (`SU…`).
pub fn parse_seed(text: &str) -> Result<String, String> {
    let seed = text
        .lines()
        .map(str::trim)
        .find(|l| !l.is_empty() && !l.starts_with('#'))
        .ok_or("holds no NKey seed")?;
    if !seed.starts_with("SU") {
        return Err("is not an NKey user seed (a line starting with `SU`)".to_owned());
    }
    nkeys::KeyPair::from_seed(seed).map_err(|e| format!("holds an invalid NKey seed: {e}"))?;
    Ok(seed.to_owned())
}

/// The public key (`U…`) of an NKey user seed.
pub fn public_key(seed: &str) -> Result<String, String> {
    nkeys::KeyPair::from_seed(seed)
        .map(|kp| kp.public_key())
        .map_err(|e| format!("invalid NKey seed: {e}"))
}

/// A new NKey user identity: (seed, public key).
pub fn new_identity() -> Result<(String, String), String> {
    let kp = nkeys::KeyPair::new_user();
    let seed = kp.seed().map_err(|e| e.to_string())?;
    Ok((seed, kp.public_key()))
}

/// The text of `who`'s seed file (what `--nats-creds` reads).
pub fn seed_file(who: &str, seed: &str) -> String {
    format!(
        "# NATS NKey seed of {who}: a secret (keep it mode 0600).\n\
         # Pass this file as --nats-creds.\n{seed}\n"
    )
}

/// Writes a secret file (a seed) readable by its owner only; an existing
/// file is not overwritten.
pub fn write_secret(path: &std::path::Path, text: &str) -> std::io::Result<()> {
    use std::io::Write as _;
    use std::os::unix::fs::OpenOptionsExt as _;
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)?;
    file.write_all(text.as_bytes())?;
    file.sync_all()
}

/// Connect options for a component: its identity, `inbox_prefix`, and
/// server errors logged (and kept in the returned [`ServerErrors`]).
pub fn options(
    identity: &NatsIdentity,
    name: &str,
    inbox_prefix: &str,
) -> Result<(async_nats::ConnectOptions, ServerErrors), NatsConnectError> {
    let mut options = async_nats::ConnectOptions::new();
    if let Some(path) = &identity.creds {
        let creds_err = |reason: String| NatsConnectError::Creds {
            path: path.clone(),
            reason,
        };
        let text = std::fs::read_to_string(path).map_err(|e| creds_err(e.to_string()))?;
        options = if text.contains("BEGIN NATS USER JWT") {
            options
                .credentials(&text)
                .map_err(|e| creds_err(e.to_string()))?
        } else {
            options.nkey(parse_seed(&text).map_err(creds_err)?)
        };
    }
    if let Some(path) = &identity.ca {
        // Read here so a missing file is named now, not as a TLS failure later.
        std::fs::metadata(path).map_err(|e| NatsConnectError::Ca {
            path: path.clone(),
            reason: e.to_string(),
        })?;
        options = options.add_root_certificates(path.clone());
    }
    let errors = ServerErrors::default();
    let kept = errors.clone();
    let who = name.to_owned();
    let options = options
        .name(name)
        .custom_inbox_prefix(inbox_prefix)
        .event_callback(move |event| {
            let kept = kept.clone();
            let who = who.clone();
            async move {
                if let async_nats::Event::ServerError(e) = event {
                    tracing::warn!(client = %who, error = %e, "NATS server error");
                    kept.push(e.to_string());
                }
            }
        });
    Ok((options, errors))
}

/// The servers of a `--nats` value: comma-separated URLs (members of one
/// cluster). The client connects to one of them and moves to another when
/// it goes away; those the cluster tells it about are added.
pub fn servers(list: &str) -> Vec<String> {
    list.split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(str::to_owned)
        .collect()
}

/// Whether a connect error is the server refusing the identity.
pub fn is_auth_refusal(error: &str) -> bool {
    let e = error.to_ascii_lowercase();
    e.contains("authorization") || e.contains("authentication")
}

/// Whether a server error is a permissions violation.
pub fn is_permissions_violation(error: &str) -> bool {
    error.to_ascii_lowercase().contains("permissions violation")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seed_files_round_trip_and_bad_ones_are_named() -> Result<(), String> {
        let (seed, public) = new_identity()?;
        assert!(seed.starts_with("SU") && public.starts_with('U'));
        let text = seed_file("agent a1", &seed);
        assert_eq!(parse_seed(&text)?, seed);
        assert_eq!(public_key(&seed)?, public);
        assert!(parse_seed("# nothing\n\n")
            .unwrap_err()
            .contains("no NKey seed"));
        assert!(parse_seed(&public)
            .unwrap_err()
            .contains("not an NKey user seed"));
        let broken = format!("{}X", &seed[..seed.len() - 1]);
        assert!(parse_seed(&broken).unwrap_err().contains("invalid"));
        Ok(())
    }

    #[test]
    fn a_nats_value_lists_servers() {
        assert_eq!(servers("nats://a:4222"), ["nats://a:4222"]);
        assert_eq!(
            servers("nats://a:4222, nats://b:4222,,tls://c:4222"),
            ["nats://a:4222", "nats://b:4222", "tls://c:4222"]
        );
        assert!(servers(" , ").is_empty());
    }

    #[test]
    fn refusals_and_violations_are_told_apart() {
        assert!(is_auth_refusal("authorization violation"));
        assert!(is_permissions_violation(
            "Permissions Violation for Subscription to \"x\""
        ));
        assert!(!is_permissions_violation("slow consumer"));
    }
}
