//! Statement templates: `{{name}}`, `{{password}}` and `{{expiration}}`
//! written bare in SQL, each replaced by one quoted token on expansion
//! (`{{name}}` by a quoted identifier, the others by quoted literals).
//!
//! Because tumbler does the quoting, a placeholder must stand where a whole
//! token goes. The scanner knows each engine's quotes and comments and
//! refuses, naming the placeholder:
//!
//! - a placeholder inside quotes: `'...'`, `"..."`, and for PostgreSQL
//!   `E'...'` and dollar quotes (`$$...$$`, `$tag$...$tag$`), for MySQL
//!   `` `...` ``. Expanded there, the quoted value would end the string
//!   early (and `$$` bodies are not SQL tumbler could quote for);
//! - a placeholder inside a comment (`-- `, `/* */`, MySQL's `#`): it would
//!   silently not be used, which is never what the author meant;
//! - a placeholder glued to a word or a quote (`x{{name}}`, `'a'{{password}}`):
//!   the quoted value would merge with its neighbour (`'a''...'` is one
//!   string);
//! - `{{` anywhere that does not open a known placeholder, even inside
//!   quotes or comments, so a typo never passes as text;
//! - a quote or block comment left open.
//!
//! Quoting rules followed: PostgreSQL with `standard_conforming_strings`
//! on (its default since 9.1: a backslash escapes only in `E'...'`),
//! `/* */` nesting; MySQL and MariaDB in their default SQL mode (a
//! backslash escapes in `'...'` and `"..."`, `-- ` needs a space after it).
//! Where a server runs with other settings the scan may disagree with it,
//! but the values tumbler substitutes (generated names, passwords in the
//! form the server stores, timestamps) hold no quote or backslash, so they
//! still cannot leave their quotes.

use core::fmt;

use crate::StepError;
use crate::sql::Engine;

/// What a template may hold.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Placeholder {
    /// The generated user name, as a quoted identifier.
    Name,
    /// The password, as a quoted literal of the form the engine stores
    /// (see [`DynamicDatabase::stored_password`](super::DynamicDatabase::stored_password)).
    Password,
    /// When the lease ends, as a quoted literal (see
    /// [`DynamicDatabase::expiration_text`](super::DynamicDatabase::expiration_text)).
    Expiration,
}

impl Placeholder {
    pub const ALL: [Placeholder; 3] = [Placeholder::Name, Placeholder::Password, Placeholder::Expiration];

    /// The word between the braces.
    pub fn as_str(self) -> &'static str {
        match self {
            Placeholder::Name => "name",
            Placeholder::Password => "password",
            Placeholder::Expiration => "expiration",
        }
    }

    fn from_word(word: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|p| p.as_str() == word)
    }
}

/// `{{name}}`, as written in a template.
impl fmt::Display for Placeholder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{{{{{}}}}}", self.as_str())
    }
}

/// One piece of a scanned statement.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Piece<'a> {
    /// SQL outside quotes and comments.
    Code(&'a str),
    /// A quoted string or identifier, quotes (and an `E` prefix) included.
    Quoted(&'a str),
    Comment(&'a str),
    Placeholder(Placeholder),
}

/// A statement template, checked; [`expand`](Self::expand) fills it in.
/// Templates are configuration, so `Debug` shows them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Template {
    engine: Engine,
    parts: Vec<Part>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum Part {
    Sql(String),
    Placeholder(Placeholder),
}

/// What the placeholders become, unquoted; [`Template::expand`] quotes them.
#[derive(Clone, Copy, Default)]
pub struct Values<'a> {
    pub name: &'a str,
    pub password: Option<&'a str>,
    pub expiration: Option<&'a str>,
}

/// Shows the name only: the password's stored form is sensitive too.
impl fmt::Debug for Values<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Values")
            .field("name", &self.name)
            .field("password", &self.password.map(|_| crate::redact::Redacted))
            .field("expiration", &self.expiration)
            .finish()
    }
}

/// An expanded statement, ready to run. It may hold the password's stored
/// form, so `Debug` hides it; never log or return its text.
#[derive(Clone, PartialEq, Eq)]
pub struct SqlStatement(String);

