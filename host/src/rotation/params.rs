//! Rotation parameters checked against the JSON Schema a plugin gives in
//! its `info`. Plugins describe flat configuration, so the subset they use
//! is enough: `type`, `properties`, `required`, `additionalProperties`
//! (false), `enum`, `minimum`/`maximum`, `minLength`/`maxLength`, `items`.
//! Keywords outside it are ignored, never treated as a failure.

use crate::error::{Error, Result};
use serde_json::{Map, Value};

/// Checks `params` against `schema`; the error names the parameter and the
/// rule it breaks. Parameters are configuration, not secrets, but a value is
/// still never quoted back: only its path.
pub fn check(params: &Value, schema: &Value) -> Result<()> {
    let mut problems = Vec::new();
    walk(params, schema, "params", &mut problems);
    match problems.is_empty() {
        true => Ok(()),
        false => Err(Error::invalid(format!(
            "{} (the plugin's parameter schema is shown by GET /v1/plugins/NAME)",
            problems.join("; ")
        ))),
    }
}

fn walk(value: &Value, schema: &Value, path: &str, problems: &mut Vec<String>) {
    let Some(schema) = schema.as_object() else { return };
    if let Some(expected) = schema.get("type") {
        let types: Vec<&str> = match expected {
            Value::String(t) => vec![t.as_str()],
            Value::Array(ts) => ts.iter().filter_map(Value::as_str).collect(),
            _ => Vec::new(),
        };
        if !types.is_empty() && !types.iter().any(|t| has_type(value, t)) {
            problems.push(format!("{path}: must be {}, is {}", types.join(" or "), type_name(value)));
            return;
        }
    }
    if let Some(Value::Array(allowed)) = schema.get("enum") {
        if !allowed.contains(value) {
            let names: Vec<String> = allowed.iter().map(Value::to_string).collect();
            problems.push(format!("{path}: must be one of {}", names.join(", ")));
        }
    }
    if let Some(n) = value.as_f64() {
        if let Some(min) = schema.get("minimum").and_then(Value::as_f64) {
            if n < min {
                problems.push(format!("{path}: must be at least {min}"));
            }
        }
        if let Some(max) = schema.get("maximum").and_then(Value::as_f64) {
            if n > max {
                problems.push(format!("{path}: must be at most {max}"));
            }
        }
    }
    if let Some(s) = value.as_str() {
        let len = s.chars().count() as u64;
        if let Some(min) = schema.get("minLength").and_then(Value::as_u64) {
            if len < min {
                problems.push(format!("{path}: must be at least {min} characters"));
            }
        }
        if let Some(max) = schema.get("maxLength").and_then(Value::as_u64) {
            if len > max {
                problems.push(format!("{path}: must be at most {max} characters"));
            }
        }
    }
    if let Some(object) = value.as_object() {
        walk_object(object, schema, path, problems);
    }
    if let (Some(items), Some(item_schema)) = (value.as_array(), schema.get("items")) {
        for (i, item) in items.iter().enumerate() {
            walk(item, item_schema, &format!("{path}[{i}]"), problems);
        }
    }
}

fn walk_object(object: &Map<String, Value>, schema: &Map<String, Value>, path: &str, problems: &mut Vec<String>) {
    let properties = schema.get("properties").and_then(Value::as_object);
    if let Some(Value::Array(required)) = schema.get("required") {
        for name in required.iter().filter_map(Value::as_str) {
            if !object.contains_key(name) {
                problems.push(format!("{path}.{name}: is required"));
            }
        }
    }
    for (name, v) in object {
        match properties.and_then(|p| p.get(name)) {
            Some(sub) => walk(v, sub, &format!("{path}.{name}"), problems),
            None if schema.get("additionalProperties") == Some(&Value::Bool(false)) => {
                problems.push(format!("{path}.{name}: is not a parameter of this plugin"));
            }
            None => {}
        }
    }
}

fn has_type(value: &Value, t: &str) -> bool {
    match t {
        "string" => value.is_string(),
        "number" => value.is_number(),
        "integer" => value.is_i64() || value.is_u64() || value.as_f64().is_some_and(|f| f.fract() == 0.0),
        "boolean" => value.is_boolean(),
        "object" => value.is_object(),
        "array" => value.is_array(),
        "null" => value.is_null(),
        // An unknown type name is the schema's problem, not the operator's.
        _ => true,
    }
}

fn type_name(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn schema() -> Value {
        json!({
            "type": "object",
            "required": ["host"],
            "additionalProperties": false,
            "properties": {
                "host": {"type": "string", "minLength": 1},
                "port": {"type": "integer", "minimum": 1, "maximum": 65535},
                "tls": {"enum": ["disable", "require", "verify-full"]},
                "users": {"type": "array", "items": {"type": "string"}}
            }
        })
    }

    #[test]
    fn valid_params_pass() {
        check(&json!({"host": "db", "port": 5432, "tls": "require", "users": ["a"]}), &schema()).unwrap();
        check(&json!({"anything": 1}), &json!(true)).unwrap();
    }

    #[test]
    fn each_problem_names_its_parameter() {
        let e = check(&json!({"port": 70000, "tls": "maybe", "users": [1], "extra": "s3cr3t"}), &schema()).unwrap_err();
        let m = e.message();
        for part in [
            "params.host: is required",
            "params.port: must be at most 65535",
            "params.tls: must be one of",
            "params.users[0]: must be string",
            "params.extra: is not a parameter",
        ] {
            assert!(m.contains(part), "{part} not in {m}");
        }
        assert!(!m.contains("s3cr3t"));
        let e = check(&json!([]), &schema()).unwrap_err();
        assert!(e.message().contains("params: must be object"), "{}", e.message());
    }
}
