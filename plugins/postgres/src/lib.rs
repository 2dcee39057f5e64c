//! The built-in `postgres` rotator: a PostgreSQL role's password, rotated
//! with AWS's single-user or alternating-users strategy (the steps live in
//! `tumbler_sdk::database_rotation`; this crate says how PostgreSQL does
//! each thing). The password reaches the server only as a SCRAM-SHA-256
//! verifier computed here ([`scram`]).
//!
//! It also backs dynamic roles: a role per lease, made from statement
//! templates ([`dynamic`]).

mod dynamic;
mod scram;

use serde::Deserialize;
use tumbler_sdk::database_rotation::{self as rotation, PasswordDatabase};
use tumbler_sdk::dynamic_database as leases;
use tumbler_sdk::serde_json::{Map, Value};
use tumbler_sdk::sql::{Connection, Engine};
use tumbler_sdk::{Capability, Info, IssueRequest, Issued, Rotator, StepError, StepInput};

struct Postgres;

/// PostgreSQL has no parameters beyond the common ones.
#[derive(Debug, Default, Deserialize)]
struct NoParams {}

impl PasswordDatabase for Postgres {
    const ENGINE: Engine = Engine::Postgres;
    /// NAMEDATALEN - 1: longer names are silently truncated by the server.
    const MAX_USERNAME_BYTES: usize = 63;
    /// Every cluster has it; a role's own database often does not exist.
    const DEFAULT_DATABASE: Option<&'static str> = Some("postgres");

    type Params = NoParams;

    fn params_schema() -> Map<String, Value> {
        Map::new()
    }

    /// A role may change its own password without any privilege.
    fn set_own_password(
        connection: &Connection,
        params: &NoParams,
        username: &str,
        password: &str,
    ) -> Result<(), StepError> {
        Self::set_password(connection, params, username, password)
    }

    fn set_password(connection: &Connection, _: &NoParams, username: &str, password: &str) -> Result<(), StepError> {
        connection.execute(&format!("ALTER ROLE {} PASSWORD {}", ident(username), verifier_literal(password)?), &[])?;
        Ok(())
    }

    fn user_exists(connection: &Connection, _: &NoParams, username: &str) -> Result<bool, StepError> {
        let found = connection.query("SELECT 1 FROM pg_roles WHERE rolname = $1", &[username.into()])?;
        Ok(!found.rows.is_empty())
    }

    /// As AWS's template: the clone is a login role that is a member of the
    /// template role, so it has the same privileges. Created in one
    /// transaction, so an interrupted run leaves either nothing or both.
    fn provision_user(
        connection: &Connection,
        params: &NoParams,
        username: &str,
        template: &str,
        password: &str,
    ) -> Result<(), StepError> {
        if Self::user_exists(connection, params, username)? {
            return Self::set_password(connection, params, username, password);
        }
        let verifier = verifier_literal(password)?;
        connection.execute("BEGIN", &[])?;
        connection.execute(&format!("CREATE ROLE {} LOGIN PASSWORD {verifier}", ident(username)), &[])?;
        connection.execute(&format!("GRANT {} TO {}", ident(template), ident(username)), &[])?;
        connection.execute("COMMIT", &[])?;
        tumbler_sdk::log::info(format_args!("set: created role {username:?} as a member of {template:?}"));
        Ok(())
    }
}

fn ident(name: &str) -> String {
    Engine::Postgres.quote_identifier(name)
}

/// The password as the string literal of its SCRAM verifier.
fn verifier_literal(password: &str) -> Result<String, StepError> {
    Ok(Engine::Postgres.quote_literal(&scram::verifier(password)?))
}

impl Rotator for Postgres {
    const DYNAMIC: bool = true;

    /// The schema is the rotation's params only: a dynamic role's params
    /// are checked by `check_role` when the role is saved.
    fn info() -> Info {
        Info::new(
            "postgres",
            env!("CARGO_PKG_VERSION"),
            "PostgreSQL role password in AWS's database-secret shape; single-user or \
             alternating-users; sent as a SCRAM-SHA-256 verifier, never as plaintext",
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

tumbler_sdk::export!(Postgres);