impl SqlStatement {
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for SqlStatement {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SqlStatement(<redacted>)")
    }
}

impl Template {
    /// Checks `statement` for `engine`; placeholders outside `allowed` are
    /// refused. The error says what is wrong, without the statement's name
    /// (the caller adds it).
    pub fn parse(engine: Engine, statement: &str, allowed: &[Placeholder]) -> Result<Self, String> {
        if statement.trim().is_empty() {
            return Err("the statement is empty".into());
        }
        let mut parts: Vec<Part> = Vec::new();
        for piece in scan(engine, statement)? {
            let text = match piece {
                Piece::Placeholder(p) if !allowed.contains(&p) => {
                    return Err(format!("{p} cannot be used here (only {})", list(allowed)));
                }
                Piece::Placeholder(p) => {
                    parts.push(Part::Placeholder(p));
                    continue;
                }
                Piece::Code(text) | Piece::Quoted(text) | Piece::Comment(text) => text,
            };
            match parts.last_mut() {
                Some(Part::Sql(sql)) => sql.push_str(text),
                _ => parts.push(Part::Sql(text.to_owned())),
            }
        }
        Ok(Template { engine, parts })
    }

    pub fn uses(&self, placeholder: Placeholder) -> bool {
        self.parts.contains(&Part::Placeholder(placeholder))
    }

    /// For each use of `placeholder`, the template's text before it (other
    /// placeholders written as `{{...}}`), so an engine can check the
    /// context, e.g. that `{{password}}` follows `AS` and not `BY`.
    pub fn text_before_each(&self, placeholder: Placeholder) -> Vec<String> {
        let mut before = String::new();
        let mut found = Vec::new();
        for part in &self.parts {
            match part {
                Part::Sql(sql) => before.push_str(sql),
                Part::Placeholder(p) => {
                    if *p == placeholder {
                        found.push(before.clone());
                    }
                    before.push_str(&p.to_string());
                }
            }
        }
        found
    }

    /// The statement with each placeholder replaced: the name by
    /// [`Engine::quote_identifier`], the others by [`Engine::quote_literal`].
    /// A value the template uses but `values` lacks is an error.
    pub fn expand(&self, values: &Values<'_>) -> Result<SqlStatement, StepError> {
        let mut out = String::new();
        for part in &self.parts {
            match part {
                Part::Sql(sql) => out.push_str(sql),
                Part::Placeholder(Placeholder::Name) => out.push_str(&self.engine.quote_identifier(values.name)),
                Part::Placeholder(p) => {
                    let value = match p {
                        Placeholder::Password => values.password,
                        _ => values.expiration,
                    };
                    let value = value.ok_or_else(|| StepError::fatal(format!("no value for {p}")))?;
                    out.push_str(&self.engine.quote_literal(value));
                }
            }
        }
        Ok(SqlStatement(out))
    }
}

fn list(placeholders: &[Placeholder]) -> String {
    let names: Vec<String> = placeholders.iter().map(Placeholder::to_string).collect();
    if names.is_empty() { "none".into() } else { names.join(", ") }
}

/// Splits `statement` into code, quoted text, comments and placeholders,
/// refusing what the module documentation lists.
pub(crate) fn scan(engine: Engine, statement: &str) -> Result<Vec<Piece<'_>>, String> {
    let bytes = statement.as_bytes();
    let mut pieces = Vec::new();
    let mut code_start = 0;
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i..].starts_with(b"{{") {
            let (placeholder, end) = placeholder_at(statement, i)?;
            check_neighbours(bytes, i, end, placeholder)?;
            push_code(&mut pieces, &statement[code_start..i]);
            pieces.push(Piece::Placeholder(placeholder));
            (i, code_start) = (end, end);
        } else if let Some(region) = region_at(engine, statement, i)? {
            let text = &statement[region.start..region.end];
            if let Some(at) = text.find("{{") {
                return Err(region.refuse(shown_placeholder(&text[at..])));
            }
            push_code(&mut pieces, &statement[code_start..region.start]);
            pieces.push(if region.comment { Piece::Comment(text) } else { Piece::Quoted(text) });
            (i, code_start) = (region.end, region.end);
        } else {
            i += 1;
        }
    }
    push_code(&mut pieces, &statement[code_start..]);
    Ok(pieces)
}

