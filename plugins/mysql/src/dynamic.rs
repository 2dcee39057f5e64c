//! Dynamic credentials: a MySQL or MariaDB user per lease. The params,
//! templates, names and steps are `tumbler_sdk::dynamic_database`'s; this
//! says what MySQL does differently.
//!
//! - `{{password}}` becomes the quoted `mysql_native_password` hash of the
//!   password ([`native_password`](crate::native_password)), so the
//!   plaintext never appears in a statement or the server's logs. It must
//!   therefore follow `AS` or `USING` (`IDENTIFIED WITH
//!   mysql_native_password AS {{password}}`, MariaDB's `IDENTIFIED VIA
//!   mysql_native_password USING {{password}}`) or `IDENTIFIED BY PASSWORD`
//!   (MariaDB, MySQL 5.7); anywhere else (`IDENTIFIED BY {{password}}`
//!   would make the hash itself the password) is refused. On MySQL 8.4 and
//!   later the `mysql_native_password` plugin must be enabled.
//! - `{{expiration}}` becomes the lease's end as a UTC `DATETIME` literal,
//!   `'2030-01-02 03:04:05'`. MySQL has no account expiry time; the default
//!   statements do not use it.
//! - Names: at most 32 characters (MySQL's limit; MariaDB allows 80).
//! - MySQL commits each DDL statement on its own, so when a creation
//!   statement fails after the user was made, every account of that user
//!   name (whatever its host part) is dropped before the error is returned.
//! - `revoke`: the revocation statements, then every session of the user
//!   (after `DROP USER` it can open no new one) is killed; a retried revoke
//!   kills them even when the user is already gone.
//!
//! The admin needs `CREATE USER` and `SELECT` on `mysql.user` (to see the
//! accounts), `PROCESS` (to see other users' sessions) and
//! `CONNECTION_ADMIN` or `SUPER` (to kill them), plus whatever the creation
//! statements grant, `WITH GRANT OPTION`.

use tumbler_sdk::StepError;
use tumbler_sdk::dynamic_database::{DynamicDatabase, expiration};
use tumbler_sdk::log;
use tumbler_sdk::sql::{Connection, Engine, Value as SqlValue};

use crate::{account, native_password, text};

pub struct Leases;

impl DynamicDatabase for Leases {
    const ENGINE: Engine = Engine::Mysql;
    /// MySQL's limit since 5.7.8, which MariaDB's 80 also allows.
    const MAX_NAME_LEN: usize = 32;
    const DEFAULT_DATABASE: Option<&'static str> = None;
    const TRANSACTIONAL_DDL: bool = false;
    const DEFAULT_CREATION_STATEMENTS: &'static [&'static str] =
        &["CREATE USER {{name}}@'%' IDENTIFIED WITH mysql_native_password AS {{password}}"];
    const DEFAULT_REVOCATION_STATEMENTS: &'static [&'static str] = &["DROP USER IF EXISTS {{name}}@'%'"];

    fn stored_password(password: &str) -> Result<String, StepError> {
        Ok(native_password::hash(password))
    }

    fn check_password_use(text_before: &str) -> Result<(), String> {
        let words: Vec<String> = text_before.split_whitespace().rev().take(2).map(str::to_ascii_uppercase).collect();
        match words.iter().map(String::as_str).collect::<Vec<_>>()[..] {
            ["AS" | "USING", ..] | ["PASSWORD", "BY"] => Ok(()),
            _ => Err("{{password}} stands for the password's mysql_native_password hash, so it must follow AS \
                      (IDENTIFIED WITH mysql_native_password AS {{password}}), USING or IDENTIFIED BY PASSWORD"
                .into()),
        }
    }

    fn expiration_text(expires_at: &str) -> Result<String, StepError> {
        expiration::utc_datetime(expires_at)
    }

    fn user_exists(connection: &Connection, username: &str) -> Result<bool, StepError> {
        let found = connection.query("SELECT 1 FROM mysql.user WHERE User = ?", &[username.into()])?;
        Ok(!found.rows.is_empty())
    }

    /// Every account of the name: the creation statements may have used
    /// any host part, and the random name is this lease's alone.
    fn drop_user(connection: &Connection, username: &str) -> Result<(), StepError> {
        let hosts = connection.query("SELECT Host FROM mysql.user WHERE User = ?", &[username.into()])?;
        for host in hosts.rows.iter().filter_map(|row| row.first()).filter_map(text) {
            connection.execute(&format!("DROP USER IF EXISTS {}", account(username, &host)), &[])?;
        }
        Ok(())
    }

    /// `DROP USER` leaves open sessions running: kill them. A session that
    /// ended meanwhile is no error.
    fn after_revocation(connection: &Connection, username: &str) -> Result<(), StepError> {
        let sessions =
            connection.query("SELECT ID FROM information_schema.PROCESSLIST WHERE USER = ?", &[username.into()])?;
        let mut killed = 0;
        for id in sessions.rows.iter().filter_map(|row| row.first()).filter_map(session_id) {
            match connection.execute(&format!("KILL CONNECTION {id}"), &[]) {
                Ok(_) => killed += 1,
                Err(e) if e.message.contains(&format!("({UNKNOWN_THREAD} ")) => {}
                Err(e) => return Err(e.into()),
            }
        }
        if killed > 0 {
            log::info(format_args!("revoke: killed {killed} session(s) of {username:?}"));
        }
        Ok(())
    }
}

