//! The built-in `mysql` rotator: a MySQL or MariaDB user's password,
//! rotated with AWS's single-user or alternating-users strategy (the steps
//! live in `tumbler_sdk::database_rotation`; this crate says how MySQL
//! and MariaDB do each thing).
//!
//! The new password reaches the server only as its `mysql_native_password`
//! hash, computed here ([`native_password`]): `IDENTIFIED BY '<password>'`
//! (what `caching_sha2_password` would need) would put the plaintext in
//! the statement, and so in the server's logs. The user is therefore
//! (re)identified with `mysql_native_password`, MariaDB's default; on MySQL
//! 8.4 and later that plugin must be enabled, or the step fails saying so.
//!
//! It also backs dynamic roles: a user per lease, made from statement
//! templates ([`dynamic`]).

mod dynamic;
mod native_password;

use serde::Deserialize;
use tumbler_sdk::database_rotation::{self as rotation, PasswordDatabase};
use tumbler_sdk::dynamic_database as leases;
use tumbler_sdk::serde_json::{Map, Value, json};
use tumbler_sdk::sql::{Connection, Engine, Value as SqlValue};
use tumbler_sdk::{Capability, Info, IssueRequest, Issued, Rotator, StepError, StepInput, log};

struct Mysql;

#[derive(Debug, Deserialize)]
struct MysqlParams {
    /// The host part of the accounts, `'user'@'<user_host>'`.
    #[serde(default = "any_host")]
    user_host: String,
}

fn any_host() -> String {
    "%".into()
}

impl PasswordDatabase for Mysql {
    const ENGINE: Engine = Engine::Mysql;
    /// MariaDB's limit (characters); MySQL's is 32 and it refuses longer names itself.
    const MAX_USERNAME_BYTES: usize = 80;
    const DEFAULT_DATABASE: Option<&'static str> = None;

    type Params = MysqlParams;

    fn params_schema() -> Map<String, Value> {
        let mut properties = Map::new();
        properties.insert(
            "user_host".into(),
            json!({"type": "string", "minLength": 1, "description": "the host part of the accounts, 'user'@'HOST' (default %)"}),
        );
        properties
    }

    /// MariaDB lets any user `SET PASSWORD` to a hash for itself; MySQL
    /// only takes a hash in `ALTER USER ... AS`, which needs the `CREATE
    /// USER` privilege even for one's own account.
    fn set_own_password(connection: &Connection, _: &MysqlParams, _: &str, password: &str) -> Result<(), StepError> {
        let hash = native_password::hash(password);
        let statement = if is_mariadb(connection)? {
            format!("SET PASSWORD = '{hash}'")
        } else {
            format!("ALTER USER CURRENT_USER() IDENTIFIED WITH mysql_native_password AS '{hash}'")
        };
        connection.execute(&statement, &[])?;
        Ok(())
    }

    fn set_password(
        connection: &Connection,
        params: &MysqlParams,
        username: &str,
        password: &str,
    ) -> Result<(), StepError> {
        let hash = native_password::hash(password);
        connection.execute(
            &format!(
                "ALTER USER {} IDENTIFIED WITH mysql_native_password AS '{hash}'",
                account(username, &params.user_host)
            ),
            &[],
        )?;
        Ok(())
    }

    fn user_exists(connection: &Connection, params: &MysqlParams, username: &str) -> Result<bool, StepError> {
        let found = connection.query(
            "SELECT 1 FROM mysql.user WHERE User = ? AND Host = ?",
            &[username.into(), params.user_host.as_str().into()],
        )?;
        Ok(!found.rows.is_empty())
    }

    /// As AWS's template: the clone gets every grant of the template. MySQL
    /// cannot create a user and its grants in one transaction, so each
    /// part is safe to repeat and all run every time: create if missing,
    /// copy the grants (granting twice changes nothing), set the password
    /// (last, as a copied grant may carry the template's identification).
    fn provision_user(
        connection: &Connection,
        params: &MysqlParams,
        username: &str,
        template: &str,
        password: &str,
    ) -> Result<(), StepError> {
        let hash = native_password::hash(password);
        connection.execute(
            &format!(
                "CREATE USER IF NOT EXISTS {} IDENTIFIED WITH mysql_native_password AS '{hash}'",
                account(username, &params.user_host)
            ),
            &[],
        )?;
        copy_grants(connection, &params.user_host, template, username)?;
        Self::set_password(connection, params, username, password)
    }
}

/// `'user'@'host'`, quoted as identifiers (backticks), which no SQL mode
/// reinterprets.
fn account(username: &str, host: &str) -> String {
    format!("{}@{}", Engine::Mysql.quote_identifier(username), Engine::Mysql.quote_identifier(host))
}

fn is_mariadb(connection: &Connection) -> Result<bool, StepError> {
    let version = connection.query("SELECT VERSION()", &[])?;
    Ok(version.rows.first().and_then(|row| row.first()).and_then(text).is_some_and(|v| v.contains("MariaDB")))
}

/// A text cell, whichever protocol the server answered in.
fn text(value: &SqlValue) -> Option<String> {
    match value {
        SqlValue::Text(text) => Some(text.clone()),
        SqlValue::Bytes(bytes) => String::from_utf8(bytes.clone()).ok(),
        _ => None,
    }
}