fn push_code<'a>(pieces: &mut Vec<Piece<'a>>, text: &'a str) {
    if !text.is_empty() {
        pieces.push(Piece::Code(text));
    }
}

/// The placeholder opening at `start` (on `{{`) and the index after its `}}`.
fn placeholder_at(statement: &str, start: usize) -> Result<(Placeholder, usize), String> {
    let rest = &statement[start + 2..];
    let close = rest.find("}}").ok_or("a placeholder opened with {{ is never closed")?;
    let word = rest[..close].trim();
    let placeholder = Placeholder::from_word(word).ok_or_else(|| {
        format!(
            "{} is not a placeholder: use {}",
            shown_placeholder(&statement[start..start + 2 + close + 2]),
            list(&Placeholder::ALL)
        )
    })?;
    Ok((placeholder, start + 2 + close + 2))
}

/// A placeholder as written at the start of `text`, for an error message:
/// the text up to `}}` when short and on one line, else just `{{`.
fn shown_placeholder(text: &str) -> String {
    match text.find("}}") {
        Some(close) if close <= 40 && !text[..close].contains(|c: char| c.is_control()) => text[..close + 2].to_owned(),
        _ => "{{".into(),
    }
}

/// Refuses a placeholder whose quoted expansion would merge with the byte
/// before or after it (a word, a quote, `U&`, another placeholder).
fn check_neighbours(bytes: &[u8], start: usize, end: usize, placeholder: Placeholder) -> Result<(), String> {
    let glued = |side: &str, byte: u8| {
        let shown = if byte.is_ascii_graphic() { format!("`{}`", char::from(byte)) } else { "a letter".into() };
        format!(
            "{placeholder} is glued to the {shown} {side} it; tumbler replaces it by a whole quoted token, \
             so put a space or an operator between them"
        )
    };
    if let Some(&before) = start.checked_sub(1).and_then(|at| bytes.get(at))
        && (glues(before) || matches!(before, b'&' | b'}'))
    {
        return Err(glued("before", before));
    }
    if let Some(&after) = bytes.get(end)
        && (glues(after) || after == b'{')
    {
        return Err(glued("after", after));
    }
    Ok(())
}

fn glues(byte: u8) -> bool {
    is_word(byte) || matches!(byte, b'\'' | b'"' | b'`')
}

/// A byte that continues an identifier (`$` does in both engines; bytes
/// past ASCII are parts of letters).
fn is_word(byte: u8) -> bool {
    byte.is_ascii_alphanumeric() || byte == b'_' || byte == b'$' || byte >= 0x80
}

/// A quoted or commented stretch of a statement.
struct Region {
    start: usize,
    end: usize,
    /// What it is, for messages: "a '...' string".
    what: String,
    comment: bool,
}

impl Region {
    fn refuse(&self, placeholder: String) -> String {
        if self.comment {
            format!(
                "{placeholder} is inside a comment ({}); placeholders in comments are not expanded, \
                 so remove the comment or the placeholder",
                self.what
            )
        } else {
            format!("{placeholder} is inside quotes ({}); write it bare, tumbler quotes it", self.what)
        }
    }
}

