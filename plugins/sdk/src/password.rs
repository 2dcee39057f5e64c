//! Random passwords with AWS GetRandomPassword's options, drawn from the
//! WASI random source (the host's CSPRNG).
//!
//! The options deserialize from a rotation's params with the same names in
//! snake_case, e.g. `{"password": {"length": 40, "exclude_characters": "/@\"'\\"}}`
//! (unknown names are refused, so a typo cannot silently weaken a password).

use core::fmt;

use serde::{Deserialize, Serialize};

use crate::StepError;

/// AWS GetRandomPassword's options, with its defaults.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PasswordOptions {
    /// Number of characters, 1 to 4096 (default 32).
    pub length: u32,
    /// Characters never used.
    pub exclude_characters: String,
    pub exclude_numbers: bool,
    /// Leaves out ``!"#$%&'()*+,-./:;<=>?@[\]^_`{|}~``.
    pub exclude_punctuation: bool,
    pub exclude_uppercase: bool,
    pub exclude_lowercase: bool,
    /// Adds the space character (default false).
    pub include_space: bool,
    /// At least one character of each included type: lowercase, uppercase,
    /// digit, punctuation (default true). A type whose every character is
    /// excluded does not count as included.
    pub require_each_included_type: bool,
}

impl Default for PasswordOptions {
    fn default() -> Self {
        PasswordOptions {
            length: 32,
            exclude_characters: String::new(),
            exclude_numbers: false,
            exclude_punctuation: false,
            exclude_uppercase: false,
            exclude_lowercase: false,
            include_space: false,
            require_each_included_type: true,
        }
    }
}

impl PasswordOptions {
    /// Letters and digits only, each type at least once: safe to paste in
    /// a shell, a URL or a connection string.
    pub fn alphanumeric(length: u32) -> Self {
        PasswordOptions { length, exclude_punctuation: true, ..Self::default() }
    }

    /// The JSON Schema of these options, for a rotator's
    /// `Info::params_schema` (unknown names are refused, as in serde).
    pub fn json_schema() -> serde_json::Value {
        let flag = |description: &str| serde_json::json!({"type": "boolean", "description": description});
        serde_json::json!({
            "type": "object",
            "additionalProperties": false,
            "description": "AWS GetRandomPassword's options",
            "properties": {
                "length": {"type": "integer", "minimum": 1, "maximum": MAX_LENGTH, "description": "characters (default 32)"},
                "exclude_characters": {"type": "string", "description": "characters never used"},
                "exclude_numbers": flag("no digits"),
                "exclude_punctuation": flag("no punctuation"),
                "exclude_uppercase": flag("no uppercase letters"),
                "exclude_lowercase": flag("no lowercase letters"),
                "include_space": flag("may hold spaces (default false)"),
                "require_each_included_type": flag("at least one of each included type (default true)"),
            }
        })
    }
}

/// Why no password could be generated.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PasswordError {
    /// AWS's bounds: 1 to 4096 characters.
    LengthOutOfRange(u32),
    /// Every character was excluded.
    NoCharacters,
    /// Fewer characters than included types, with `require_each_included_type`.
    TooShort { length: u32, types: usize },
    /// The random source failed.
    Random(String),
}

impl fmt::Display for PasswordError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PasswordError::LengthOutOfRange(length) => {
                write!(f, "password length {length} is out of range (1 to {MAX_LENGTH})")
            }
            PasswordError::NoCharacters => f.write_str("the password options exclude every character"),
            PasswordError::TooShort { length, types } => {
                write!(f, "a password of {length} characters cannot hold one of each of its {types} character types")
            }
            PasswordError::Random(reason) => write!(f, "no randomness available: {reason}"),
        }
    }
}

impl std::error::Error for PasswordError {}

impl From<PasswordError> for StepError {
    fn from(error: PasswordError) -> Self {
        match error {
            PasswordError::Random(_) => StepError::retryable(error.to_string()),
            _ => StepError::fatal(error.to_string()),
        }
    }
}

