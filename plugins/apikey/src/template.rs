//! `{{name}}` placeholders in the request templates of the params, and the
//! escaping each place needs: percent-encoding in URLs, JSON escaping in
//! JSON bodies, nothing in headers and text bodies (but a line break in a
//! header value is refused, so a value cannot add a header).
//!
//! Errors name the placeholder and where it is, never a value.

use tumbler_sdk::StepError;

/// How a substituted value is written.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Escape {
    /// As it is (text bodies; JSON bodies escape through serde instead).
    None,
    /// Percent-encoded: everything but RFC 3986's unreserved characters.
    Url,
    /// As it is, but without CR or LF.
    Header,
}

/// Replaces each `{{ name }}` in `template` with `lookup(name)`; `field`
/// names the template in errors (`create.url`).
pub fn render(
    template: &str,
    field: &str,
    escape: Escape,
    lookup: &dyn Fn(&str) -> Result<String, StepError>,
) -> Result<String, StepError> {
    let mut out = String::with_capacity(template.len());
    let mut rest = template;
    while let Some(start) = rest.find("{{") {
        out.push_str(&rest[..start]);
        let after = &rest[start + 2..];
        let end = after
            .find("}}")
            .ok_or_else(|| StepError::fatal(format!("{field}: a placeholder opened with {{{{ is never closed")))?;
        let name = after[..end].trim();
        if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '.') {
            return Err(StepError::fatal(format!("{field}: {{{{{name}}}}} is not a placeholder name")));
        }
        let value = lookup(name).map_err(|e| StepError::fatal(format!("{field}: {}", e.message())))?;
        write_escaped(&mut out, &value, escape, field, name)?;
        rest = &after[end + 2..];
    }
    out.push_str(rest);
    Ok(out)
}

fn write_escaped(out: &mut String, value: &str, escape: Escape, field: &str, name: &str) -> Result<(), StepError> {
    match escape {
        Escape::None => out.push_str(value),
        Escape::Header if value.contains(['\r', '\n']) => {
            return Err(StepError::fatal(format!(
                "{field}: the value of {{{{{name}}}}} holds a line break, which a header cannot"
            )));
        }
        Escape::Header => out.push_str(value),
        Escape::Url => {
            for byte in value.bytes() {
                if byte.is_ascii_alphanumeric() || b"-._~".contains(&byte) {
                    out.push(char::from(byte));
                } else {
                    out.push_str(&format!("%{byte:02X}"));
                }
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vars(name: &str) -> Result<String, StepError> {
        match name {
            "key" => Ok("k/1 +?&=\"x\"".into()),
            "id" => Ok("42".into()),
            "line" => Ok("a\r\nX-Evil: 1".into()),
            other => Err(StepError::fatal(format!("{{{{{other}}}}} is not a known placeholder"))),
        }
    }

    #[test]
    fn placeholders_are_replaced_with_optional_spaces() {
        let text = render("id={{id}}; again={{ id }}; none", "f", Escape::None, &vars).unwrap();
        assert_eq!(text, "id=42; again=42; none");
        assert_eq!(render("no placeholder", "f", Escape::Url, &vars).unwrap(), "no placeholder");
    }

    #[test]
    fn urls_get_percent_encoded_values() {
        let url = render("https://api/keys/{{key}}?x=1", "delete.url", Escape::Url, &vars).unwrap();
        assert_eq!(url, "https://api/keys/k%2F1%20%2B%3F%26%3D%22x%22?x=1");
    }

    #[test]
    fn a_header_value_cannot_start_another_header() {
        let error = render("Bearer {{line}}", "create.headers.Authorization", Escape::Header, &vars).unwrap_err();
        assert!(error.message().contains("line break") && !error.message().contains("Evil"));
    }

    #[test]
    fn errors_name_the_field_and_the_placeholder() {
        let unknown = render("{{nope}}", "test.url", Escape::None, &vars).unwrap_err();
        assert!(unknown.message().starts_with("test.url: {{nope}}"), "{}", unknown.message());
        let unclosed = render("x {{key", "create.body", Escape::None, &vars).unwrap_err();
        assert!(unclosed.message().contains("never closed"));
        assert!(render("{{a b}}", "f", Escape::None, &vars).is_err());
        assert!(!unknown.is_retryable());
    }
}