/// The quoted string, quoted identifier or comment starting at `i`, if any.
fn region_at(engine: Engine, statement: &str, i: usize) -> Result<Option<Region>, String> {
    let bytes = statement.as_bytes();
    let postgres = engine == Engine::Postgres;
    let next = bytes.get(i + 1).copied();
    let quoted = |start: usize, quote: u8, backslash: bool, what: &str| -> Result<Option<Region>, String> {
        let end = closing_quote(bytes, i, quote, backslash).ok_or_else(|| format!("{what} is never closed"))?;
        Ok(Some(Region { start, end, what: what.into(), comment: false }))
    };
    match bytes[i] {
        b'\'' if postgres && i >= 1 && matches!(bytes[i - 1], b'E' | b'e') && !(i >= 2 && is_word(bytes[i - 2])) => {
            quoted(i - 1, b'\'', true, "an E'...' string")
        }
        b'\'' => quoted(i, b'\'', !postgres, "a '...' string"),
        b'"' if postgres => quoted(i, b'"', false, "a \"...\" identifier"),
        // A string, or an identifier under ANSI_QUOTES: quoted either way.
        b'"' => quoted(i, b'"', true, "a \"...\" string"),
        b'`' if !postgres => quoted(i, b'`', false, "a `...` identifier"),
        b'$' if postgres => dollar_quoted(statement, i),
        b'-' if next == Some(b'-')
            && (postgres || bytes.get(i + 2).is_none_or(|c| c.is_ascii_whitespace() || c.is_ascii_control())) =>
        {
            Ok(Some(line_comment(bytes, i, "-- ...")))
        }
        b'#' if !postgres => Ok(Some(line_comment(bytes, i, "# ..."))),
        b'/' if next == Some(b'*') => block_comment(bytes, i, postgres).map(Some),
        _ => Ok(None),
    }
}

/// The index after the quote closing the one at `open`; a doubled quote
/// stands for itself, and with `backslash` a backslash escapes any byte.
fn closing_quote(bytes: &[u8], open: usize, quote: u8, backslash: bool) -> Option<usize> {
    let mut j = open + 1;
    while j < bytes.len() {
        match bytes[j] {
            b'\\' if backslash => j += 2,
            byte if byte == quote && bytes.get(j + 1) == Some(&quote) => j += 2,
            byte if byte == quote => return Some(j + 1),
            _ => j += 1,
        }
    }
    None
}

/// PostgreSQL's `$tag$ ... $tag$` (the tag may be empty). A `$` inside a
/// word (`a$b`) or before a digit (`$1`, a parameter) opens nothing.
fn dollar_quoted(statement: &str, i: usize) -> Result<Option<Region>, String> {
    let bytes = statement.as_bytes();
    if i >= 1 && is_word(bytes[i - 1]) || bytes.get(i + 1).is_some_and(u8::is_ascii_digit) {
        return Ok(None);
    }
    let mut j = i + 1;
    while j < bytes.len() && (bytes[j].is_ascii_alphanumeric() || bytes[j] == b'_' || bytes[j] >= 0x80) {
        j += 1;
    }
    if bytes.get(j) != Some(&b'$') {
        return Ok(None);
    }
    let delimiter = &statement[i..=j];
    let what = format!("a {delimiter}...{delimiter} string");
    let body = j + 1;
    let close = statement[body..].find(delimiter).ok_or_else(|| format!("{what} is never closed"))?;
    Ok(Some(Region { start: i, end: body + close + delimiter.len(), what, comment: false }))
}

/// A comment from `i` to the end of its line.
fn line_comment(bytes: &[u8], i: usize, what: &str) -> Region {
    let end = bytes[i..].iter().position(|&b| b == b'\n').map_or(bytes.len(), |at| i + at + 1);
    Region { start: i, end, what: what.into(), comment: true }
}

