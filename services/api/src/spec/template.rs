//! `{{params.NAME}}` and, in a task with a `matrix`, `{{matrix.NAME}}`
//! substitution; in a task with `for_each`, `{{item}}` and
//! `{{item.FIELD}}` are kept as written at submit and substituted per
//! instance at run time ([`substitute_item`]). Those forms are the whole
//! language: no filters, no expressions, no escapes; `}}` on its own is
//! plain text.

use std::collections::BTreeMap;

/// Why a string's templates could not be resolved.
#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
pub enum TemplateError {
    #[error("`{template}` refers to unknown param `{name}`")]
    UnknownParam { template: String, name: String },
    #[error("`{template}` refers to `{name}`, which the task's matrix does not declare")]
    UnknownMatrixValue { template: String, name: String },
    #[error("`{template}` needs a `matrix` on the task")]
    NoMatrix { template: String },
    #[error("unterminated `{{{{` in `{text}`")]
    Unterminated { text: String },
    #[error("unsupported template `{template}` (only `{{{{params.NAME}}}}` and `{{{{matrix.NAME}}}}` are supported)")]
    Unsupported { template: String },
    #[error("`{template}` needs `for_each` on the task")]
    NoForEach { template: String },
    #[error("`{template}` needs an object item, got `{item}`")]
    ItemNotObject { template: String, item: String },
    #[error("`{template}`: the item has no field `{field}`")]
    NoItemField { template: String, field: String },
}

/// What templates may refer to.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Scope<'a> {
    pub params: &'a BTreeMap<String, String>,
    /// The instance's matrix values; None outside a task with a matrix.
    pub matrix: Option<&'a BTreeMap<String, String>>,
    /// The task has `for_each`: `{{item…}}` is kept for the instances.
    pub for_each: bool,
}

/// `{{item}}` or `{{item.FIELD}}` (spaces allowed inside the braces): the
/// field, or Some("") for the whole item.
fn item_reference(inner: &str) -> Option<&str> {
    if inner == "item" {
        return Some("");
    }
    inner.strip_prefix("item.").filter(|f| is_param_name(f))
}

/// Replaces every `{{params.NAME}}` and `{{matrix.NAME}}` (spaces allowed
/// inside the braces) in `text` with its value. Substituted values are not
/// scanned again.
pub(crate) fn substitute(text: &str, scope: Scope<'_>) -> Result<String, TemplateError> {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(start) = rest.find("{{") {
        out.push_str(&rest[..start]);
        let after_open = &rest[start + 2..];
        let Some(len) = after_open.find("}}") else {
            return Err(TemplateError::Unterminated {
                text: text.to_owned(),
            });
        };
        let template = &rest[start..start + 2 + len + 2];
        let inner = after_open[..len].trim();
        let reference = |prefix: &str| inner.strip_prefix(prefix).filter(|n| is_param_name(n));
        if item_reference(inner).is_some() {
            if !scope.for_each {
                return Err(TemplateError::NoForEach {
                    template: template.to_owned(),
                });
            }
            out.push_str(template);
            rest = &after_open[len + 2..];
            continue;
        }
        let value = if let Some(name) = reference("params.") {
            scope
                .params
                .get(name)
                .ok_or_else(|| TemplateError::UnknownParam {
                    template: template.to_owned(),
                    name: name.to_owned(),
                })?
        } else if let Some(name) = reference("matrix.") {
            let matrix = scope.matrix.ok_or_else(|| TemplateError::NoMatrix {
                template: template.to_owned(),
            })?;
            matrix
                .get(name)
                .ok_or_else(|| TemplateError::UnknownMatrixValue {
                    template: template.to_owned(),
                    name: name.to_owned(),
                })?
        } else {
            return Err(TemplateError::Unsupported {
                template: template.to_owned(),
            });
        };
        out.push_str(value);
        rest = &after_open[len + 2..];
    }
    out.push_str(rest);
    Ok(out)
}

/// Replaces `{{item}}` (the item: a string as is, anything else as JSON)
/// and `{{item.FIELD}}` (a field of an object item, likewise) in text
/// that params and matrix substitution already went through; other
/// `{{…}}` text is left as it is.
pub fn substitute_item(text: &str, item: &serde_json::Value) -> Result<String, TemplateError> {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(start) = rest.find("{{") {
        let after_open = &rest[start + 2..];
        let Some(len) = after_open.find("}}") else {
            break;
        };
        let template = &rest[start..start + 2 + len + 2];
        out.push_str(&rest[..start]);
        rest = &after_open[len + 2..];
        let Some(field) = item_reference(after_open[..len].trim()) else {
            out.push_str(template);
            continue;
        };
        let value = if field.is_empty() {
            item
        } else {
            let object = item
                .as_object()
                .ok_or_else(|| TemplateError::ItemNotObject {
                    template: template.to_owned(),
                    item: item.to_string(),
                })?;
            object
                .get(field)
                .ok_or_else(|| TemplateError::NoItemField {
                    template: template.to_owned(),
                    field: field.to_owned(),
                })?
        };
        match value {
            serde_json::Value::String(s) => out.push_str(s),
            other => out.push_str(&other.to_string()),
        }
    }
    out.push_str(rest);
    Ok(out)
}

/// Whether `text` has an `{{item}}` or `{{item.FIELD}}` template.
pub fn has_item_template(text: &str) -> bool {
    let mut rest = text;
    while let Some(start) = rest.find("{{") {
        let after_open = &rest[start + 2..];
        let Some(len) = after_open.find("}}") else {
            return false;
        };
        if item_reference(after_open[..len].trim()).is_some() {
            return true;
        }
        rest = &after_open[len + 2..];
    }
    false
}

