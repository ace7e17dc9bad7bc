//! The step cache's key and policy.
//!
//! A task's key is a sha256 over a canonical encoding of everything that
//! decides what it computes, as the agent would get it: the resolved command
//! and env (params, matrix values and items count through them), the image
//! reference and so the executor, the working directory, the sha256 of every
//! input, the run's code digest, the declared outputs and the user's
//! `cache: {version}`. Each field is tagged and length-prefixed, maps are
//! sorted, so no two different inputs encode alike. Resources, node
//! selectors and retries are not in it: they decide where and how often a
//! task runs, not what it writes.

use std::collections::BTreeMap;

use sha2::{Digest, Sha256};

use crate::Millis;

/// Bumped when the encoding changes, so old entries stop matching.
const DOMAIN: &[u8] = b"drover-step-cache-v1";

/// One input as the task receives it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum InputDigest<'a> {
    /// One object, by its sha256.
    One { name: &'a str, sha256: &'a str },
    /// Gathered from every instance of a task (fan-in): each part's file
    /// name and sha256, and the listing written next to them.
    Parts {
        name: &'a str,
        parts: Vec<(&'a str, &'a str)>,
        listing: &'a [u8],
    },
    /// A param's value, written to the input's file.
    Content { name: &'a str, content: &'a [u8] },
}

/// A declared output: name, path, and whether its content goes back as a result.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OutputDecl<'a> {
    pub name: &'a str,
    pub path: &'a str,
    pub result: bool,
}

/// What a task's key covers.
#[derive(Clone, Debug)]
pub struct KeyInput<'a> {
    pub command: &'a [String],
    pub env: &'a BTreeMap<String, String>,
    /// Empty: a process task.
    pub image: &'a str,
    pub workdir: &'a str,
    pub inputs: Vec<InputDigest<'a>>,
    /// The run's code snapshot; empty: none.
    pub code_sha256: &'a str,
    pub outputs: Vec<OutputDecl<'a>>,
    /// `cache: {version: …}`.
    pub version: &'a str,
}

/// Why a task has no key.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum NoKey {
    /// An input's sha256 is not known (recorded before digests were).
    UnknownDigest { input: String },
}

struct Encoder(Sha256);

impl Encoder {
    fn bytes(&mut self, tag: &str, value: &[u8]) {
        self.0.update(tag.as_bytes());
        self.0.update([0]);
        self.0.update((value.len() as u64).to_le_bytes());
        self.0.update(value);
    }

    fn count(&mut self, tag: &str, n: usize) {
        self.bytes(tag, &(n as u64).to_le_bytes());
    }
}

impl KeyInput<'_> {
    /// The key, lowercase hex.
    pub fn key(&self) -> Result<String, NoKey> {
        let mut e = Encoder(Sha256::new());
        e.bytes("domain", DOMAIN);
        e.count("command", self.command.len());
        for arg in self.command {
            e.bytes("arg", arg.as_bytes());
        }
        e.count("env", self.env.len());
        for (k, v) in self.env {
            e.bytes("env.key", k.as_bytes());
            e.bytes("env.value", v.as_bytes());
        }
        let executor = if self.image.is_empty() {
            "process"
        } else {
            "docker"
        };
        e.bytes("executor", executor.as_bytes());
        e.bytes("image", self.image.as_bytes());
        e.bytes("workdir", self.workdir.as_bytes());
        let mut inputs: Vec<&InputDigest> = self.inputs.iter().collect();
        inputs.sort_by_key(|i| match i {
            InputDigest::One { name, .. }
            | InputDigest::Parts { name, .. }
            | InputDigest::Content { name, .. } => *name,
        });
        e.count("inputs", inputs.len());
        for input in inputs {
            match input {
                InputDigest::One { name, sha256 } => {
                    known(name, sha256)?;
                    e.bytes("input.one", name.as_bytes());
                    e.bytes("input.sha256", sha256.as_bytes());
                }
                InputDigest::Parts {
                    name,
                    parts,
                    listing,
                } => {
                    e.bytes("input.parts", name.as_bytes());
                    e.count("input.parts.count", parts.len());
                    for (file, sha256) in parts {
                        known(name, sha256)?;
                        e.bytes("input.part.file", file.as_bytes());
                        e.bytes("input.part.sha256", sha256.as_bytes());
                    }
                    e.bytes("input.listing", listing);
                }
                InputDigest::Content { name, content } => {
                    e.bytes("input.content", name.as_bytes());
                    e.bytes("input.content.bytes", content);
                }
            }
        }
        e.bytes("code", self.code_sha256.as_bytes());
        let mut outputs: Vec<&OutputDecl> = self.outputs.iter().collect();
        outputs.sort_by_key(|o| o.name);
        e.count("outputs", outputs.len());
        for o in outputs {
            e.bytes("output.name", o.name.as_bytes());
            e.bytes("output.path", o.path.as_bytes());
            e.bytes("output.result", &[u8::from(o.result)]);
        }
        e.bytes("version", self.version.as_bytes());
        Ok(hex(&e.0.finalize()))
    }
}

fn known(name: &str, sha256: &str) -> Result<(), NoKey> {
    if sha256.is_empty() {
        return Err(NoKey::UnknownDigest {
            input: name.to_owned(),
        });
    }
    Ok(())
}

fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        s.push(DIGITS[usize::from(b >> 4)] as char);
        s.push(DIGITS[usize::from(b & 0xf)] as char);
    }
    s
}

/// A task's `cache:` setting as written.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Default)]
pub enum Mode {
    /// On for a task that declares outputs, off for one that does not
    /// (a task without outputs is run for its side effects).
    #[default]
    Default,
    On,
    Off,
}

/// Whether and how a task takes part in the cache.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub struct Policy {
    pub mode: Mode,
    /// Only entries at most this old are taken (None: any kept).
    pub max_age: Option<Millis>,
}

impl Policy {
    /// Whether the task is cached at all. A `finally` task never is: it
    /// runs whatever happens, usually to tell someone.
    pub fn enabled(&self, has_outputs: bool, finally: bool) -> bool {
        !finally
            && match self.mode {
                Mode::Default => has_outputs,
                Mode::On => true,
                Mode::Off => false,
            }
    }

    /// Whether an entry made at `created_at` may serve a task at `now`.
    pub fn fresh(&self, created_at: Millis, now: Millis) -> bool {
        self.max_age
            .is_none_or(|age| now.saturating_sub(created_at) <= age)
    }
}

#[cfg(test)]
mod tests;