/// ER_NO_SUCH_THREAD: the session ended before `KILL` reached it.
const UNKNOWN_THREAD: u16 = 1094;

/// A process-list id, whichever type the server answered in; a number,
/// so it is safe to write into `KILL`.
fn session_id(value: &SqlValue) -> Option<u64> {
    match value {
        SqlValue::Int(n) => u64::try_from(*n).ok(),
        other => text(other)?.trim().parse().ok(),
    }
}

#[cfg(test)]
mod tests {
    use tumbler_sdk::dynamic_database::{Role, Values, check_role};

    use super::*;

    const PARAMS: &str = r#"{"host": "db.internal", "admin_secret": "db/admin"}"#;

    fn with_creation(statement: &str) -> String {
        tumbler_sdk::serde_json::json!({"host": "h", "admin_secret": "a", "creation_statements": [statement]})
            .to_string()
    }

    #[test]
    fn the_default_statements_pass_the_checks() {
        check_role::<Leases>("orders", PARAMS).unwrap();
    }

    #[test]
    fn the_password_is_expanded_as_its_hash() {
        let role = Role::parse::<Leases>("orders", PARAMS).unwrap();
        let hash = Leases::stored_password("newpw").unwrap();
        let values = Values { name: "v_orders_k3j9x8q2m1", password: Some(&hash), expiration: None };
        assert_eq!(
            role.creation[0].expand(&values).unwrap().as_str(),
            "CREATE USER `v_orders_k3j9x8q2m1`@'%' IDENTIFIED WITH mysql_native_password AS \
             '*DF0732E0434670AF9F0199F4D2837342EBE03C63'"
        );
    }

    #[test]
    fn the_hash_is_accepted_only_where_the_server_reads_a_hash() {
        for good in [
            "CREATE USER {{name}}@'%' IDENTIFIED WITH mysql_native_password AS {{password}}",
            "CREATE USER {{name}}@'%' IDENTIFIED VIA mysql_native_password using {{password}}",
            "CREATE USER {{name}}@'%' IDENTIFIED BY PASSWORD {{password}}",
            "CREATE USER {{name}}@'%' identified\n by\tpassword {{password}}",
        ] {
            check_role::<Leases>("r", &with_creation(good)).unwrap_or_else(|e| panic!("{good}: {}", e.message()));
        }
        for bad in [
            "CREATE USER {{name}}@'%' IDENTIFIED BY {{password}}",
            "SET PASSWORD FOR {{name}}@'%' = PASSWORD({{password}})",
            "SET PASSWORD FOR {{name}}@'%' = {{password}}",
        ] {
            let message = check_role::<Leases>("r", &with_creation(bad)).unwrap_err().message().to_owned();
            assert!(message.starts_with("creation_statements[0]: {{password}} stands for"), "{bad}: {message}");
        }
    }

    #[test]
    fn the_expiration_is_a_utc_datetime() {
        assert_eq!(Leases::expiration_text("2030-01-02T03:04:05Z").unwrap(), "2030-01-02 03:04:05");
    }

    #[test]
    fn session_ids_are_numbers() {
        assert_eq!(session_id(&SqlValue::Int(42)), Some(42));
        assert_eq!(session_id(&SqlValue::Text("42".into())), Some(42));
        assert_eq!(session_id(&SqlValue::Bytes(b"7".to_vec())), Some(7));
        assert_eq!(session_id(&SqlValue::Text("1; DROP".into())), None);
        assert_eq!(session_id(&SqlValue::Int(-1)), None);
    }
}