/// `[A-Za-z_][A-Za-z0-9_-]*`: what may follow `params.` in a template.
pub(crate) fn is_param_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn params() -> BTreeMap<String, String> {
        map(&[("lr", "0.1"), ("epochs", "3"), ("brace", "{{x}}")])
    }

    fn scope(params: &BTreeMap<String, String>) -> Scope<'_> {
        Scope {
            params,
            matrix: None,
            for_each: false,
        }
    }

    #[test]
    fn substitutes_every_occurrence() {
        let p = params();
        assert_eq!(substitute("{{params.lr}}", scope(&p)), Ok("0.1".to_owned()));
        assert_eq!(
            substitute("--lr={{ params.lr }}", scope(&p)),
            Ok("--lr=0.1".to_owned())
        );
        assert_eq!(
            substitute("{{params.lr}}/{{params.epochs}}!", scope(&p)),
            Ok("0.1/3!".to_owned())
        );
        assert_eq!(
            substitute("no templates }} here", scope(&p)),
            Ok("no templates }} here".to_owned())
        );
        assert_eq!(substitute("", scope(&p)), Ok(String::new()));
        // A value that looks like a template is inserted as is, not expanded.
        assert_eq!(
            substitute("{{params.brace}}", scope(&p)),
            Ok("{{x}}".to_owned())
        );
    }

    #[test]
    fn rejects_bad_templates() {
        let p = params();
        assert_eq!(
            substitute("x{{params.nope}}", scope(&p))
                .unwrap_err()
                .to_string(),
            "`{{params.nope}}` refers to unknown param `nope`"
        );
        assert_eq!(
            substitute("--lr={{params.lr", scope(&p))
                .unwrap_err()
                .to_string(),
            "unterminated `{{` in `--lr={{params.lr`"
        );
        assert_eq!(
            substitute("{{params.lr}} {{", scope(&p))
                .unwrap_err()
                .to_string(),
            "unterminated `{{` in `{{params.lr}} {{`"
        );
        for bad in [
            "{{lr}}",
            "{{ env.HOME }}",
            "{{params.}}",
            "{{params.a b}}",
            "{{}}",
            "{{params.lr|upper}}",
        ] {
            assert_eq!(
                substitute(bad, scope(&p)).unwrap_err().to_string(),
                format!("unsupported template `{bad}` (only `{{{{params.NAME}}}}` and `{{{{matrix.NAME}}}}` are supported)"),
                "{bad}"
            );
        }
    }

    #[test]
    fn matrix_values_are_substituted_inside_a_matrix_only() {
        let p = params();
        let m = map(&[("lr", "0.03"), ("opt", "adam")]);
        let inside = Scope {
            params: &p,
            matrix: Some(&m),
            for_each: false,
        };
        assert_eq!(
            substitute(
                "--lr={{matrix.lr}} --opt {{ matrix.opt }} x{{params.epochs}}",
                inside
            ),
            Ok("--lr=0.03 --opt adam x3".to_owned())
        );
        assert_eq!(
            substitute("{{matrix.nope}}", inside)
                .unwrap_err()
                .to_string(),
            "`{{matrix.nope}}` refers to `nope`, which the task's matrix does not declare"
        );
        assert_eq!(
            substitute("{{matrix.lr}}", scope(&p))
                .unwrap_err()
                .to_string(),
            "`{{matrix.lr}}` needs a `matrix` on the task"
        );
    }

    #[test]
    fn item_templates_are_kept_at_submit_and_substituted_per_instance() {
        let p = params();
        let mapped = Scope {
            params: &p,
            matrix: None,
            for_each: true,
        };
        assert_eq!(
            substitute("--lr={{params.lr}} {{ item }} {{item.x}}", mapped),
            Ok("--lr=0.1 {{ item }} {{item.x}}".to_owned())
        );
        assert_eq!(
            substitute("{{item}}", scope(&p)).unwrap_err().to_string(),
            "`{{item}}` needs `for_each` on the task"
        );
        let s = serde_json::json!("a b");
        assert_eq!(substitute_item("x={{ item }}", &s), Ok("x=a b".to_owned()));
        let n = serde_json::json!(3);
        assert_eq!(substitute_item("{{item}}", &n), Ok("3".to_owned()));
        let o = serde_json::json!({"lr": 0.1, "name": "a"});
        assert_eq!(
            substitute_item("{{item.name}}:{{item.lr}} {{x}}", &o),
            Ok("a:0.1 {{x}}".to_owned())
        );
        assert_eq!(
            substitute_item("{{item}}", &o),
            Ok(r#"{"lr":0.1,"name":"a"}"#.to_owned())
        );
        assert_eq!(
            substitute_item("{{item.nope}}", &o)
                .unwrap_err()
                .to_string(),
            "`{{item.nope}}`: the item has no field `nope`"
        );
        assert_eq!(
            substitute_item("{{item.x}}", &s).unwrap_err().to_string(),
            "`{{item.x}}` needs an object item, got `\"a b\"`"
        );
        assert!(has_item_template("a {{ item.x }}"));
        assert!(!has_item_template("a {{params.x}}"));
    }

    #[test]
    fn param_names() {
        for good in ["lr", "_x", "learning-rate", "a1"] {
            assert!(is_param_name(good), "{good}");
        }
        for bad in ["", "1a", "a.b", "a b", "é"] {
            assert!(!is_param_name(bad), "{bad}");
        }
    }
}
