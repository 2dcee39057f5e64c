//! Stands in for a secret in `Debug` output, so that logging or returning a
//! `{:?}` of a step's input never leaks a value.

use core::fmt;

pub(crate) struct Redacted;

impl fmt::Debug for Redacted {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

/// The shortest stretch of a secret [`scrub`] hides. Shorter ones are
/// common text and give nothing away.
const MIN_FRAGMENT: usize = 8;

/// `message` with every stretch of at least eight characters that also
/// occurs in one of `secrets` replaced by `<redacted>`. Servers quote parts
/// of a failed statement in their errors (PostgreSQL's `at or near "..."`,
/// MySQL's `near '...'`, cut to a length), so a message about a statement
/// that held a secret may hold all of it or only a piece.
pub(crate) fn scrub(message: &str, secrets: &[&str]) -> String {
    let secrets: Vec<&str> = secrets.iter().copied().filter(|s| s.len() >= MIN_FRAGMENT).collect();
    let mut out = String::with_capacity(message.len());
    let mut rest = message;
    while let Some(first) = rest.chars().next() {
        let mut longest = 0;
        for (at, c) in rest.char_indices() {
            let end = at + c.len_utf8();
            if !secrets.iter().any(|secret| secret.contains(&rest[..end])) {
                break;
            }
            longest = end;
        }
        if longest >= MIN_FRAGMENT {
            out.push_str("<redacted>");
            rest = &rest[longest..];
        } else {
            out.push(first);
            rest = &rest[first.len_utf8()..];
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const VERIFIER: &str = "SCRAM-SHA-256$4096:AAECAwQFBgcICQoLDA0ODw==$dmvhKKO0w48t:I+33WSQJ9Ykm";

    #[test]
    fn a_whole_secret_is_hidden() {
        let message = format!("syntax error at or near \"'{VERIFIER}'\" (42601)");
        assert_eq!(scrub(&message, &[VERIFIER]), "syntax error at or near \"'<redacted>'\" (42601)");
    }

    #[test]
    fn a_cut_piece_of_a_secret_is_hidden() {
        let message = format!("error in your SQL syntax near 'AS '{}' at line 1", &VERIFIER[..30]);
        assert_eq!(scrub(&message, &["x", VERIFIER]), "error in your SQL syntax near 'AS '<redacted>' at line 1");
        let message = format!("near '{}'", &VERIFIER[20..]);
        assert_eq!(scrub(&message, &[VERIFIER]), "near '<redacted>'");
    }

    #[test]
    fn ordinary_text_is_kept() {
        let message = "permission denied to create role (42501): ünïcode";
        assert_eq!(scrub(message, &[VERIFIER, "abcdEFGH1234"]), message);
        assert_eq!(scrub("", &[VERIFIER]), "");
    }
}
