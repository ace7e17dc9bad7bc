//! The JSON Schema of the pipeline spec, derived from the serde structs the
//! parser reads (`raw`), so it cannot drift from what `drover submit`
//! accepts. Editors use it through the YAML language server.

use schemars::{schema_for, Schema};
use serde_json::Value;

use super::raw::RawSpec;

/// The spec's JSON Schema (draft 2020-12).
pub fn json_schema() -> Value {
    let mut schema: Schema = schema_for!(RawSpec);
    if let Some(root) = schema.as_object_mut() {
        root.insert("title".into(), "Drover pipeline".into());
    }
    let mut value = schema.to_value();
    any_scalar(&mut value);
    value
}

/// The parser takes a scalar's text as written (`cpu: 2`, `lr: 0.1`,
/// `debug: true` all arrive as strings), so wherever the structs say
/// "string" the YAML may hold any scalar.
fn any_scalar(value: &mut Value) {
    match value {
        Value::Object(map) => {
            let scalar = |t: &str| t == "string";
            match map.get_mut("type") {
                Some(Value::String(t)) if scalar(t) => {
                    map.insert(
                        "type".into(),
                        serde_json::json!(["string", "number", "boolean"]),
                    );
                }
                Some(Value::Array(types)) if types.iter().any(|t| t == "string") => {
                    types.extend([Value::from("number"), Value::from("boolean")]);
                }
                _ => {}
            }
            map.values_mut().for_each(any_scalar);
        }
        Value::Array(items) => items.iter_mut().for_each(any_scalar),
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_schema_describes_every_field_closed_and_any_scalar_where_text_goes() {
        let schema = json_schema();
        assert_eq!(schema["title"], "Drover pipeline");
        assert_eq!(schema["additionalProperties"], false);
        let task = &schema["$defs"]["RawTask"];
        assert_eq!(task["additionalProperties"], false);
        let fields: Vec<&str> = task["properties"]
            .as_object()
            .map(|p| p.keys().map(String::as_str).collect())
            .unwrap_or_default();
        for field in [
            "name",
            "command",
            "depends_on",
            "matrix",
            "max_parallel",
            "resources",
            "workdir",
        ] {
            assert!(fields.contains(&field), "{field} not in {fields:?}");
        }
        let types = &task["properties"]["max_parallel"]["type"];
        assert_eq!(
            types,
            &serde_json::json!(["string", "null", "number", "boolean"])
        );
        assert!(
            schema["properties"]["code"]["description"]
                .as_str()
                .is_some_and(|d| d.contains("$DROVER_CODE")),
            "{:#}",
            schema["properties"]["code"]
        );
        let matrix = &schema["$defs"]["Matrix"];
        assert_eq!(matrix["additionalProperties"]["type"], "array");
        assert_eq!(
            schema["properties"]["fail_fast"]["type"],
            serde_json::json!(["boolean", "null"])
        );
    }
}
