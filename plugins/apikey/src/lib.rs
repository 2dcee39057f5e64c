//! The built-in `apikey` rotator: an API key issued by a provider's HTTP
//! API, configured entirely by params (see `Params`): the request that
//! creates a key, where the key (and its id) is in the response, an
//! optional request that proves a key works, and the request that deletes
//! a key once it fell off.
//!
//! The value is JSON: `{"key": "<the key>", "id": "<its id at the provider>"}`
//! (`id` only when `id_pointer` is set). The provider makes the key, so
//! `create` is the step that calls it: a pending version already made is
//! returned instead (the SDK does that), and `set` has nothing left to do.

mod template;

use serde::Deserialize;
use std::collections::BTreeMap;
use template::{Escape, render};
use tumbler_sdk::http::{self, Request};
use tumbler_sdk::serde_json::{self, Map, Value, json};
use tumbler_sdk::{Capability, Info, Rotator, StepError, StepInput, Version, log, secrets};

struct ApiKey;

/// The rotation's params.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Params {
    /// Issues a new key (method defaults to POST).
    create: RequestTemplate,
    /// JSON pointer (RFC 6901) to the new key in the create response, e.g. `/data/secret`.
    key_pointer: String,
    /// JSON pointer to the key's id in the create response, e.g. `/data/id`.
    #[serde(default)]
    id_pointer: Option<String>,
    /// Proves the new key works (method defaults to GET); any 2xx passes.
    #[serde(default)]
    test: Option<RequestTemplate>,
    /// Deletes a key that fell off (method defaults to DELETE); 404 and
    /// 410 count as already deleted.
    #[serde(default)]
    delete: Option<RequestTemplate>,
    /// A granted secret with the provider's admin credentials, for
    /// `{{credentials}}` / `{{credentials.FIELD}}`.
    #[serde(default)]
    credentials_secret: Option<String>,
}

/// One request, with `{{placeholders}}` in its URL, header values and body.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RequestTemplate {
    #[serde(default)]
    method: Option<String>,
    url: String,
    #[serde(default)]
    headers: BTreeMap<String, String>,
    /// A string is sent as it is (placeholders replaced); any other JSON
    /// value is sent as JSON, with placeholders replaced inside its strings.
    #[serde(default)]
    body: Option<Value>,
}

/// A version's value.
#[derive(Debug, Deserialize)]
struct KeyValue {
    key: String,
    #[serde(default)]
    id: Option<String>,
}

impl KeyValue {
    fn of(version: &Version) -> Result<KeyValue, StepError> {
        serde_json::from_str(&version.value).map_err(|_| {
            StepError::fatal(format!(
                "version {} is not an API-key value ({{\"key\": \"...\", \"id\": \"...\"}})",
                version.id
            ))
        })
    }
}

/// What placeholders can name in one request.
struct Vars<'a> {
    secret_name: &'a str,
    /// The key the request is about: none in `create`, the pending one in
    /// `test`, the one being deleted in `finish`.
    subject: Option<&'a KeyValue>,
    current: Option<KeyValue>,
    credentials: Option<String>,
}

