//! `when:` conditions: CEL expressions (the language Kubernetes uses for its
//! validation rules), checked at submit and evaluated by the scheduler once
//! the task's upstream tasks have succeeded.
//!
//! A condition sees `params` (strings), `matrix` (the instance's values,
//! strings), `item` (a `for_each` instance's element, as JSON) and
//! `tasks.<task>.outputs.<output>`: the outputs its upstream tasks declared
//! `result: true`, parsed as JSON if they parse, else text. A `for_each`
//! task's condition that names `item` is evaluated for each instance;
//! otherwise once, before the task expands.

use std::collections::BTreeMap;
use std::panic::{catch_unwind, AssertUnwindSafe};

use cel::{Context, Program, Value};

/// The variables a condition may name.
const VARIABLES: [&str; 4] = ["params", "matrix", "tasks", "item"];

/// Longest expression accepted: a condition is a line, not a program.
pub const MAX_LEN: usize = 1_000;

/// Most bytes an output declared `result: true` may have.
pub const MAX_RESULT_BYTES: usize = 64 * 1024;

/// Checks that `expr` compiles and names only variables it will have
/// (`matrix` only on a task with a matrix, `item` only with `for_each`).
pub fn check(expr: &str, has_matrix: bool, has_item: bool) -> Result<(), String> {
    let program = compile(expr)?;
    let references = program.references();
    for name in references.variables() {
        if !VARIABLES.contains(&name) {
            let item = if has_item { ", item" } else { "" };
            return Err(format!(
                "unknown variable `{name}` (use params, matrix{item} or tasks)"
            ));
        }
        if name == "matrix" && !has_matrix {
            return Err("`matrix` is used but the task has no matrix".to_owned());
        }
        if name == "item" && !has_item {
            return Err("`item` is used but the task has no for_each".to_owned());
        }
    }
    Ok(())
}

/// Whether `expr` names `item` (then a `for_each` task's instances are
/// each evaluated). False for an expression that does not compile.
pub fn uses_item(expr: &str) -> bool {
    compile(expr).is_ok_and(|p| p.references().variables().contains(&"item"))
}

/// What a condition is evaluated over.
#[derive(Debug, Default)]
pub struct Inputs<'a> {
    pub params: BTreeMap<&'a str, &'a str>,
    pub matrix: BTreeMap<&'a str, &'a str>,
    /// Task → output → the output's content.
    pub results: BTreeMap<&'a str, BTreeMap<&'a str, &'a [u8]>>,
    /// A `for_each` instance's element.
    pub item: Option<&'a serde_json::Value>,
}

/// Evaluates `expr`: true or false, or why it could not say.
pub fn evaluate(expr: &str, inputs: &Inputs<'_>) -> Result<bool, String> {
    let program = compile(expr)?;
    let tasks: serde_json::Map<String, serde_json::Value> = inputs
        .results
        .iter()
        .map(|(task, outputs)| {
            let outputs: serde_json::Map<String, serde_json::Value> = outputs
                .iter()
                .map(|(name, bytes)| ((*name).to_owned(), result_value(bytes)))
                .collect();
            (
                (*task).to_owned(),
                serde_json::json!({ "outputs": outputs }),
            )
        })
        .collect();
    let mut context = Context::default();
    let variables = [
        ("params", serde_json::json!(inputs.params)),
        ("matrix", serde_json::json!(inputs.matrix)),
        ("tasks", serde_json::Value::Object(tasks)),
        (
            "item",
            inputs.item.cloned().unwrap_or(serde_json::Value::Null),
        ),
    ];
    for (name, value) in variables {
        context
            .add_variable(name, value)
            .map_err(|e| format!("variable `{name}`: {e}"))?;
    }
    let outcome = catch_unwind(AssertUnwindSafe(|| program.execute(&context)))
        .map_err(|_| "the expression could not be evaluated".to_owned())?;
    match outcome.map_err(|e| e.to_string())? {
        Value::Bool(b) => Ok(b),
        other => Err(format!("gave {}, not true or false", shown(&other))),
    }
}

