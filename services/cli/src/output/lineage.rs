//! `drover lineage`: the tree behind an artifact, as an indented tree (each
//! attempt once; a producer reached again says so) or as JSON (the nodes
//! flat, referring to each other by index, as the scheduler sends them).

use std::collections::{HashMap, HashSet};
use std::fmt::Write as _;

use serde_json::{json, Value};

use drover_api::pb;

use super::{duration, timestamp};

/// The readable tree: each root, then its inputs' producers nested under it.
/// An input with the same content as an output asked about says so (the
/// example's best model is a copy of one trained model: this names it).
pub fn lineage_table(l: &pb::GetLineageResponse) -> String {
    let asked = l
        .roots
        .iter()
        .filter_map(|&r| l.nodes.get(r as usize))
        .flat_map(|n| &n.outputs)
        .filter(|o| l.output.is_empty() || o.name == l.output)
        .map(|o| (o.sha256.clone(), o.name.clone()))
        .collect();
    let mut p = Printer {
        l,
        asked,
        shown: HashSet::new(),
        out: String::new(),
        run: l
            .roots
            .first()
            .and_then(|&r| l.nodes.get(r as usize))
            .map(|n| n.run_id.clone())
            .unwrap_or_default(),
    };
    for &root in &l.roots {
        let Some(n) = l.nodes.get(root as usize) else {
            continue;
        };
        let _ = writeln!(p.out, "{} #{}  run {}", n.task, n.attempt, n.run_id);
        p.shown.insert(root);
        p.body(root, "  ", &l.output);
    }
    p.out
}

struct Printer<'a> {
    l: &'a pb::GetLineageResponse,
    /// The roots' outputs asked about, by sha256.
    asked: HashMap<String, String>,
    shown: HashSet<u32>,
    out: String,
    /// The roots' run: other runs are named where they appear.
    run: String,
}

impl Printer<'_> {
    fn line(&mut self, pad: &str, label: &str, value: &str) {
        let _ = writeln!(self.out, "{pad}{label:<9}{value}");
    }

    /// Node `i`'s fields, inputs and the source of a cached result, at `pad`;
    /// `only_output`: the output asked about (empty: all).
    fn body(&mut self, i: u32, pad: &str, only_output: &str) {
        let l = self.l;
        let Some(n) = l.nodes.get(i as usize) else {
            return;
        };
        self.line(pad, "command", &command_line(&n.command));
        let image = match (n.image.as_str(), n.image_digest.as_str()) {
            ("", _) => "none (process)".to_owned(),
            (image, "") => format!("{image} (digest not reported)"),
            (image, digest) => format!("{image} ({digest})"),
        };
        self.line(pad, "image", &image);
        if !n.workdir.is_empty() {
            self.line(pad, "workdir", &n.workdir);
        }
        let code = match n.code_sha256.as_str() {
            "" => "none".to_owned(),
            sha => format!("sha256:{sha}"),
        };
        self.line(pad, "code", &code);
        if !n.params.is_empty() {
            self.line(pad, "params", &pairs(&n.params));
        }
        if !n.matrix.is_empty() {
            self.line(pad, "matrix", &pairs(&n.matrix));
        }
        let mut agent = if n.agent_id.is_empty() {
            "none".to_owned()
        } else {
            n.agent_id.clone()
        };
        for g in &n.gpus {
            let model = if g.model.is_empty() {
                "unknown model"
            } else {
                &g.model
            };
            let _ = write!(agent, "  GPU {} {model} ({})", g.index, g.uuid);
        }
        self.line(pad, "agent", &agent);
        let took = n.finished_at_ms.saturating_sub(n.started_at_ms);
        let ran = format!(
            "{} → {} ({})",
            timestamp(n.started_at_ms),
            timestamp(n.finished_at_ms),
            if n.started_at_ms == 0 {
                "-".to_owned()
            } else {
                duration(took)
            }
        );
        self.line(pad, "ran", &ran);
        for o in n
            .outputs
            .iter()
            .filter(|o| only_output.is_empty() || o.name == only_output)
        {
            let text = format!("{}  sha256:{}  {} B", o.name, o.sha256, o.size);
            self.line(pad, "output", &text);
        }
        if !n.note.is_empty() {
            self.line(pad, "note", &n.note);
        }
        if let Some(src) = &n.cached_from {
            let from = format!(
                "{} #{} of run {} (the result was reused, not run again)",
                src.task, src.attempt, src.run_id
            );
            self.line(pad, "cached", &from);
            if let Some(source) = n
                .source
                .and_then(|s| l.nodes.get(s as usize).map(|n| (s, n)))
            {
                let (s, node) = source;
                let _ = write!(self.out, "{pad}  {} #{}", node.task, node.attempt);
                self.producer(s, &format!("{pad}    "));
            }
        }
        for input in &n.inputs {
            if !input.from_param.is_empty() {
                let text = format!("{} ← params.{}", input.name, input.from_param);
                self.line(pad, "input", &text);
                continue;
            }
            let mut text = format!("{} ← {}/{}", input.name, input.from_task, input.from_output);
            if input.parts.is_empty() {
                text.push_str("  (absent: its producer did not succeed)");
            }
            self.line(pad, "input", &text);
            for part in &input.parts {
                let _ = write!(
                    self.out,
                    "{pad}  {} #{}  sha256:{}",
                    part.task, part.attempt, part.sha256
                );
                if let Some(name) = self.asked.get(&part.sha256) {
                    let _ = write!(self.out, "  (same content as {name})");
                }
                match part.node {
                    Some(p) => self.producer(p, &format!("{pad}    ")),
                    None => self.out.push('\n'),
                }
            }
        }
    }

    /// Ends the producer's header line, then shows it (once).
    fn producer(&mut self, i: u32, pad: &str) {
        let run = self
            .l
            .nodes
            .get(i as usize)
            .map(|n| n.run_id.clone())
            .unwrap_or_default();
        if run != self.run {
            let _ = write!(self.out, "  run {run}");
        }
        if !self.shown.insert(i) {
            self.out.push_str("  (shown above)\n");
            return;
        }
        self.out.push('\n');
        self.body(i, pad, "");
    }
}