impl Vars<'_> {
    fn lookup(&self, name: &str) -> Result<String, StepError> {
        let missing = |why: &str| Err(StepError::fatal(format!("{{{{{name}}}}} has no value here: {why}")));
        match name {
            "secret_name" => Ok(self.secret_name.to_owned()),
            "key" | "id" => match self.subject {
                None => missing("only test and delete requests are about a key"),
                Some(subject) if name == "key" => Ok(subject.key.clone()),
                Some(subject) => subject.id.clone().map_or_else(|| missing("the key has no id (set id_pointer)"), Ok),
            },
            "current.key" | "current.id" => match &self.current {
                None => missing("the current value is not an API-key value"),
                Some(current) if name == "current.key" => Ok(current.key.clone()),
                Some(current) => current.id.clone().map_or_else(|| missing("the current key has no id"), Ok),
            },
            _ => self.credential(name),
        }
    }

    /// `credentials` (the whole value) or `credentials.A.B` (a field of it as JSON).
    fn credential(&self, name: &str) -> Result<String, StepError> {
        let unknown = || {
            StepError::fatal(format!(
                "{{{{{name}}}}} is not a placeholder: use secret_name, key, id, current.key, current.id, \
                 credentials or credentials.FIELD"
            ))
        };
        let path = match name.strip_prefix("credentials") {
            Some("") => None,
            Some(rest) => Some(rest.strip_prefix('.').ok_or_else(unknown)?),
            None => return Err(unknown()),
        };
        let credentials = self
            .credentials
            .as_deref()
            .ok_or_else(|| StepError::fatal(format!("{{{{{name}}}}} needs `credentials_secret` in the params")))?;
        let Some(path) = path else {
            return Ok(credentials.to_owned());
        };
        let json: Value = serde_json::from_str(credentials)
            .map_err(|_| StepError::fatal(format!("{{{{{name}}}}}: the credentials secret is not a JSON object")))?;
        let mut field = &json;
        for part in path.split('.') {
            field = field.get(part).ok_or_else(|| {
                StepError::fatal(format!("{{{{{name}}}}}: the credentials secret has no field {path:?}"))
            })?;
        }
        text_of(field).ok_or_else(|| StepError::fatal(format!("{{{{{name}}}}}: the field is not text or a number")))
    }
}

/// A JSON string or number as text.
fn text_of(value: &Value) -> Option<String> {
    match value {
        Value::String(text) => Some(text.clone()),
        Value::Number(number) => Some(number.to_string()),
        _ => None,
    }
}

impl RequestTemplate {
    /// The request, placeholders replaced; `what` names it in errors.
    fn render(&self, what: &str, default_method: &str, vars: &Vars) -> Result<Request, StepError> {
        let lookup = |name: &str| vars.lookup(name);
        let method = self.method.as_deref().unwrap_or(default_method).to_ascii_uppercase();
        let url = render(&self.url, &format!("{what}.url"), Escape::Url, &lookup)?;
        let mut request = Request::new(method, url);
        for (name, value) in &self.headers {
            let value = render(value, &format!("{what}.headers.{name}"), Escape::Header, &lookup)?;
            request = request.header(name.clone(), value);
        }
        match &self.body {
            None => {}
            Some(Value::String(text)) => {
                request = request.body(render(text, &format!("{what}.body"), Escape::None, &lookup)?.into_bytes());
            }
            Some(json) => {
                let json = render_json(json, &format!("{what}.body"), &lookup)?;
                let has_type = self.headers.keys().any(|h| h.eq_ignore_ascii_case("content-type"));
                request = if has_type { request.body(json.to_string().into_bytes()) } else { request.json(&json) };
            }
        }
        Ok(request)
    }
}

/// `value` with placeholders replaced inside its strings (serde escapes them).
fn render_json(
    value: &Value,
    field: &str,
    lookup: &dyn Fn(&str) -> Result<String, StepError>,
) -> Result<Value, StepError> {
    Ok(match value {
        Value::String(text) => Value::String(render(text, field, Escape::None, lookup)?),
        Value::Array(items) => {
            Value::Array(items.iter().map(|v| render_json(v, field, lookup)).collect::<Result<_, _>>()?)
        }
        Value::Object(fields) => Value::Object(
            fields
                .iter()
                .map(|(k, v)| Ok((k.clone(), render_json(v, field, lookup)?)))
                .collect::<Result<Map<_, _>, StepError>>()?,
        ),
        other => other.clone(),
    })
}

/// The params and what every request may name.
fn prepare(input: &StepInput) -> Result<(Params, Option<String>), StepError> {
    let params: Params = input.params()?;
    let credentials = match &params.credentials_secret {
        Some(name) => Some(secrets::get(name)?),
        None => None,
    };
    Ok((params, credentials))
}

fn vars<'a>(input: &'a StepInput, subject: Option<&'a KeyValue>, credentials: &Option<String>) -> Vars<'a> {
    Vars {
        secret_name: &input.secret_name,
        subject,
        current: input.current.as_ref().and_then(|c| KeyValue::of(c).ok()),
        credentials: credentials.clone(),
    }
}

/// The text at `pointer` in the create response; `what` names it.
fn pointed(body: &Value, pointer: &str, what: &str) -> Result<String, StepError> {
    body.pointer(pointer).and_then(text_of).ok_or_else(|| {
        StepError::fatal(format!(
            "the create response has no text at {what} {pointer:?}; the provider may have issued a key \
             all the same: check it there"
        ))
    })
}

