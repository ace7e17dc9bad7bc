//! `drover cache ...`: the step cache's entries, and forgetting them.

use std::fmt::Write as _;

use anyhow::Result;
use clap::{ArgGroup, Subcommand};
use serde_json::{json, Value};

use drover_api::pb;
use drover_api::pb::scheduler_client::SchedulerClient;

use crate::connect::Svc;
use crate::output::{bytes, source_name, timestamp};
use crate::Format;

#[derive(Subcommand)]
pub enum CacheCommand {
    /// Entries, newest first: key, the attempt that made it, its outputs.
    List {
        /// Only entries this task made (its name as written, or an instance's).
        #[arg(long, value_name = "NAME")]
        task: Option<String>,
        #[arg(long, short = 'o', value_enum, default_value_t)]
        output: Format,
    },
    /// Delete one entry by its key, or every entry a run made; the next
    /// matching task runs again.
    #[command(group(ArgGroup::new("what").required(true).args(["key", "run"])))]
    Forget {
        /// The entry's key (64 hex digits, as `cache list` shows it).
        key: Option<String>,
        /// Every entry this run's attempts made.
        #[arg(long, value_name = "RUN")]
        run: Option<String>,
    },
}

pub async fn run(mut client: SchedulerClient<Svc>, cmd: CacheCommand) -> Result<()> {
    match cmd {
        CacheCommand::List { task, output } => {
            let entries = client
                .list_cache(pb::ListCacheRequest {
                    task: task.unwrap_or_default(),
                })
                .await?
                .into_inner()
                .entries;
            match output {
                Format::Table => print!("{}", table(&entries)),
                Format::Json => println!("{}", serde_json::to_string_pretty(&to_json(&entries))?),
            }
        }
        CacheCommand::Forget { key, run } => {
            let n = client
                .forget_cache(pb::ForgetCacheRequest {
                    key: key.unwrap_or_default(),
                    run_id: run.unwrap_or_default(),
                })
                .await?
                .into_inner()
                .forgotten;
            println!(
                "forgot {n} cache {}",
                if n == 1 { "entry" } else { "entries" }
            );
        }
    }
    Ok(())
}

/// Key shown in tables: enough to tell entries apart and to paste back
/// (`cache forget` needs the whole key, which `-o json` gives).
const SHORT_KEY: usize = 12;

fn table(entries: &[pb::CacheEntry]) -> String {
    let mut out = String::new();
    if entries.is_empty() {
        out.push_str("no cache entries\n");
        return out;
    }
    let sources: Vec<String> = entries
        .iter()
        .map(|e| e.source.as_ref().map(source_name).unwrap_or_default())
        .collect();
    let width = sources.iter().map(String::len).max().unwrap_or(6).max(6);
    let _ = writeln!(
        out,
        "{:<SHORT_KEY$}  {:<width$}  {:<19}  OUTPUTS",
        "KEY", "SOURCE", "CREATED"
    );
    for (e, source) in entries.iter().zip(&sources) {
        let outputs: Vec<String> = e
            .outputs
            .iter()
            .map(|o| format!("{} ({})", o.name, bytes(o.size)))
            .collect();
        let _ = writeln!(
            out,
            "{:<SHORT_KEY$}  {source:<width$}  {:<19}  {}",
            &e.key[..e.key.len().min(SHORT_KEY)],
            timestamp(e.created_at_ms),
            if outputs.is_empty() {
                "-".to_owned()
            } else {
                outputs.join(", ")
            }
        );
    }
    out
}

fn to_json(entries: &[pb::CacheEntry]) -> Value {
    json!(entries
        .iter()
        .map(|e| json!({
            "key": e.key,
            "source": e.source.as_ref().map(|s| json!({
                "run_id": s.run_id, "task": s.task, "attempt": s.attempt,
            })),
            "created_at_ms": e.created_at_ms,
            "image_digest": e.image_digest,
            "outputs": e.outputs.iter().map(|o| json!({
                "name": o.name, "key": o.key, "sha256": o.sha256, "size": o.size,
            })).collect::<Vec<_>>(),
        }))
        .collect::<Vec<_>>())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry() -> pb::CacheEntry {
        pb::CacheEntry {
            key: "ab".repeat(32),
            source: Some(pb::AttemptSource {
                run_id: "train-1".into(),
                task: "train[lr=0.1]".into(),
                attempt: 2,
            }),
            outputs: vec![pb::Artifact {
                name: "model".into(),
                key: "runs/train-1/train[lr=0.1]/2/model".into(),
                sha256: "cd".repeat(32),
                size: 2048,
                result: None,
            }],
            created_at_ms: 0,
            image_digest: String::new(),
        }
    }

    #[test]
    fn table_shows_short_key_source_and_outputs() {
        let t = table(&[entry()]);
        let row = t.lines().nth(1).unwrap_or_default();
        assert!(
            row.starts_with("abababababab  train-1/train[lr=0.1]/2"),
            "{t}"
        );
        assert!(row.ends_with("model (2.0 KiB)"), "{t}");
        assert_eq!(table(&[]), "no cache entries\n");
    }

    #[test]
    fn json_has_the_whole_key_and_digests() {
        let v = to_json(&[entry()]);
        assert_eq!(v[0]["key"], json!("ab".repeat(32)));
        assert_eq!(v[0]["source"]["task"], json!("train[lr=0.1]"));
        assert_eq!(v[0]["outputs"][0]["sha256"], json!("cd".repeat(32)));
    }
}