/// `k=v k2=v2`.
fn pairs(map: &std::collections::BTreeMap<String, String>) -> String {
    map.iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(" ")
}

/// The command as a shell would take it: arguments with spaces or quotes
/// in single quotes.
fn command_line(args: &[String]) -> String {
    let plain = |c: char| c.is_ascii_alphanumeric() || "_@%+=:,./-{}[]$".contains(c);
    args.iter()
        .map(|a| {
            if !a.is_empty() && a.chars().all(plain) {
                a.clone()
            } else {
                format!("'{}'", a.replace('\'', r"'\''"))
            }
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// The answer for scripts: `roots` index into `nodes`, as do each node's
/// `source` and each input part's `node` (null where not followed).
pub fn lineage_json(l: &pb::GetLineageResponse) -> Value {
    json!({
        "output": l.output,
        "roots": l.roots,
        "nodes": l.nodes.iter().map(node_json).collect::<Vec<_>>(),
    })
}

fn node_json(n: &pb::LineageNode) -> Value {
    json!({
        "run_id": n.run_id,
        "task": n.task,
        "attempt": n.attempt,
        "command": n.command,
        "image": n.image,
        "image_digest": n.image_digest,
        "code_sha256": n.code_sha256,
        "workdir": n.workdir,
        "params": n.params,
        "matrix": n.matrix,
        "agent_id": n.agent_id,
        "gpus": n.gpus.iter().map(|g| json!({"index": g.index, "uuid": g.uuid, "model": g.model})).collect::<Vec<_>>(),
        "started_at_ms": n.started_at_ms,
        "finished_at_ms": n.finished_at_ms,
        "outputs": n.outputs.iter().map(|o| json!({
            "name": o.name, "key": o.key, "sha256": o.sha256, "size": o.size,
        })).collect::<Vec<_>>(),
        "cached_from": n.cached_from.as_ref().map(|s| json!({
            "run_id": s.run_id, "task": s.task, "attempt": s.attempt,
        })),
        "source": n.source,
        "inputs": n.inputs.iter().map(|i| json!({
            "name": i.name,
            "from_task": i.from_task,
            "from_output": i.from_output,
            "from_param": i.from_param,
            "parts": i.parts.iter().map(|p| json!({
                "task": p.task, "attempt": p.attempt, "sha256": p.sha256, "size": p.size, "node": p.node,
            })).collect::<Vec<_>>(),
        })).collect::<Vec<_>>(),
        "note": n.note,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(task: &str, inputs: Vec<pb::LineageInput>) -> pb::LineageNode {
        pb::LineageNode {
            run_id: "r1".into(),
            task: task.into(),
            attempt: 1,
            command: vec!["sh".into(), "-c".into(), "echo 'hi' > x".into()],
            code_sha256: "c".repeat(64),
            agent_id: "a1".into(),
            started_at_ms: 1_000,
            finished_at_ms: 4_000,
            outputs: vec![pb::Artifact {
                name: "out".into(),
                sha256: format!("{task}-sha"),
                size: 3,
                ..Default::default()
            }],
            inputs,
            ..Default::default()
        }
    }

    fn input(from: &str, node: Option<u32>) -> pb::LineageInput {
        pb::LineageInput {
            name: "in".into(),
            from_task: from.into(),
            from_output: "out".into(),
            parts: vec![pb::LineageInputPart {
                task: from.into(),
                attempt: 1,
                sha256: format!("{from}-sha"),
                size: 3,
                node,
            }],
            ..Default::default()
        }
    }

    #[test]
    fn an_input_from_a_param_names_the_param_and_no_producer() {
        let param = pb::LineageInput {
            name: "objects.json".into(),
            from_param: "objects".into(),
            ..Default::default()
        };
        let l = pb::GetLineageResponse {
            roots: vec![0],
            nodes: vec![node("ingest", vec![param])],
            output: String::new(),
        };
        let text = lineage_table(&l);
        assert!(
            text.contains("\n  input    objects.json ← params.objects\n"),
            "{text}"
        );
        assert!(!text.contains("absent"), "{text}");
    }

    #[test]
    fn a_shared_producer_is_shown_once_and_the_rest_indented_under_its_consumer() {
        // d ← b ← a, d ← c ← a (a diamond), c's producer past the depth limit.
        let mut c = node("c", vec![input("a", None)]);
        c.note = "inputs' producers not shown: the depth limit (1) is reached".into();
        c.gpus = vec![pb::GpuRef {
            index: 0,
            uuid: "GPU-1".into(),
            model: "NVIDIA H100".into(),
        }];
        let l = pb::GetLineageResponse {
            roots: vec![0],
            nodes: vec![
                node("d", vec![input("b", Some(1)), input("a", Some(2))]),
                node("b", vec![input("a", Some(2))]),
                node("a", vec![]),
                c,
            ],
            output: String::new(),
        };
        let mut l = l;
        l.nodes[0].outputs[0].sha256 = "b-sha".into();
        let text = lineage_table(&l);
        assert!(
            text.starts_with("d #1  run r1\n  command  sh -c 'echo '\\''hi'\\'' > x'\n"),
            "{text}"
        );
        assert!(
            text.contains("\n  input    in ← b/out\n    b #1  sha256:b-sha  (same content as out)\n      command  "),
            "{text}"
        );
        assert!(
            text.contains(
                "\n      input    in ← a/out\n        a #1  sha256:a-sha\n          command"
            ),
            "{text}"
        );
        assert!(
            text.contains("\n  input    in ← a/out\n    a #1  sha256:a-sha  (shown above)\n"),
            "{text}"
        );
        assert_eq!(text.matches("a #1").count(), 2, "{text}");
        assert!(
            text.contains(&format!("  code     sha256:{}\n", "c".repeat(64))),
            "{text}"
        );
        assert!(
            text.contains("  ran      1970-01-01 00:00:01 UTC → 1970-01-01 00:00:04 UTC (3s)\n"),
            "{text}"
        );
        assert!(text.contains("  image    none (process)\n"), "{text}");

        let c_only = pb::GetLineageResponse {
            roots: vec![3],
            ..l.clone()
        };
        let text = lineage_table(&c_only);
        assert!(
            text.contains("  agent    a1  GPU 0 NVIDIA H100 (GPU-1)\n"),
            "{text}"
        );
        assert!(
            text.contains("  note     inputs' producers not shown"),
            "{text}"
        );
        assert!(
            text.ends_with("  input    in ← a/out\n    a #1  sha256:a-sha\n"),
            "{text}"
        );

        // A cached result: where it came from, shown beneath.
        let mut cached = l.clone();
        cached.roots = vec![4];
        let mut hit = node("d", vec![]);
        hit.run_id = "r2".into();
        hit.agent_id = String::new();
        hit.cached_from = Some(pb::AttemptSource {
            run_id: "r1".into(),
            task: "d".into(),
            attempt: 1,
        });
        hit.source = Some(0);
        cached.nodes.push(hit);
        let text = lineage_table(&cached);
        assert!(text.contains("  agent    none\n"), "{text}");
        assert!(
            text.contains("  cached   d #1 of run r1 (the result was reused, not run again)\n    d #1  run r1\n      command  sh"),
            "{text}"
        );

        let v = lineage_json(&l);
        assert_eq!(v["roots"], json!([0]));
        assert_eq!(v["nodes"][0]["inputs"][1]["parts"][0]["node"], 2);
        assert_eq!(v["nodes"][3]["inputs"][0]["parts"][0]["node"], Value::Null);
        assert_eq!(v["nodes"][3]["gpus"][0]["model"], "NVIDIA H100");
        assert_eq!(v["nodes"][0]["code_sha256"], "c".repeat(64));
    }
}
