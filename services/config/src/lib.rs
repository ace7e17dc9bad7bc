//! The config-file layer shared by `drover-scheduler` and `drover-agent`.
//!
//! Precedence, lowest first: built-in defaults → the file named by
//! `--config` (or `DROVER_CONFIG`) → `DROVER_*` environment → flags. The
//! file is YAML whose keys are the long flag names (`agent-timeout` or
//! `agent_timeout`):
//!
//! ```yaml
//! nats: nats://10.0.0.5:4222
//! artifacts: s3://ml-artifacts/drover
//! executors: [docker, process]
//! label: [zone=eu, rack=r1]
//! simulate-gpus: 2
//! ```
//!
//! Rather than a second source of truth beside clap, a file value becomes a
//! flag: it is appended to the command line only where clap found no value
//! or only its default, so the flag's own parsing and validation apply
//! unchanged and `--help` stays the one reference. Unknown keys are refused
//! with the file, the key and the keys it could have been.

use std::ffi::OsString;
use std::path::{Path, PathBuf};

use clap::parser::ValueSource;
use clap::{ArgAction, ArgMatches, Command};
use serde_json::Value;

/// The flag (and its `DROVER_CONFIG` variable) naming the file.
pub const CONFIG_FLAG: &str = "config";

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("--config {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("--config {path}: not a YAML mapping of flag names to values: {reason}")]
    Yaml { path: PathBuf, reason: String },
    #[error("--config {path}: unknown key `{key}` (known: {known})")]
    UnknownKey {
        path: PathBuf,
        key: String,
        known: String,
    },
    #[error("--config {path}: key `{key}`: {reason}")]
    BadValue {
        path: PathBuf,
        key: String,
        reason: String,
    },
    #[error(transparent)]
    Cli(#[from] clap::Error),
}

/// Parses `T` (a clap Parser with a `--config` flag) from the process's
/// arguments with the file layer, exiting like clap's own `parse` does on
/// an error: a bad file is a usage error (status 2), like a bad flag.
pub fn parse<T: clap::Parser>() -> T {
    match parse_from(std::env::args_os()) {
        Ok(t) => t,
        Err(ConfigError::Cli(e)) => e.exit(),
        Err(e) => {
            eprintln!("error: {e}");
            std::process::exit(2);
        }
    }
}

/// [`parse`] on the given arguments (the first is the program name).
pub fn parse_from<T, I>(args: I) -> Result<T, ConfigError>
where
    T: clap::Parser,
    I: IntoIterator,
    I::Item: Into<OsString> + Clone,
{
    let mut args: Vec<OsString> = args.into_iter().map(Into::into).collect();
    let cmd = T::command();
    // A value only the file gives (e.g. a required --artifacts) would fail
    // a strict first parse, so the first one only looks.
    let first = cmd
        .clone()
        .ignore_errors(true)
        .try_get_matches_from(&args)?;
    if let Some(path) = config_path(&cmd, &first) {
        args.extend(file_args(&cmd, &first, &path)?);
    }
    let matches = cmd.try_get_matches_from(&args)?;
    Ok(T::from_arg_matches(&matches)?)
}

fn config_path(cmd: &Command, m: &ArgMatches) -> Option<PathBuf> {
    cmd.get_arguments()
        .any(|a| a.get_id() == CONFIG_FLAG)
        .then(|| m.get_raw(CONFIG_FLAG))
        .flatten()
        .and_then(|mut v| v.next())
        .map(PathBuf::from)
}

/// The flags the file contributes, for arguments clap left at their
/// default (or unset).
fn file_args(cmd: &Command, m: &ArgMatches, path: &Path) -> Result<Vec<OsString>, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        path: path.into(),
        source,
    })?;
    let bad_yaml = |reason: String| ConfigError::Yaml {
        path: path.into(),
        reason,
    };
    let doc: Option<Value> = serde_saphyr::from_str_with_options(&text, yaml_options())
        .map_err(|e| bad_yaml(yaml_message(&e)))?;
    let map = match doc {
        Some(Value::Object(map)) => map,
        // An empty file is an empty configuration.
        None | Some(Value::Null) => return Ok(Vec::new()),
        Some(_) => return Err(bad_yaml("the top level is not a mapping".into())),
    };
    let mut out = Vec::new();
    for (key, value) in map {
        let long = key.replace('_', "-");
        let arg = cmd
            .get_arguments()
            .find(|a| a.get_long() == Some(long.as_str()) && long != CONFIG_FLAG)
            .ok_or_else(|| ConfigError::UnknownKey {
                path: path.into(),
                known: known_keys(cmd),
                key: key.clone(),
            })?;
        let bad = |reason: &str| ConfigError::BadValue {
            path: path.into(),
            key: key.clone(),
            reason: reason.into(),
        };
        let explicit = matches!(
            m.value_source(arg.get_id().as_str()),
            Some(ValueSource::CommandLine | ValueSource::EnvVariable)
        );
        if explicit {
            continue;
        }
        let flag = format!("--{long}");
        if matches!(arg.get_action(), ArgAction::SetTrue) {
            match value {
                Value::Bool(true) => out.push(flag.into()),
                Value::Bool(false) => {}
                _ => return Err(bad("expected true or false")),
            }
            continue;
        }
        let values = match value {
            Value::Array(items) => items
                .into_iter()
                .map(scalar)
                .collect::<Option<Vec<_>>>()
                .ok_or_else(|| bad("expected a list of plain values"))?,
            v => vec![scalar(v).ok_or_else(|| bad("expected a plain value or a list"))?],
        };
        if values.len() > 1 && arg.get_value_delimiter().is_some() {
            out.push(format!("{flag}={}", values.join(",")).into());
        } else if values.len() > 1 && !matches!(arg.get_action(), ArgAction::Append) {
            return Err(bad("takes one value, not a list"));
        } else {
            out.extend(
                values
                    .into_iter()
                    .map(|v| OsString::from(format!("{flag}={v}"))),
            );
        }
    }
    Ok(out)
}

fn scalar(v: Value) -> Option<String> {
    match v {
        Value::String(s) => Some(s),
        Value::Number(n) => Some(n.to_string()),
        Value::Bool(b) => Some(b.to_string()),
        _ => None,
    }
}

/// YAML 1.2 (`yes`/`no` are strings, not booleans), a key twice is an
/// error, and `0755` or `1_000` stay text for the flag's own parser.
fn yaml_options() -> serde_saphyr::Options {
    let mut options = serde_saphyr::Options::default();
    options.strict_booleans = true;
    options.leading_zero_numbers_as_strings = true;
    options.underscored_numbers_as_strings = true;
    options.with_snippet = false;
    options
}

/// A parser error as `<message> at line L column C`.
fn yaml_message(error: &serde_saphyr::Error) -> String {
    use serde_saphyr::MessageFormatter;
    let message = serde_saphyr::UserMessageFormatter.format_message(error);
    match error.location() {
        Some(at) if at.line() > 0 => {
            format!("{message} at line {} column {}", at.line(), at.column())
        }
        _ => message.into_owned(),
    }
}

fn known_keys(cmd: &Command) -> String {
    let mut keys: Vec<&str> = cmd
        .get_arguments()
        .filter_map(|a| a.get_long())
        .filter(|l| *l != CONFIG_FLAG && *l != "help" && *l != "version")
        .collect();
    keys.sort_unstable();
    keys.join(", ")
}

#[cfg(test)]
mod tests;