impl Rotator for ApiKey {
    fn info() -> Info {
        Info::new(
            "apikey",
            env!("CARGO_PKG_VERSION"),
            "An HTTP API key: issued, tested and deleted through the provider's API as the params describe; \
             value {\"key\", \"id\"}",
        )
        .capabilities([Capability::Http, Capability::Secrets])
        .params_schema(params_schema())
    }

    fn create(input: &StepInput) -> Result<String, StepError> {
        let (params, credentials) = prepare(input)?;
        let request = params.create.render("create", "POST", &vars(input, None, &credentials))?;
        let response = http::send(&request)?.check()?;
        let body: Value = response.json()?;
        let key = pointed(&body, &params.key_pointer, "key_pointer")?;
        let mut value = json!({"key": key});
        if let Some(pointer) = &params.id_pointer {
            let id = pointed(&body, pointer, "id_pointer")?;
            log::info(format_args!("create: the provider issued key {id}"));
            value["id"] = Value::String(id);
        } else {
            log::info("create: the provider issued a key");
        }
        Ok(value.to_string())
    }

    fn set(_: &StepInput) -> Result<(), StepError> {
        log::info("set: the provider made the key live when it issued it; nothing to do");
        Ok(())
    }

    fn test(input: &StepInput) -> Result<(), StepError> {
        let (params, credentials) = prepare(input)?;
        let Some(test) = &params.test else {
            log::info("test: no test request in the params");
            return Ok(());
        };
        let pending = KeyValue::of(input.pending_version()?)?;
        let request = test.render("test", "GET", &vars(input, Some(&pending), &credentials))?;
        http::send(&request)?.check()?;
        log::info("test: the provider accepts the new key");
        Ok(())
    }

    fn finish(input: &StepInput) -> Result<(), StepError> {
        let stale = input.stale_versions();
        if stale.is_empty() {
            log::info("finish: no key fell off");
            return Ok(());
        }
        let (params, credentials) = prepare(input)?;
        let Some(delete) = &params.delete else {
            log::warn(format_args!(
                "finish: no delete request in the params; {} old key(s) stay valid at the provider",
                stale.len()
            ));
            return Ok(());
        };
        let live: Vec<String> = [&input.current, &input.pending]
            .into_iter()
            .flatten()
            .filter_map(|v| KeyValue::of(v).ok().map(|k| k.key))
            .collect();
        for version in stale {
            let Ok(old) = KeyValue::of(version) else {
                log::warn(format_args!("finish: version {} is not an API-key value; skipped", version.id));
                continue;
            };
            // A value copied into a newer version is still in use.
            if live.contains(&old.key) {
                continue;
            }
            let request = delete.render("delete", "DELETE", &vars(input, Some(&old), &credentials))?;
            let response = http::send(&request)?;
            if matches!(response.status, 404 | 410) {
                log::info(format_args!("finish: the key of version {} was already deleted", version.id));
                continue;
            }
            response.check()?;
            log::info(format_args!("finish: deleted the key of version {}", version.id));
        }
        Ok(())
    }
}

/// The JSON Schema of `Params`.
fn params_schema() -> String {
    let request = |method: &str| {
        json!({
            "type": "object",
            "additionalProperties": false,
            "required": ["url"],
            "properties": {
                "method": {"type": "string", "description": format!("HTTP method (default {method})")},
                "url": {"type": "string", "minLength": 1, "description": "under a granted http prefix; {{placeholders}} are percent-encoded"},
                "headers": {"type": "object", "description": "name: value; {{placeholders}} in values"},
                "body": {"type": ["string", "object", "array"], "description": "a string is sent as text, JSON as JSON; {{placeholders}} inside strings"}
            }
        })
    };
    json!({
        "type": "object",
        "additionalProperties": false,
        "required": ["create", "key_pointer"],
        "properties": {
            "create": request("POST"),
            "key_pointer": {"type": "string", "description": "JSON pointer to the new key in the create response"},
            "id_pointer": {"type": "string", "description": "JSON pointer to the key's id in the create response"},
            "test": request("GET"),
            "delete": request("DELETE"),
            "credentials_secret": {"type": "string", "minLength": 1, "description": "a granted secret with the provider's credentials"}
        }
    })
    .to_string()
}