fn compile(expr: &str) -> Result<Program, String> {
    if expr.len() > MAX_LEN {
        return Err(format!(
            "{} characters, over the {MAX_LEN} allowed",
            expr.len()
        ));
    }
    // A parser bug must not take the scheduler down with it.
    catch_unwind(|| Program::compile(expr))
        .map_err(|_| "the expression could not be parsed".to_owned())?
        .map_err(|e| e.to_string())
}

/// An output's content as a condition sees it: JSON if it parses, else text.
fn result_value(bytes: &[u8]) -> serde_json::Value {
    serde_json::from_slice(bytes).unwrap_or_else(|_| {
        serde_json::Value::String(String::from_utf8_lossy(bytes).trim_end().to_owned())
    })
}

/// A value in an error message.
fn shown(value: &Value) -> String {
    match value {
        Value::String(s) => format!("the string {:?}", s.as_str()),
        Value::Int(i) => format!("the number {i}"),
        Value::UInt(u) => format!("the number {u}"),
        Value::Float(f) => format!("the number {f}"),
        Value::Null => "null".to_owned(),
        Value::List(_) => "a list".to_owned(),
        Value::Map(_) => "a map".to_owned(),
        _ => "a value".to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn inputs<'a>(results: &[(&'a str, &'a str, &'a [u8])]) -> Inputs<'a> {
        let mut i = Inputs::default();
        i.params.insert("threshold", "0.9");
        for (task, output, bytes) in results {
            i.results.entry(*task).or_default().insert(*output, *bytes);
        }
        i
    }

    #[test]
    fn results_are_json_when_they_parse_and_text_otherwise() {
        let i = inputs(&[
            ("evaluate", "metrics", br#"{"accuracy": 0.93}"#),
            ("check", "verdict", b"ok\n"),
        ]);
        let cond = "tasks.evaluate.outputs.metrics.accuracy >= 0.9";
        assert_eq!(evaluate(cond, &i), Ok(true));
        let cond = "tasks.evaluate.outputs.metrics.accuracy >= double(params.threshold) + 0.05";
        assert_eq!(evaluate(cond, &i), Ok(false));
        assert_eq!(
            evaluate("tasks.check.outputs.verdict == 'ok'", &i),
            Ok(true)
        );
    }

    #[test]
    fn runtime_problems_are_errors_not_answers() {
        let i = inputs(&[("evaluate", "metrics", b"{}")]);
        let missing = evaluate("tasks.evaluate.outputs.metrics.accuracy > 1.0", &i);
        assert!(missing.is_err_and(|e| e.contains("accuracy")));
        assert_eq!(
            evaluate("params.threshold", &i),
            Err("gave the string \"0.9\", not true or false".to_owned())
        );
    }

    #[test]
    fn check_rejects_what_cannot_compile_or_names_unknown_variables() {
        assert!(check("params.x == 'a' && tasks.t.outputs.o > 3", false, false).is_ok());
        assert!(check("params.x ==", false, false).is_err());
        assert_eq!(
            check("foo > 1", false, false),
            Err("unknown variable `foo` (use params, matrix or tasks)".to_owned())
        );
        assert_eq!(
            check("foo > 1", false, true),
            Err("unknown variable `foo` (use params, matrix, item or tasks)".to_owned())
        );
        assert_eq!(
            check("matrix.lr == '0.1'", false, false),
            Err("`matrix` is used but the task has no matrix".to_owned())
        );
        assert!(check("matrix.lr == '0.1'", true, false).is_ok());
        assert_eq!(
            check("item.size > 3", false, false),
            Err("`item` is used but the task has no for_each".to_owned())
        );
        assert!(check("item.size > 3", false, true).is_ok());
        assert!(check(&"a".repeat(MAX_LEN + 1), false, false).is_err());
    }

    #[test]
    fn item_is_the_instance_element_as_json() {
        let item = serde_json::json!({"shard": "b", "rows": 10});
        let mut i = inputs(&[]);
        i.item = Some(&item);
        assert_eq!(evaluate("item.rows > 5 && item.shard == 'b'", &i), Ok(true));
        let text = serde_json::json!("skip-me");
        i.item = Some(&text);
        assert_eq!(evaluate("item != 'skip-me'", &i), Ok(false));
        assert!(uses_item("item != 'x'"));
        assert!(!uses_item("params.x == 'item'"));
    }
}
