//! `{{params.NAME}}` substitution. That one form is the whole language: no
//! filters, no expressions, no escapes; `}}` on its own is plain text.

use std::collections::BTreeMap;

/// Why a string's templates could not be resolved.
#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
pub enum TemplateError {
    #[error("`{template}` refers to unknown param `{name}`")]
    UnknownParam { template: String, name: String },
    #[error("unterminated `{{{{` in `{text}`")]
    Unterminated { text: String },
    #[error("unsupported template `{template}` (only `{{{{params.NAME}}}}` is supported)")]
    Unsupported { template: String },
}

/// Replaces every `{{params.NAME}}` (spaces allowed inside the braces) in
/// `text` with the param's value. Substituted values are not scanned again.
pub(crate) fn substitute(
    text: &str,
    params: &BTreeMap<String, String>,
) -> Result<String, TemplateError> {
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
        let name = after_open[..len]
            .trim()
            .strip_prefix("params.")
            .filter(|name| is_param_name(name))
            .ok_or_else(|| TemplateError::Unsupported {
                template: template.to_owned(),
            })?;
        let value = params
            .get(name)
            .ok_or_else(|| TemplateError::UnknownParam {
                template: template.to_owned(),
                name: name.to_owned(),
            })?;
        out.push_str(value);
        rest = &after_open[len + 2..];
    }
    out.push_str(rest);
    Ok(out)
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

    fn params() -> BTreeMap<String, String> {
        [("lr", "0.1"), ("epochs", "3"), ("brace", "{{x}}")]
            .into_iter()
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
            .collect()
    }

    #[test]
    fn substitutes_every_occurrence() {
        let p = params();
        assert_eq!(substitute("{{params.lr}}", &p), Ok("0.1".to_owned()));
        assert_eq!(
            substitute("--lr={{ params.lr }}", &p),
            Ok("--lr=0.1".to_owned())
        );
        assert_eq!(
            substitute("{{params.lr}}/{{params.epochs}}!", &p),
            Ok("0.1/3!".to_owned())
        );
        assert_eq!(
            substitute("no templates }} here", &p),
            Ok("no templates }} here".to_owned())
        );
        assert_eq!(substitute("", &p), Ok(String::new()));
        // A value that looks like a template is inserted as is, not expanded.
        assert_eq!(substitute("{{params.brace}}", &p), Ok("{{x}}".to_owned()));
    }

    #[test]
    fn rejects_bad_templates() {
        let p = params();
        assert_eq!(
            substitute("x{{params.nope}}", &p).unwrap_err().to_string(),
            "`{{params.nope}}` refers to unknown param `nope`"
        );
        assert_eq!(
            substitute("--lr={{params.lr", &p).unwrap_err().to_string(),
            "unterminated `{{` in `--lr={{params.lr`"
        );
        assert_eq!(
            substitute("{{params.lr}} {{", &p).unwrap_err().to_string(),
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
                substitute(bad, &p).unwrap_err().to_string(),
                format!("unsupported template `{bad}` (only `{{{{params.NAME}}}}` is supported)"),
                "{bad}"
            );
        }
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
