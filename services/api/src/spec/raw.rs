//! The YAML side: serde structs mirroring the file as written, every field
//! optional so the validator (not serde) reports what is missing, and every
//! struct closed with `deny_unknown_fields` so a typo is an error.
//!
//! Leaf values are `String`s: the YAML tree (`super::yaml`) hands a plain
//! scalar's text to a string field unchanged, so `cpu: 0.5`, `lr: 1.50`,
//! `debug: true` and `--epochs, 10` arrive exactly as written, while a
//! sequence or mapping where a scalar belongs is a type error.

use std::collections::BTreeMap;

use schemars::JsonSchema;
use serde::Deserialize;

use super::yaml::{self, Kind, Node, Segment, Value};
use super::SpecError;

#[derive(Debug, Default, Deserialize, JsonSchema)]
#[serde(
    deny_unknown_fields,
    expecting = "a pipeline spec (a mapping with `name` and `tasks`)"
)]
pub(crate) struct RawSpec {
    /// The pipeline's name: runs are named `<name>-<suffix>`.
    pub name: Option<String>,
    /// The queue its tasks wait in (default: `default`).
    pub queue: Option<String>,
    /// Order inside the queue, 0 to 1000000, higher first.
    pub priority: Option<String>,
    /// Params with their defaults, used as {{params.<name>}}; `drover submit --param` overrides them.
    pub params: Option<BTreeMap<String, Option<String>>>,
    /// A task failing for good cancels the rest (default true).
    pub fail_fast: Option<bool>,
    /// A directory, relative to this file, that `drover submit` packs (honouring
    /// .gitignore and .droverignore) and every task gets read-only at $DROVER_CODE,
    /// also its working directory.
    pub code: Option<String>,
    pub tasks: Option<Vec<RawTask>>,
    /// Tasks that run once every other task has ended, whatever the outcome
    /// (cleanup, notification), also after a failure or a cancel; they get
    /// DROVER_RUN_STATE (succeeded, failed or cancelled) and may depend only
    /// on each other.
    pub finally: Option<Vec<RawTask>>,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(
    deny_unknown_fields,
    expecting = "a task (a mapping with `name` and `command`)"
)]
pub(crate) struct RawTask {
    pub name: Option<String>,
    /// Tasks that must succeed first.
    pub depends_on: Option<Vec<String>>,
    /// The program and its arguments (no shell).
    pub command: Option<Vec<String>>,
    /// Artifacts from upstream tasks, at $DROVER_INPUTS/<name>.
    pub inputs: Option<Vec<RawInput>>,
    /// Files under $DROVER_OUTPUTS stored after the task succeeds.
    pub outputs: Option<Vec<RawOutput>>,
    pub env: Option<BTreeMap<String, Option<String>>>,
    /// cpu (e.g. 2, 500m), memory (e.g. 4Gi), gpu, gpu_model, gpu_memory.
    pub resources: Option<RawResources>,
    /// limit and backoff (e.g. 5s) between attempts.
    pub retries: Option<RawRetries>,
    /// e.g. 1h; the attempt is killed past it.
    pub timeout: Option<String>,
    /// A container image; without one the task runs as a process.
    pub image: Option<String>,
    /// Only agents with all these labels.
    pub node_selector: Option<BTreeMap<String, Option<String>>>,
    /// IfNotPresent, Always or Never (needs an image).
    pub pull_policy: Option<String>,
    pub matrix: Option<RawMatrix>,
    /// A CEL expression, evaluated once the upstream tasks succeeded; false
    /// skips the task and its downstream. Sees params, matrix and
    /// tasks.<task>.outputs.<output> (outputs declared `result: true`).
    pub when: Option<String>,
    /// Most instances of the matrix running at once.
    pub max_parallel: Option<String>,
    /// Working directory inside the code snapshot (default: its root); needs `code`.
    pub workdir: Option<String>,
    /// Run once per element of the JSON array an upstream output holds.
    pub for_each: Option<RawForEach>,
    pub cache: Option<RawCache>,
    /// requeue (default: the agent stops it and it runs elsewhere) or wait
    /// (it keeps running; the scheduler waits `lost_after` for the agent).
    pub on_agent_lost: Option<String>,
    /// With `on_agent_lost: wait`, how long (e.g. 30m; default 10m).
    pub lost_after: Option<String>,
}

/// `cache:` as written: `true`/`false`, or settings (which turn it on).
#[derive(Debug)]
pub(crate) enum RawCache {
    Switch(bool),
    Settings(RawCacheSettings),
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(
    deny_unknown_fields,
    expecting = "cache settings (a mapping with `version` and `max_age`)"
)]
pub(crate) struct RawCacheSettings {
    /// Part of the cache key: change it to stop reusing earlier results.
    pub version: Option<String>,
    /// Reuse only results at most this old (e.g. 7d).
    pub max_age: Option<String>,
}

impl JsonSchema for RawCache {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "Cache".into()
    }

    fn json_schema(generator: &mut schemars::SchemaGenerator) -> schemars::Schema {
        let settings = generator.subschema_for::<RawCacheSettings>();
        schemars::json_schema!({
            "description": "Whether the task's results are reused when its cache key matches: true, false, or settings. Default: on for a task with outputs.",
            "oneOf": [{"type": "boolean"}, settings]
        })
    }
}

impl<'de> Deserialize<'de> for RawCache {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Cache;
        impl<'de> serde::de::Visitor<'de> for Cache {
            type Value = RawCache;

            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("cache (true, false, or a mapping with `version` and `max_age`)")
            }

            fn visit_bool<E: serde::de::Error>(self, on: bool) -> Result<RawCache, E> {
                Ok(RawCache::Switch(on))
            }