/// A `/* */` comment from `i`; PostgreSQL nests them, MySQL does not.
fn block_comment(bytes: &[u8], i: usize, nested: bool) -> Result<Region, String> {
    let mut depth = 1;
    let mut j = i + 2;
    while j < bytes.len() {
        if bytes[j..].starts_with(b"*/") {
            depth -= 1;
            j += 2;
            if depth == 0 {
                return Ok(Region { start: i, end: j, what: "/* ... */".into(), comment: true });
            }
        } else if nested && bytes[j..].starts_with(b"/*") {
            depth += 1;
            j += 2;
        } else {
            j += 1;
        }
    }
    Err("a /* comment is never closed".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    const PG: Engine = Engine::Postgres;
    const MY: Engine = Engine::Mysql;
    const ALL: &[Placeholder] = &Placeholder::ALL;

    fn error(engine: Engine, statement: &str) -> String {
        Template::parse(engine, statement, ALL).expect_err(statement)
    }

    fn ok(engine: Engine, statement: &str) -> Template {
        Template::parse(engine, statement, ALL).unwrap_or_else(|e| panic!("{statement}: {e}"))
    }

    fn assert_inside_quotes(engine: Engine, statement: &str, placeholder: &str) {
        let message = error(engine, statement);
        assert!(
            message.starts_with(&format!("{placeholder} is inside quotes")) && message.contains("write it bare"),
            "{statement}: {message}"
        );
    }

    /// The SQL outside quotes and comments, placeholders as `{{..}}`: what
    /// a server would parse as code.
    fn code(engine: Engine, statement: &str) -> String {
        let pieces = scan(engine, statement).unwrap_or_else(|e| panic!("{statement}: {e}"));
        let mut code = String::new();
        for piece in pieces {
            match piece {
                Piece::Code(text) => code.push_str(text),
                Piece::Placeholder(p) => code.push_str(&p.to_string()),
                Piece::Quoted(_) => code.push_str("<q>"),
                Piece::Comment(_) => code.push_str("<c>"),
            }
        }
        code
    }

    const VALUES: Values<'static> =
        Values { name: "v_app_k3j9x8q2m1", password: Some("SCRAM-x"), expiration: Some("2030-01-02T03:04:05Z") };

    #[test]
    fn bare_placeholders_expand_to_quoted_tokens() {
        let template = ok(PG, "CREATE ROLE {{name}} LOGIN PASSWORD {{password}} VALID UNTIL {{expiration}}");
        assert_eq!(
            template.expand(&VALUES).unwrap().as_str(),
            "CREATE ROLE \"v_app_k3j9x8q2m1\" LOGIN PASSWORD 'SCRAM-x' VALID UNTIL '2030-01-02T03:04:05Z'"
        );
        let template = ok(MY, "CREATE USER {{name}}@'%' IDENTIFIED WITH mysql_native_password AS {{password}}");
        assert_eq!(
            template.expand(&VALUES).unwrap().as_str(),
            "CREATE USER `v_app_k3j9x8q2m1`@'%' IDENTIFIED WITH mysql_native_password AS 'SCRAM-x'"
        );
    }

    #[test]
    fn spaces_inside_the_braces_are_allowed() {
        let template = ok(PG, "DROP ROLE {{ name }}");
        assert_eq!(template.expand(&VALUES).unwrap().as_str(), "DROP ROLE \"v_app_k3j9x8q2m1\"");
    }

    #[test]
    fn placeholders_inside_single_quotes_are_refused() {
        assert_inside_quotes(PG, "CREATE ROLE {{name}} PASSWORD '{{password}}'", "{{password}}");
        assert_inside_quotes(MY, "CREATE USER {{name}} IDENTIFIED BY '{{password}}'", "{{password}}");
        assert_inside_quotes(PG, "SELECT 'it''s {{name}}'", "{{name}}");
        assert_inside_quotes(PG, "SELECT '{{ password }}'", "{{ password }}");
    }

    #[test]
    fn placeholders_inside_double_quotes_are_refused() {
        let message = error(PG, "CREATE ROLE \"{{name}}\"");
        assert!(message.contains("identifier"), "{message}");
        assert_inside_quotes(PG, "CREATE ROLE \"a\"\"{{name}}\"", "{{name}}");
        assert_inside_quotes(MY, "SELECT \"{{password}}\"", "{{password}}");
    }

    #[test]
    fn placeholders_inside_backticks_are_refused_by_mysql() {
        assert_inside_quotes(MY, "CREATE USER `{{name}}`@'%'", "{{name}}");
        assert_inside_quotes(MY, "CREATE USER `a``{{name}}`", "{{name}}");
        // PostgreSQL has no backtick quotes: there it is glued instead.
        assert!(error(PG, "CREATE ROLE `{{name}}`").contains("glued"));
    }

    #[test]
    fn placeholders_inside_escape_strings_are_refused_by_postgres() {
        assert_inside_quotes(PG, "SELECT E'{{password}}'", "{{password}}");
        assert_inside_quotes(PG, "SELECT e'\\' {{password}}'", "{{password}}");
        assert!(error(PG, "SELECT E'{{password}}'").contains("E'...'"));
        // `E` ending a word is not a prefix: `nonE'x'` is a word and a string.
        assert_eq!(code(PG, "SELECT nonE'x' {{name}}"), "SELECT nonE<q> {{name}}");
    }

    #[test]
    fn placeholders_inside_dollar_quotes_are_refused_by_postgres() {
        let message = error(PG, "DO $$ BEGIN CREATE ROLE {{name}}; END $$");
        assert!(message.starts_with("{{name}} is inside quotes (a $$...$$ string)"), "{message}");
        let message = error(PG, "DO $body$ BEGIN EXECUTE 'x' || {{password}}; END $body$");
        assert!(message.contains("$body$...$body$"), "{message}");
        assert_inside_quotes(PG, "DO $a$ $$ $b$ {{name}} $a$", "{{name}}");
        // A dollar quote's body is not scanned for quotes.
        assert_eq!(code(PG, "SELECT $$it's$$, {{name}}"), "SELECT <q>, {{name}}");
    }

    #[test]
    fn a_dollar_that_opens_no_quote_is_code() {
        assert_eq!(code(PG, "SELECT $1, {{name}}"), "SELECT $1, {{name}}");
        assert_eq!(code(PG, "SELECT a$b$, {{name}}"), "SELECT a$b$, {{name}}");
        assert_eq!(code(PG, "SELECT $ {{name}}"), "SELECT $ {{name}}");
        // MySQL has no dollar quotes.
        assert_eq!(code(MY, "SELECT $$ {{name}} $$"), "SELECT $$ {{name}} $$");
    }

    #[test]
    fn placeholders_outside_quotes_are_found_around_quotes() {
        assert_eq!(code(PG, "SELECT 'it''s', {{name}}, '{'"), "SELECT <q>, {{name}}, <q>");
        assert_eq!(code(MY, "CREATE USER {{name}}@'%'"), "CREATE USER {{name}}@<q>");
        assert_eq!(code(PG, "GRANT \"Mixed Case\" TO {{name}}"), "GRANT <q> TO {{name}}");
        assert_eq!(code(MY, "GRANT SELECT ON `db`.* TO {{name}}@'%'"), "GRANT SELECT ON <q>.* TO {{name}}@<q>");
    }

    #[test]
    fn backslashes_follow_each_engines_rules() {
        // PostgreSQL (standard_conforming_strings): 'a\' is a whole string.
        assert_eq!(code(PG, "SELECT 'a\\', {{name}}"), "SELECT <q>, {{name}}");
        // MySQL: \' escapes, so the string never closes.
        assert!(error(MY, "SELECT 'a\\', {{name}}").contains("never closed"));
        assert_eq!(code(MY, "SELECT 'a\\'b', {{name}}"), "SELECT <q>, {{name}}");
        assert_eq!(code(MY, "SELECT \"a\\\"b\", {{name}}"), "SELECT <q>, {{name}}");
        // Backticks take no backslash escapes.
        assert_eq!(code(MY, "SELECT `a\\`, {{name}}"), "SELECT <q>, {{name}}");
    }

    #[test]
    fn unterminated_quotes_are_refused() {
        for (engine, statement, what) in [
            (PG, "SELECT 'abc", "a '...' string"),
            (PG, "SELECT 'it''s", "a '...' string"),
            (PG, "SELECT \"abc", "a \"...\" identifier"),
            (PG, "SELECT E'abc\\'", "an E'...' string"),
            (PG, "SELECT $$abc", "a $$...$$ string"),
            (PG, "SELECT $x$abc$y$", "a $x$...$x$ string"),
            (PG, "SELECT 1 /* abc", "/* comment"),
            (PG, "SELECT 1 /* /* */", "/* comment"),
            (MY, "SELECT `abc", "a `...` identifier"),
            (MY, "SELECT \"abc", "a \"...\" string"),
            (MY, "SELECT 1 /* abc", "/* comment"),
        ] {
            let message = error(engine, statement);
            assert!(message.contains(what) && message.contains("never closed"), "{statement}: {message}");
        }
    }

    #[test]
    fn placeholders_in_comments_are_refused() {
        for (engine, statement) in [
            (PG, "CREATE ROLE {{name}} -- was {{password}}"),
            (PG, "CREATE ROLE {{name}} /* {{password}} */"),
            (PG, "CREATE ROLE {{name}} /* /* */ {{password}} */"),
            (MY, "CREATE USER {{name}} -- {{password}}"),
            (MY, "CREATE USER {{name}} # {{password}}"),
            (MY, "CREATE USER {{name}} /*! {{password}} */"),
        ] {
            let message = error(engine, statement);
            assert!(message.starts_with("{{password}} is inside a comment"), "{statement}: {message}");
        }
    }

    #[test]
    fn comments_hide_quotes_and_follow_each_engines_rules() {
        assert_eq!(code(PG, "-- it's\nCREATE ROLE {{name}}"), "<c>CREATE ROLE {{name}}");
        assert_eq!(code(PG, "/* it's /* nested */ still */ DROP ROLE {{name}}"), "<c> DROP ROLE {{name}}");
        // MySQL does not nest: the first */ ends the comment.
        assert_eq!(code(MY, "/* a /* b */ DROP USER {{name}}"), "<c> DROP USER {{name}}");
        // MySQL's -- needs a space; # is a comment only there.
        assert_eq!(code(MY, "SELECT 1--1, {{name}}"), "SELECT 1--1, {{name}}");
        assert_eq!(code(PG, "SELECT 1 # 2, {{name}}"), "SELECT 1 # 2, {{name}}");
        assert_eq!(code(MY, "DROP USER {{name}} # it's\n"), "DROP USER {{name}} <c>");
        // Comment markers inside quotes are text.
        assert_eq!(code(PG, "SELECT '--', {{name}}"), "SELECT <q>, {{name}}");
    }

    #[test]
    fn unknown_and_unclosed_placeholders_are_refused() {
        let message = error(PG, "CREATE ROLE {{username}}");
        assert!(message.starts_with("{{username}} is not a placeholder"), "{message}");
        assert!(message.contains("{{name}}, {{password}}, {{expiration}}"), "{message}");
        assert!(error(PG, "CREATE ROLE {{}}").contains("not a placeholder"));
        assert!(error(PG, "CREATE ROLE {{{name}}}").contains("not a placeholder"));
        assert!(error(PG, "CREATE ROLE {{name").contains("never closed"));
        // `{{` is reserved even inside quotes, so a misspelt placeholder never passes as text.
        assert!(error(PG, "COMMENT ON ROLE {{name}} IS '{{naem}}'").contains("inside quotes"));
    }

    #[test]
    fn placeholders_not_allowed_in_a_list_are_refused() {
        let message =
            Template::parse(PG, "DROP ROLE {{name}} -- x\n; SELECT {{password}}", &[Placeholder::Name]).unwrap_err();
        assert_eq!(message, "{{password}} cannot be used here (only {{name}})");
    }

    #[test]
    fn placeholders_glued_to_words_or_quotes_are_refused() {
        for statement in [
            "CREATE ROLE x{{name}}",
            "CREATE ROLE {{name}}x",
            "CREATE ROLE {{name}}_ro",
            "SELECT 'a'{{password}}",
            "SELECT {{password}}'a'",
            "SELECT \"a\"{{name}}",
            "SELECT U&{{password}}",
            "SELECT {{name}}{{password}}",
            "SELECT ${{name}}",
        ] {
            let message = error(PG, statement);
            assert!(message.contains("glued"), "{statement}: {message}");
        }
        assert!(error(MY, "CREATE USER {{name}}`x`").contains("glued to the ``` after"));
        // Operators and punctuation are fine.
        ok(PG, "SELECT ({{expiration}})::timestamptz, {{name}};");
        ok(MY, "CREATE USER {{name}}@'%'");
    }

    #[test]
    fn empty_statements_are_refused() {
        assert_eq!(error(PG, "  \n"), "the statement is empty");
    }

    #[test]
    fn non_ascii_text_is_kept_as_it_is() {
        let template = ok(PG, "COMMENT ON ROLE {{name}} IS 'für $$ Ümlaut' -- ñ");
        assert_eq!(
            template.expand(&VALUES).unwrap().as_str(),
            "COMMENT ON ROLE \"v_app_k3j9x8q2m1\" IS 'für $$ Ümlaut' -- ñ"
        );
        assert_eq!(code(PG, "SELECT ä$x$ {{name}}"), "SELECT ä$x$ {{name}}");
    }

    /// Whatever the values hold, each stays one quoted token: the code a
    /// server sees around it is the template's.
    #[test]
    fn hostile_values_cannot_leave_their_quotes() {
        let hostile = [
            "a'b",
            "a\"b",
            "a`b",
            "a\\",
            "\\'; DROP TABLE t; --",
            "x\"; DROP ROLE postgres; --",
            "$$; DROP TABLE t; $$",
            "$x$ ' \" ` \\ /* -- #",
            "''",
            "\\\\'",
        ];
        for engine in [PG, MY] {
            let template = ok(engine, "CREATE ROLE {{name}} PASSWORD {{password}} VALID UNTIL {{expiration}}");
            for value in hostile {
                let values = Values { name: value, password: Some(value), expiration: Some(value) };
                let expanded = template.expand(&values).unwrap();
                assert_eq!(
                    code(engine, expanded.as_str()),
                    "CREATE ROLE <q> PASSWORD <q> VALID UNTIL <q>",
                    "{engine:?} {value:?} -> {}",
                    expanded.as_str()
                );
            }
        }
    }

    #[test]
    fn hostile_values_are_quoted_by_each_engines_rules() {
        let template = ok(PG, "ALTER ROLE {{name}} PASSWORD {{password}}");
        let values = Values { name: "a\"b", password: Some("it's \\ $$"), expiration: None };
        assert_eq!(template.expand(&values).unwrap().as_str(), "ALTER ROLE \"a\"\"b\" PASSWORD E'it''s \\\\ $$'");
        let template = ok(MY, "ALTER USER {{name}}@'%' IDENTIFIED WITH mysql_native_password AS {{password}}");
        let values = Values { name: "a`b", password: Some("it's \\"), expiration: None };
        assert_eq!(
            template.expand(&values).unwrap().as_str(),
            "ALTER USER `a``b`@'%' IDENTIFIED WITH mysql_native_password AS 'it''s \\\\'"
        );
    }

    #[test]
    fn a_missing_value_is_an_error_not_an_empty_string() {
        let template = ok(PG, "ALTER ROLE {{name}} VALID UNTIL {{expiration}}");
        let values = Values { name: "n", ..Values::default() };
        assert!(template.expand(&values).unwrap_err().message().contains("{{expiration}}"));
    }

    #[test]
    fn text_before_each_use_is_given_for_context_checks() {
        let template = ok(MY, "CREATE USER {{name}} IDENTIFIED BY {{password}}; -- x\n SET PASSWORD = {{password}}");
        assert_eq!(
            template.text_before_each(Placeholder::Password),
            [
                "CREATE USER {{name}} IDENTIFIED BY ",
                "CREATE USER {{name}} IDENTIFIED BY {{password}}; -- x\n SET PASSWORD = "
            ]
        );
        assert!(template.uses(Placeholder::Name) && !template.uses(Placeholder::Expiration));
    }

    #[test]
    fn debug_hides_expanded_statements_and_passwords() {
        let template = ok(PG, "ALTER ROLE {{name}} PASSWORD {{password}}");
        let values = Values { name: "app", password: Some("s3cr3t"), expiration: None };
        let shown = format!("{:?} {values:?}", template.expand(&values).unwrap());
        assert!(!shown.contains("s3cr3t") && shown.contains("app"), "{shown}");
    }
}