const MAX_LENGTH: u32 = 4096;
const LOWERCASE: &str = "abcdefghijklmnopqrstuvwxyz";
const UPPERCASE: &str = "ABCDEFGHIJKLMNOPQRSTUVWXYZ";
const DIGITS: &str = "0123456789";
const PUNCTUATION: &str = "!\"#$%&'()*+,-./:;<=>?@[\\]^_`{|}~";

/// A new random password; every character is drawn uniformly.
pub fn generate_password(options: &PasswordOptions) -> Result<String, PasswordError> {
    generate_with(options, &mut random_u32)
}

/// The generator, with the random source passed in so tests can script it.
fn generate_with(
    options: &PasswordOptions,
    random: &mut impl FnMut() -> Result<u32, PasswordError>,
) -> Result<String, PasswordError> {
    if !(1..=MAX_LENGTH).contains(&options.length) {
        return Err(PasswordError::LengthOutOfRange(options.length));
    }
    let allowed =
        |set: &str| -> Vec<char> { set.chars().filter(|c| !options.exclude_characters.contains(*c)).collect() };
    // The types that must each appear (when required), then space, which
    // AWS never requires.
    let types: Vec<Vec<char>> = [
        (!options.exclude_lowercase, LOWERCASE),
        (!options.exclude_uppercase, UPPERCASE),
        (!options.exclude_numbers, DIGITS),
        (!options.exclude_punctuation, PUNCTUATION),
    ]
    .into_iter()
    .filter(|(included, _)| *included)
    .map(|(_, set)| allowed(set))
    .filter(|chars| !chars.is_empty())
    .collect();
    let space = if options.include_space { allowed(" ") } else { Vec::new() };
    let alphabet: Vec<char> = types.iter().flatten().chain(&space).copied().collect();
    if alphabet.is_empty() {
        return Err(PasswordError::NoCharacters);
    }

    let required: &[Vec<char>] = if options.require_each_included_type { &types } else { &[] };
    let length = options.length as usize;
    if length < required.len() {
        return Err(PasswordError::TooShort { length: options.length, types: required.len() });
    }
    let mut password = Vec::with_capacity(length);
    for chars in required {
        password.push(chars[random_below(chars.len(), random)?]);
    }
    while password.len() < length {
        password.push(alphabet[random_below(alphabet.len(), random)?]);
    }
    // Fisher-Yates, so the required characters sit anywhere.
    for i in (1..password.len()).rev() {
        password.swap(i, random_below(i + 1, random)?);
    }
    Ok(password.into_iter().collect())
}

fn random_u32() -> Result<u32, PasswordError> {
    getrandom::u32().map_err(|e| PasswordError::Random(e.to_string()))
}

