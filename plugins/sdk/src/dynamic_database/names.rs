//! Generated user names: a prefix and a random suffix, e.g.
//! `v_orders_ro_k3j9x8q2m1`.
//!
//! Names hold only `a-z`, `0-9` and `_` and start with a letter, so they
//! look like plain identifiers to every client and connection string even
//! though tumbler always quotes them (PostgreSQL folds unquoted names to
//! lower case; MySQL user names are case-sensitive). Being ASCII, their
//! length in bytes (PostgreSQL's limit) and in characters (MySQL's) is the
//! same.
//!
//! The suffix is [`RANDOM_CHARS`] characters of `a-z0-9` from the host's
//! CSPRNG: 36^10 ≈ 2^51.7 names per prefix, so even a million live leases
//! of one role collide with odds below 1 in 7,000. A prefix too long for
//! the server's limit is cut, never the random part.

use crate::StepError;
use crate::password::{PasswordOptions, generate_password};

/// Random characters at the end of every generated name.
pub const RANDOM_CHARS: usize = 10;

/// The role's name in a default prefix is cut to this many characters, so
/// that names stay readable and MySQL's 32 leave room for the random part.
const ROLE_CHARS: usize = 16;

/// The prefix used when the role sets no `username_prefix`: `v_`, the
/// role's name lower-cased with every run of other characters made one
/// `_` and cut to 16 characters, then `_` (`orders/Read-Only` gives
/// `v_orders_read_only_`; a role name with no letter or digit gives `v_`).
pub fn default_prefix(role: &str) -> String {
    let mut short = String::new();
    for c in role.chars().map(|c| c.to_ascii_lowercase()) {
        if c.is_ascii_lowercase() || c.is_ascii_digit() {
            short.push(c);
        } else if !short.is_empty() && !short.ends_with('_') {
            short.push('_');
        }
    }
    short.truncate(ROLE_CHARS);
    let short = short.trim_end_matches('_');
    if short.is_empty() { "v_".into() } else { format!("v_{short}_") }
}

/// Checks a `username_prefix` given by the role: a lower-case letter, then
/// `a-z`, `0-9` or `_`; none of `reserved` (PostgreSQL keeps `pg_`).
pub fn check_prefix(prefix: &str, reserved: &[&str]) -> Result<(), String> {
    let mut chars = prefix.chars();
    let valid = chars.next().is_some_and(|c| c.is_ascii_lowercase())
        && chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_');
    if !valid {
        return Err(format!(
            "username_prefix {prefix:?} must start with a lower-case letter and hold only a-z, 0-9 and _"
        ));
    }
    if let Some(taken) = reserved.iter().find(|r| prefix.starts_with(**r)) {
        return Err(format!("username_prefix {prefix:?} starts with {taken:?}, which the server reserves"));
    }
    Ok(())
}

/// A new name: `prefix` (checked by [`check_prefix`] or made by
/// [`default_prefix`]) cut to fit, then the random part; at most
/// `max_len` characters.
pub fn generate_username(prefix: &str, max_len: usize) -> Result<String, StepError> {
    let options = PasswordOptions {
        length: RANDOM_CHARS as u32,
        exclude_uppercase: true,
        exclude_punctuation: true,
        require_each_included_type: false,
        ..PasswordOptions::default()
    };
    Ok(compose(prefix, &generate_password(&options)?, max_len))
}

/// `prefix` cut to leave room for `random`, then `random`. The prefix is
/// ASCII, so cutting at a byte count is cutting at a character count; at
/// least its first letter is kept, so the name starts with a letter.
fn compose(prefix: &str, random: &str, max_len: usize) -> String {
    let room = max_len.saturating_sub(random.len()).clamp(1, prefix.len().max(1));
    let prefix = prefix.get(..room).unwrap_or(prefix);
    format!("{prefix}{random}")
}

