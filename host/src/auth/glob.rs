//! Name globs for policy rules: `*` matches within one path segment, `**`
//! across segments (`app/*` matches `app/x`, not `app/x/y` nor `app`).

use crate::error::{Error, Result};

/// A validated pattern.
#[derive(Clone, Debug)]
pub struct Glob(String);

const MAX_WILDCARDS: usize = 8;

impl Glob {
    pub fn parse(raw: &str) -> Result<Self> {
        let ok_chars = raw.chars().all(|c| c.is_ascii_alphanumeric() || "/_+=.@-*".contains(c));
        if raw.is_empty() || raw.len() > 512 || !ok_chars {
            return Err(Error::invalid(format!(
                "rule names {raw:?} is not a valid glob; use secret-name characters plus * and **"
            )));
        }
        if raw.contains("***") {
            return Err(Error::invalid(format!("rule names {raw:?}: use * or **, not ***")));
        }
        if raw.matches('*').count() > MAX_WILDCARDS * 2 {
            return Err(Error::invalid(format!("rule names {raw:?} has too many wildcards (at most {MAX_WILDCARDS})")));
        }
        Ok(Glob(raw.to_owned()))
    }

    pub fn matches(&self, name: &str) -> bool {
        matches(self.0.as_bytes(), name.as_bytes())
    }
}

fn matches(pat: &[u8], name: &[u8]) -> bool {
    match pat {
        [] => name.is_empty(),
        [b'*', b'*', rest @ ..] => (0..=name.len()).any(|i| matches(rest, &name[i..])),
        [b'*', rest @ ..] => {
            for i in 0..=name.len() {
                if matches(rest, &name[i..]) {
                    return true;
                }
                if name.get(i) == Some(&b'/') {
                    return false;
                }
            }
            false
        }
        [c, rest @ ..] => name.first() == Some(c) && matches(rest, &name[1..]),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(p: &str, n: &str) -> bool {
        Glob::parse(p).unwrap().matches(n)
    }

    #[test]
    fn single_star_stays_in_one_segment() {
        assert!(m("app/*", "app/x"));
        assert!(!m("app/*", "app/x/y"));
        assert!(!m("app/*", "app"));
        assert!(m("app/*/db", "app/x/db"));
        assert!(m("db-*", "db-prod"));
    }

    #[test]
    fn double_star_crosses_segments() {
        assert!(m("app/**", "app/x/y"));
        assert!(m("**", "anything/at/all"));
        assert!(m("**/main", "a/b/main"));
        assert!(!m("app/**", "apple/x"));
    }

    #[test]
    fn literal_patterns_match_exactly() {
        assert!(m("sys/tokens", "sys/tokens"));
        assert!(!m("sys/tokens", "sys/tokens2"));
    }

    #[test]
    fn bad_patterns_are_refused() {
        for bad in ["", "a:b", "a***", "a b"] {
            assert!(Glob::parse(bad).is_err(), "{bad}");
        }
    }
}