/// A uniform index below `n` (`0 < n <= 2^32`): draws that fall in the last,
/// partial block of `n` values are rejected, so there is no modulo bias.
fn random_below(n: usize, random: &mut impl FnMut() -> Result<u32, PasswordError>) -> Result<usize, PasswordError> {
    let n = n as u64;
    let zone = (1u64 << 32) - (1u64 << 32) % n;
    loop {
        let draw = u64::from(random()?);
        if draw < zone {
            return Ok((draw % n) as usize);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn generate(options: &PasswordOptions) -> String {
        generate_password(options).unwrap()
    }

    fn has(password: &str, set: &str) -> bool {
        password.chars().any(|c| set.contains(c))
    }

    #[test]
    fn defaults_are_aws_defaults() {
        let password = generate(&PasswordOptions::default());
        assert_eq!(password.chars().count(), 32);
        for set in [LOWERCASE, UPPERCASE, DIGITS, PUNCTUATION] {
            assert!(has(&password, set), "{password} lacks one of {set}");
        }
        assert!(!password.contains(' '));
    }

    #[test]
    fn alphanumeric_has_letters_and_digits_only() {
        for _ in 0..200 {
            let password = generate(&PasswordOptions::alphanumeric(32));
            assert_eq!(password.len(), 32);
            assert!(password.chars().all(|c| c.is_ascii_alphanumeric()), "{password}");
            assert!(has(&password, LOWERCASE) && has(&password, UPPERCASE) && has(&password, DIGITS));
        }
    }

    #[test]
    fn the_shortest_password_still_holds_each_type() {
        for _ in 0..200 {
            let password = generate(&PasswordOptions { length: 4, ..Default::default() });
            for set in [LOWERCASE, UPPERCASE, DIGITS, PUNCTUATION] {
                assert!(has(&password, set), "{password} lacks one of {set}");
            }
        }
    }

    #[test]
    fn excluded_characters_never_appear() {
        let options = PasswordOptions {
            length: 256,
            exclude_characters: "/@\"'\\abcdefghijklmnopqrstuvwxy".into(),
            ..Default::default()
        };
        for _ in 0..20 {
            let password = generate(&options);
            assert!(!password.chars().any(|c| options.exclude_characters.contains(c)), "{password}");
            assert!(password.contains('z'), "the one lowercase letter left is required");
        }
    }

    #[test]
    fn a_type_fully_excluded_by_characters_is_not_required() {
        let options = PasswordOptions { length: 8, exclude_characters: DIGITS.into(), ..Default::default() };
        assert!(!has(&generate(&options), DIGITS));
    }

    #[test]
    fn space_is_included_only_when_asked() {
        let options = PasswordOptions {
            length: 64,
            include_space: true,
            exclude_lowercase: true,
            exclude_uppercase: true,
            exclude_punctuation: true,
            exclude_characters: "123456789".into(),
            ..Default::default()
        };
        let password = generate(&options);
        assert!(password.chars().all(|c| c == ' ' || c == '0'), "{password:?}");
        assert!(password.contains('0'), "digits stay required");
    }

    #[test]
    fn without_the_requirement_a_short_password_is_fine() {
        let options = PasswordOptions { length: 1, require_each_included_type: false, ..Default::default() };
        assert_eq!(generate(&options).len(), 1);
    }

    #[test]
    fn impossible_options_are_fatal_errors() {
        let length = |length| PasswordOptions { length, ..Default::default() };
        assert_eq!(generate_password(&length(0)), Err(PasswordError::LengthOutOfRange(0)));
        assert_eq!(generate_password(&length(4097)), Err(PasswordError::LengthOutOfRange(4097)));
        assert_eq!(generate_password(&length(3)), Err(PasswordError::TooShort { length: 3, types: 4 }));
        let nothing = PasswordOptions {
            exclude_lowercase: true,
            exclude_uppercase: true,
            exclude_numbers: true,
            exclude_punctuation: true,
            ..Default::default()
        };
        assert_eq!(generate_password(&nothing), Err(PasswordError::NoCharacters));
        assert!(!StepError::from(PasswordError::NoCharacters).is_retryable());
    }

    #[test]
    fn options_read_from_params_refuse_unknown_names() {
        let options: PasswordOptions = serde_json::from_str(r#"{"length": 20, "exclude_punctuation": true}"#).unwrap();
        assert_eq!(options, PasswordOptions { length: 20, ..PasswordOptions::alphanumeric(32) });
        assert!(serde_json::from_str::<PasswordOptions>(r#"{"exclude_punctation": true}"#).is_err());
    }

    #[test]
    fn the_schema_names_every_option() {
        let schema = PasswordOptions::json_schema();
        let in_schema: Vec<&String> = schema["properties"].as_object().unwrap().keys().collect();
        let options = serde_json::to_value(PasswordOptions::default()).unwrap();
        let in_options: Vec<&String> = options.as_object().unwrap().keys().collect();
        assert_eq!(in_schema, in_options);
    }

    #[test]
    fn random_below_rejects_the_biased_tail() {
        // For n = 3, 2^32 % 3 == 1: the single draw u32::MAX would favour 0.
        let mut draws = [u32::MAX, 7].into_iter();
        let mut random = || Ok(draws.next().unwrap());
        assert_eq!(random_below(3, &mut random), Ok(1));
        assert_eq!(draws.next(), None, "both draws used");
    }

    #[test]
    fn a_failing_random_source_is_a_retryable_error() {
        let mut broken = || Err(PasswordError::Random("no entropy".into()));
        let error = generate_with(&PasswordOptions::default(), &mut broken).unwrap_err();
        assert!(StepError::from(error).is_retryable());
    }
}