tumbler_sdk::export!(ApiKey);

#[cfg(test)]
mod tests {
    use super::*;

    fn input(current: Option<&str>) -> StepInput {
        StepInput {
            secret_name: "api/acme".into(),
            params: String::new(),
            current: current.map(|value| Version { id: "v1".into(), value: value.into() }),
            pending: None,
            previous: None,
            fell_off: None,
            emergency: false,
            older: Vec::new(),
        }
    }

    fn template(value: Value) -> RequestTemplate {
        serde_json::from_value(value).unwrap()
    }

    #[test]
    fn a_request_is_rendered_with_each_escaping() {
        let input = input(Some(r#"{"key":"old key","id":"7"}"#));
        let subject = KeyValue { key: "new/key".into(), id: Some("8".into()) };
        let credentials = Some(r#"{"token":"T0K\"EN","org":{"id":3}}"#.to_owned());
        let vars = vars(&input, Some(&subject), &credentials);
        let request = template(json!({
            "url": "https://api/v1/orgs/{{credentials.org.id}}/keys/{{id}}?k={{key}}",
            "headers": {"Authorization": "Bearer {{credentials.token}}"},
            "body": {"name": "{{secret_name}}", "replaces": ["{{current.id}}", "{{current.key}}"], "n": 1}
        }))
        .render("delete", "DELETE", &vars)
        .unwrap();
        assert_eq!(request.method, "DELETE");
        assert_eq!(request.url, "https://api/v1/orgs/3/keys/8?k=new%2Fkey");
        assert!(request.headers.contains(&("Authorization".into(), "Bearer T0K\"EN".into())));
        let body: Value = serde_json::from_slice(request.body.as_deref().unwrap()).unwrap();
        assert_eq!(body, json!({"name": "api/acme", "replaces": ["7", "old key"], "n": 1}));
    }

    #[test]
    fn a_text_body_is_sent_as_it_is() {
        let input = input(None);
        let request = template(json!({"method": "put", "url": "https://api/k", "body": "name={{secret_name}}"}))
            .render("create", "POST", &vars(&input, None, &None))
            .unwrap();
        assert_eq!((request.method.as_str(), request.body.as_deref()), ("PUT", Some(&b"name=api/acme"[..])));
    }

    #[test]
    fn placeholders_without_a_value_are_fatal_errors_naming_them() {
        let input = input(Some("not json"));
        let vars = vars(&input, None, &None);
        for (url, expected) in [
            ("https://api/{{key}}", "{{key}} has no value"),
            ("https://api/{{current.id}}", "{{current.id}} has no value"),
            ("https://api/{{credentials.token}}", "needs `credentials_secret`"),
            ("https://api/{{password}}", "{{password}} is not a placeholder"),
        ] {
            let error = template(json!({"url": url})).render("create", "POST", &vars).unwrap_err();
            assert!(!error.is_retryable());
            assert!(error.message().contains(expected), "{url}: {}", error.message());
            assert!(error.message().starts_with("create.url: "), "{}", error.message());
        }
    }

    #[test]
    fn keys_and_ids_are_found_by_pointer() {
        let body = json!({"data": {"secret": "ak_1", "id": 12}});
        assert_eq!(pointed(&body, "/data/secret", "key_pointer").unwrap(), "ak_1");
        assert_eq!(pointed(&body, "/data/id", "id_pointer").unwrap(), "12");
        let error = pointed(&body, "/key", "key_pointer").unwrap_err();
        assert!(!error.is_retryable() && error.message().contains("\"/key\""));
    }

    #[test]
    fn the_schema_is_json_and_requires_what_params_require() {
        let schema: Value = serde_json::from_str(&params_schema()).unwrap();
        assert_eq!(schema["required"], json!(["create", "key_pointer"]));
        assert!(serde_json::from_value::<Params>(json!({"create": {"url": "u"}})).is_err());
        assert!(serde_json::from_value::<Params>(json!({"create": {"url": "u"}, "key_pointer": "/k"})).is_ok());
    }
}
