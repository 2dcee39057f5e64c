//! Dynamic credentials: a PostgreSQL role per lease. The params, templates,
//! names and steps are `tumbler_sdk::dynamic_database`'s; this says what
//! PostgreSQL does differently.
//!
//! - `{{password}}` becomes the quoted SCRAM-SHA-256 verifier of the
//!   password ([`scram`](crate::scram)), which `PASSWORD` stores as it is:
//!   the plaintext never reaches the server, its logs or
//!   `pg_stat_statements`. `{{expiration}}` is the lease's end as given
//!   (RFC 3339 UTC, e.g. `'2030-01-02T03:04:05Z'`), which `VALID UNTIL`
//!   reads, so the role stops working then even if tumbler is down.
//! - Names: at most 63 bytes (NAMEDATALEN - 1); prefixes may not start
//!   with `pg_`, which PostgreSQL reserves.
//! - `issue` runs the creation statements in one transaction, so a failure
//!   leaves nothing behind (a statement that cannot run in a transaction,
//!   such as `CREATE DATABASE`, is refused by the server).
//! - `revoke`, when the role exists: `ALTER ROLE ... NOLOGIN` (no new
//!   sessions), then every session of the role, in any database, is
//!   terminated (releasing its locks), then the revocation statements run in
//!   one transaction. The default statements reassign what the role owns to
//!   the admin, drop its privileges and drop it; `REASSIGN OWNED` and `DROP
//!   OWNED` act in the connected database only, so a role that owns objects
//!   in another database cannot be dropped until they are handled there.
//!
//! The admin needs `CREATEROLE` (or superuser). On PostgreSQL 16 and later
//! a non-superuser admin also needs the privileges of the roles it creates
//! to terminate their sessions and to `REASSIGN`/`DROP OWNED`: set
//! `ALTER ROLE admin SET createrole_self_grant = 'set, inherit'`.

use tumbler_sdk::StepError;
use tumbler_sdk::dynamic_database::DynamicDatabase;
use tumbler_sdk::log;
use tumbler_sdk::sql::{Connection, Engine};

use crate::{ident, scram};

pub struct Leases;

impl DynamicDatabase for Leases {
    const ENGINE: Engine = Engine::Postgres;
    /// NAMEDATALEN - 1: the server would silently cut a longer name.
    const MAX_NAME_LEN: usize = 63;
    /// Every cluster has it.
    const DEFAULT_DATABASE: Option<&'static str> = Some("postgres");
    const RESERVED_PREFIXES: &'static [&'static str] = &["pg_"];
    const TRANSACTIONAL_DDL: bool = true;
    const DEFAULT_CREATION_STATEMENTS: &'static [&'static str] =
        &["CREATE ROLE {{name}} LOGIN PASSWORD {{password}} VALID UNTIL {{expiration}}"];
    /// Objects the role created go to the admin (`CURRENT_USER`) rather
    /// than vanish; `DROP OWNED` then removes its privileges, without which
    /// `DROP ROLE` would fail.
    const DEFAULT_REVOCATION_STATEMENTS: &'static [&'static str] =
        &["REASSIGN OWNED BY {{name}} TO CURRENT_USER", "DROP OWNED BY {{name}}", "DROP ROLE IF EXISTS {{name}}"];

    fn stored_password(password: &str) -> Result<String, StepError> {
        scram::verifier(password)
    }

    fn user_exists(connection: &Connection, username: &str) -> Result<bool, StepError> {
        let found = connection.query("SELECT 1 FROM pg_roles WHERE rolname = $1", &[username.into()])?;
        Ok(!found.rows.is_empty())
    }

    fn drop_user(connection: &Connection, username: &str) -> Result<(), StepError> {
        connection.execute(&format!("DROP ROLE IF EXISTS {}", ident(username)), &[])?;
        Ok(())
    }

    /// A renewed lease moves `VALID UNTIL`, so the role keeps working
    /// exactly as long as its lease.
    fn set_expiry(connection: &Connection, username: &str, expiration: &str) -> Result<(), StepError> {
        let literal = Engine::Postgres.quote_literal(expiration);
        connection.execute(&format!("ALTER ROLE {} VALID UNTIL {literal}", ident(username)), &[])?;
        Ok(())
    }

    /// `DROP ROLE` leaves the role's sessions running, and they could hold
    /// locks the revocation statements wait for: lock the role out first,
    /// then end them.
    fn before_revocation(connection: &Connection, username: &str) -> Result<(), StepError> {
        connection.execute(&format!("ALTER ROLE {} NOLOGIN", ident(username)), &[])?;
        let ended = connection
            .execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = $1", &[username.into()])?;
        if ended > 0 {
            log::info(format_args!("revoke: terminated {ended} session(s) of {username:?}"));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use tumbler_sdk::dynamic_database::{Role, Values, check_role};

    use super::*;

    const PARAMS: &str = r#"{"host": "db.internal", "admin_secret": "db/admin"}"#;

    #[test]
    fn the_default_statements_pass_the_checks() {
        check_role::<Leases>("orders", PARAMS).unwrap();
    }

    #[test]
    fn the_password_is_expanded_as_its_verifier() {
        let role = Role::parse::<Leases>("orders", PARAMS).unwrap();
        // `stored_password` is `scram::verifier`, whose PBKDF2 is the host's.
        let verifier = scram::verifier_without_host("Plaintext123", b"sixteen byte sal");
        let values =
            Values { name: "v_orders_k3j9x8q2m1", password: Some(&verifier), expiration: Some("2030-01-02T03:04:05Z") };
        let statement = role.creation[0].expand(&values).unwrap();
        assert_eq!(
            statement.as_str(),
            format!(
                "CREATE ROLE \"v_orders_k3j9x8q2m1\" LOGIN PASSWORD '{verifier}' VALID UNTIL '2030-01-02T03:04:05Z'"
            )
        );
        assert!(verifier.starts_with("SCRAM-SHA-256$4096:") && !statement.as_str().contains("Plaintext123"));
    }

    #[test]
    fn prefixes_postgres_reserves_are_refused() {
        let params = r#"{"host": "h", "admin_secret": "a", "username_prefix": "pg_app_"}"#;
        assert!(check_role::<Leases>("orders", params).unwrap_err().message().contains("reserves"));
    }
}