            fn visit_map<A: serde::de::MapAccess<'de>>(self, map: A) -> Result<RawCache, A::Error> {
                let settings = RawCacheSettings::deserialize(
                    serde::de::value::MapAccessDeserializer::new(map),
                )?;
                Ok(RawCache::Settings(settings))
            }
        }
        deserializer.deserialize_any(Cache)
    }
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(
    deny_unknown_fields,
    expecting = "for_each (a mapping with `from: <task>/<output>`)"
)]
pub(crate) struct RawForEach {
    /// `<task>/<output>`: an upstream output holding a JSON array; each
    /// instance sees its element as {{item}} (or {{item.<field>}}).
    pub from: Option<String>,
}

/// `matrix:` as written: names with their lists of values, in the order
/// they were written (instance names follow it).
#[derive(Debug, Default)]
pub(crate) struct RawMatrix(pub Vec<(String, Option<Vec<String>>)>);

impl JsonSchema for RawMatrix {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "Matrix".into()
    }

    fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        schemars::json_schema!({
            "description": "Names with lists of values: the task runs once per combination, each instance seeing its values as {{matrix.<name>}}.",
            "type": "object",
            "additionalProperties": {"type": "array", "items": {"type": "string"}, "minItems": 1}
        })
    }
}

impl<'de> Deserialize<'de> for RawMatrix {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Entries;
        impl<'de> serde::de::Visitor<'de> for Entries {
            type Value = RawMatrix;

            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a matrix (a mapping of names to lists of values)")
            }

            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                mut map: A,
            ) -> Result<RawMatrix, A::Error> {
                let mut entries = Vec::new();
                while let Some(entry) = map.next_entry()? {
                    entries.push(entry);
                }
                Ok(RawMatrix(entries))
            }
        }
        deserializer.deserialize_map(Entries)
    }
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(
    deny_unknown_fields,
    expecting = "an input (a mapping with `name` and `from` or `param`)"
)]
pub(crate) struct RawInput {
    pub name: Option<String>,
    /// `<task>/<output>`; from a task with a matrix, every instance's output.
    pub from: Option<String>,
    /// A param's name: its value is written to the input's file (instead of `from`).
    pub param: Option<String>,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(
    deny_unknown_fields,
    expecting = "an output (a mapping with `name` and `path`)"
)]
pub(crate) struct RawOutput {
    pub name: Option<String>,
    /// Relative to $DROVER_OUTPUTS.
    pub path: Option<String>,
    /// At most 64 KiB, sent back with the task's success so that `when:`
    /// conditions downstream can read it (as JSON if it parses, else text).
    pub result: Option<bool>,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(
    deny_unknown_fields,
    expecting = "resources (a mapping with `cpu`, `memory`, `gpu`, `gpu_model`, `gpu_memory`)"
)]
pub(crate) struct RawResources {
    pub cpu: Option<String>,
    pub memory: Option<String>,
    pub gpu: Option<String>,
    pub gpu_model: Option<String>,
    pub gpu_memory: Option<String>,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(
    deny_unknown_fields,
    expecting = "retries (a mapping with `limit` and `backoff`)"
)]
pub(crate) struct RawRetries {
    pub limit: Option<String>,
    pub backoff: Option<String>,
}

/// Decodes `yaml` into the raw structs, turning serde's errors into
/// messages that name the task rather than its index.
pub(crate) fn decode(yaml: &str) -> Result<RawSpec, SpecError> {
    let Some(root) = yaml::parse(yaml).map_err(SpecError::Yaml)? else {
        // An empty file: let the validator say what is missing.
        return Ok(RawSpec::default());
    };
    root.deserialize().map_err(|e| schema_error(e, &root))
}

fn schema_error(error: yaml::Error, root: &Node) -> SpecError {
    let message = match unknown_field(&error.message) {
        // The field is all the user needs; the expected list is long and
        // grows with the format.
        Some(field) => format!("unknown field `{field}`"),
        None => format!("{}{}", error.message, error.location()),
    };
    SpecError::Schema {
        at: describe_path(&error.path, root),
        message,
    }
}

/// The field name in serde's "unknown field `x`, expected ..." message.
fn unknown_field(message: &str) -> Option<&str> {
    let rest = message.strip_prefix("unknown field `")?;
    let end = rest
        .rfind("`, expected")
        .or_else(|| rest.rfind("`, there are no fields"))?;
    Some(&rest[..end])
}

/// `tasks[1].resources` → "task `train`: resources" (or "task #2: resources"
/// when the task has no usable name), `finally[0]` → "finally task ...";
/// other paths are shown as they are.
fn describe_path(path: &[Segment], root: &Node) -> String {
    let (list, kind, index, rest) = match path {
        [Segment::Key(list), Segment::Index(index), rest @ ..] if list == "tasks" => {
            (list, "task", *index, rest)
        }
        [Segment::Key(list), Segment::Index(index), rest @ ..] if list == "finally" => {
            (list, "finally task", *index, rest)
        }
        _ => return yaml::render_path(path),
    };
    let name = root
        .get(list)
        .and_then(|tasks| match &tasks.value {
            Value::Seq(items) => items.get(index),
            _ => None,
        })
        .and_then(|task| task.get("name"));
    let task = match name.map(|n| &n.value) {
        Some(Value::Scalar(Kind::String | Kind::Number, name)) if !name.is_empty() => {
            format!("{kind} `{name}`")
        }
        _ => format!("{kind} #{}", index + 1),
    };
    if rest.is_empty() {
        task
    } else {
        format!("{task}: {}", yaml::render_path(rest))
    }
}