/// Whether `name` could be a generated name for a server whose limit is
/// `max_len`: what a revoke handle must hold before revoke drops it.
pub fn is_generated_name(name: &str, max_len: usize) -> bool {
    name.len() > RANDOM_CHARS && name.len() <= max_len && check_prefix(name, &[]).is_ok()
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;

    use super::*;

    #[test]
    fn default_prefixes_are_short_readable_forms_of_the_role() {
        assert_eq!(default_prefix("orders"), "v_orders_");
        assert_eq!(default_prefix("orders/Read-Only"), "v_orders_read_only_");
        assert_eq!(default_prefix("--App  42--"), "v_app_42_");
        assert_eq!(default_prefix("a-very-long-role-name-indeed"), "v_a_very_long_role_");
        assert_eq!(default_prefix("ab_______________c"), "v_ab_c_");
        assert_eq!(default_prefix("rôle"), "v_r_le_");
        assert_eq!(default_prefix("日本"), "v_");
        assert_eq!(default_prefix(""), "v_");
        assert!(check_prefix(&default_prefix("Any Role!"), &["pg_"]).is_ok());
    }

    #[test]
    fn given_prefixes_must_look_like_plain_lower_case_names() {
        assert!(check_prefix("app_", &[]).is_ok());
        assert!(check_prefix("a", &[]).is_ok());
        for bad in ["", "_app", "1app", "App", "app-", "app\"", "äpp", "app name"] {
            let message = check_prefix(bad, &[]).unwrap_err();
            assert!(message.contains("username_prefix"), "{bad}: {message}");
        }
        assert!(check_prefix("pg_app", &["pg_"]).unwrap_err().contains("reserves"));
        assert!(check_prefix("pgapp", &["pg_"]).is_ok());
    }

    #[test]
    fn names_are_prefix_and_random_lower_case_alphanumerics() {
        let name = generate_username("v_app_", 63).unwrap();
        assert_eq!(name.len(), "v_app_".len() + RANDOM_CHARS);
        let random = name.strip_prefix("v_app_").unwrap();
        assert!(random.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit()), "{name}");
        assert!(is_generated_name(&name, 63));
    }

    #[test]
    fn a_long_prefix_is_cut_and_the_random_part_kept() {
        let prefix = format!("p{}", "x".repeat(99));
        for max_len in [32, 63] {
            let name = generate_username(&prefix, max_len).unwrap();
            assert_eq!(name.len(), max_len, "{name}");
            assert!(name.starts_with("pxxx") && name.is_ascii(), "{name}");
            assert_eq!(name.chars().count(), max_len, "characters and bytes agree");
        }
        assert_eq!(compose(&prefix, "0123456789", 32), format!("p{}0123456789", "x".repeat(21)));
        assert_eq!(compose("v_", "0123456789", 32), "v_0123456789");
    }

    #[test]
    fn names_start_with_a_letter_however_short_the_limit() {
        assert_eq!(compose("v_app_", "0123456789", 11), "v0123456789");
        assert_eq!(compose("v_app_", "0123456789", 12), "v_0123456789");
    }

    #[test]
    fn ten_thousand_names_are_all_different_and_valid() {
        let mut seen = HashSet::new();
        for _ in 0..10_000 {
            let name = generate_username("v_", 32).unwrap();
            assert!(is_generated_name(&name, 32), "{name}");
            assert!(name.starts_with(|c: char| c.is_ascii_lowercase()));
            assert!(seen.insert(name), "a repeated name");
        }
    }

    #[test]
    fn every_random_character_is_used() {
        let mut used = HashSet::new();
        for _ in 0..400 {
            used.extend(generate_username("v_", 63).unwrap()[2..].chars());
        }
        assert_eq!(used.len(), 36, "{used:?}");
    }

    #[test]
    fn revoke_handles_must_hold_a_name_tumbler_could_have_made() {
        assert!(is_generated_name("v_app_k3j9x8q2m1", 32));
        for bad in ["postgres", "", "v_app_K3J9X8Q2M1", "1_app_k3j9x8q2m1", "v_\"x\"_k3j9x8q2m1"] {
            assert!(!is_generated_name(bad, 32), "{bad}");
        }
        assert!(!is_generated_name(&"v".repeat(33), 32));
    }
}