/// Runs each of `template`'s grants again for `username`.
fn copy_grants(connection: &Connection, host: &str, template: &str, username: &str) -> Result<(), StepError> {
    let grants = connection.query(&format!("SHOW GRANTS FOR {}", account(template, host)), &[])?;
    let mut copied = 0;
    for grant in grants.rows.iter().filter_map(|row| row.first()).filter_map(text) {
        match retarget(&grant, template, host, username) {
            Some(statement) => {
                connection.execute(&statement, &[])?;
                copied += 1;
            }
            // Never quoted: a grant line may carry a password hash.
            None => log::warn(format_args!("set: a grant of {template:?} was not understood and not copied")),
        }
    }
    log::info(format_args!("set: copied {copied} grant(s) of {template:?} to {username:?}"));
    Ok(())
}

/// A `SHOW GRANTS` line of `template` made into the same grant for
/// `username`: the grantee (the last mention of the account) replaced, any
/// `IDENTIFIED BY PASSWORD '<hash>'` left out. `None` for a line that is
/// not a grant of that account.
fn retarget(grant: &str, template: &str, host: &str, username: &str) -> Option<String> {
    if !grant.starts_with("GRANT ") && !grant.starts_with("SET DEFAULT ROLE ") {
        return None;
    }
    // MariaDB and MySQL 8 quote accounts with backticks; MySQL 5.7 with quotes.
    let forms = [
        (account(template, host), account(username, host)),
        (
            format!("{}@{}", Engine::Mysql.quote_literal(template), Engine::Mysql.quote_literal(host)),
            format!("{}@{}", Engine::Mysql.quote_literal(username), Engine::Mysql.quote_literal(host)),
        ),
    ];
    let (at, old, new) = forms.iter().find_map(|(old, new)| grant.rfind(old.as_str()).map(|at| (at, old, new)))?;
    let mut statement = format!("{}{}{}", &grant[..at], new, &grant[at + old.len()..]);
    const IDENTIFIED: &str = " IDENTIFIED BY PASSWORD '";
    if let Some(start) = statement.find(IDENTIFIED) {
        let hash_start = start + IDENTIFIED.len();
        let end = statement[hash_start..].find('\'')? + hash_start + 1;
        statement.replace_range(start..end, "");
    }
    Some(statement)
}

impl Rotator for Mysql {
    const DYNAMIC: bool = true;

    /// The schema is the rotation's params only: a dynamic role's params
    /// are checked by `check_role` when the role is saved.
    fn info() -> Info {
        Info::new(
            "mysql",
            env!("CARGO_PKG_VERSION"),
            "MySQL or MariaDB user password in AWS's database-secret shape; single-user or \
             alternating-users; sent as a mysql_native_password hash, never as plaintext",
        )
        .capabilities([Capability::Sql, Capability::Secrets])
        .params_schema(rotation::params_schema(Self::params_schema()))
    }

    fn create(input: &StepInput) -> Result<String, StepError> {
        rotation::create::<Self>(input)
    }

    fn set(input: &StepInput) -> Result<(), StepError> {
        rotation::set::<Self>(input)
    }

    fn test(input: &StepInput) -> Result<(), StepError> {
        rotation::test::<Self>(input)
    }

    fn finish(input: &StepInput) -> Result<(), StepError> {
        rotation::finish::<Self>(input)
    }

    fn check_role(role: &str, params: &str) -> Result<(), StepError> {
        leases::check_role::<dynamic::Leases>(role, params)
    }

    fn issue(request: &IssueRequest) -> Result<Issued, StepError> {
        leases::issue::<dynamic::Leases>(request)
    }

    fn renew(role: &str, params: &str, revoke_handle: &str, expires_at: &str) -> Result<(), StepError> {
        leases::renew::<dynamic::Leases>(role, params, revoke_handle, expires_at)
    }

    fn revoke(role: &str, params: &str, revoke_handle: &str) -> Result<(), StepError> {
        leases::revoke::<dynamic::Leases>(role, params, revoke_handle)
    }
}

tumbler_sdk::export!(Mysql);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grants_are_retargeted_without_the_password_hash() {
        let user = "App \"x\"";
        assert_eq!(
            retarget(
                "GRANT USAGE ON *.* TO `App \"x\"`@`%` IDENTIFIED BY PASSWORD '*2B602296A79E0A8784ACC5C88D92E46588CCA3C3'",
                user, "%", "App \"x\"_clone"
            )
            .unwrap(),
            "GRANT USAGE ON *.* TO `App \"x\"_clone`@`%`"
        );
        assert_eq!(
            retarget("GRANT SELECT ON `App \"x\"`.* TO `App \"x\"`@`%` WITH GRANT OPTION", user, "%", "c").unwrap(),
            "GRANT SELECT ON `App \"x\"`.* TO `c`@`%` WITH GRANT OPTION",
            "only the grantee changes, not a database of the same name"
        );
        assert_eq!(
            retarget("GRANT SELECT ON `db`.* TO 'app'@'%'", "app", "%", "app_clone").unwrap(),
            "GRANT SELECT ON `db`.* TO 'app_clone'@'%'",
            "MySQL 5.7 quotes accounts as strings"
        );
        assert_eq!(retarget("GRANT SELECT ON *.* TO `other`@`%`", user, "%", "c"), None);
        assert_eq!(retarget("REVOKE x", user, "%", "c"), None);
    }

    #[test]
    fn accounts_quote_names_as_identifiers() {
        assert_eq!(account("a`b", "%"), "`a``b`@`%`");
    }
}
