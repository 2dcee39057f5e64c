//! Dynamic database credentials: a user made for each lease and dropped
//! when it ends, written once for every engine the `sql` import speaks. A
//! rotator names what its engine does differently ([`DynamicDatabase`])
//! and forwards `check_role`, `issue` and `revoke` to [`check_role`],
//! [`issue`] and [`revoke`].
//!
//! # Role params (a JSON object; any other name is refused)
//!
//! | param | | |
//! |---|---|---|
//! | `host` | string, required | the database server |
//! | `port` | integer | default: the engine's (5432, 3306) |
//! | `database` | string | to connect to and name in the credential; default [`DynamicDatabase::DEFAULT_DATABASE`] |
//! | `tls` | `disable`, `require`, `verify-full` | default `verify-full`, as for rotations |
//! | `admin_secret` | string, required | a granted secret with the admin's `username` and `password` (the host merges the role's admin secret in); the host logs in with it, so the admin password never enters the plugin |
//! | `username_prefix` | string | `a-z` first, then `a-z0-9_`; default `v_` + the role's name shortened + `_` ([`names::default_prefix`]) |
//! | `creation_statements` | list of strings | one statement each; default [`DynamicDatabase::DEFAULT_CREATION_STATEMENTS`] |
//! | `revocation_statements` | list of strings | one statement each; default [`DynamicDatabase::DEFAULT_REVOCATION_STATEMENTS`] |
//!
//! Statements are templates ([`template`]): `{{name}}` becomes the quoted
//! user name, `{{password}}` the quoted password in the form the engine
//! stores ([`DynamicDatabase::stored_password`]) and `{{expiration}}` the
//! quoted end of the lease ([`DynamicDatabase::expiration_text`]). They are
//! written bare, never inside quotes; creation statements must use
//! `{{name}}` and `{{password}}`, revocation statements `{{name}}` and
//! nothing else.
//!
//! # What each call does
//!
//! - `check_role`: reads the params and checks every template; reaches no
//!   target. `issue` and `revoke` run the same checks first.
//! - `issue`: a new name ([`names`]) and a 32-character alphanumeric
//!   password; logs in as the admin and runs the creation statements, in
//!   one transaction where the engine's DDL allows it
//!   ([`DynamicDatabase::TRANSACTIONAL_DDL`]), else dropping the user again
//!   if a later statement fails; checks the user now exists. Returns the
//!   credential, AWS's database-secret JSON
//!   `{"engine","host","port","username","password","dbname"}` (`dbname`
//!   only when there is a database), and the revoke handle
//!   `{"username": NAME}`.
//! - `revoke`: when the user exists, [`DynamicDatabase::before_revocation`],
//!   the revocation statements (in a transaction where possible), and a
//!   check that the user is gone (revocation statements must drop it);
//!   then, whether or not it existed, [`DynamicDatabase::after_revocation`].
//!   A user already gone is success, so revoke can be retried.
//!
//! Errors: bad params or templates are fatal; a host call that fails is
//! fatal or retryable as [`StepError::from`] decides (an unreachable or
//! refusing target is retryable). An error about a creation statement
//! never quotes the password or its stored form, even where the server
//! quoted them.

pub mod expiration;
pub mod names;
mod role;
pub mod template;

use serde::{Deserialize, Serialize};

pub use role::{PARAM_NAMES, Role, RoleParams};
pub use template::{Placeholder, SqlStatement, Template, Values};

use crate::database_secret::DatabaseSecret;
use crate::password::{PasswordOptions, generate_password};
use crate::redact::scrub;
use crate::sql::{ConnectOptions, Connection, Credentials, Engine};
use crate::{IssueRequest, Issued, SecretRef, StepError, log};

/// Characters of an issued password: letters and digits, each at least
/// once, so it survives any connection string or shell unquoted.
pub const PASSWORD_CHARS: u32 = 32;

/// What an engine must say about dynamic users. The hooks run on a
/// connection logged in as the role's admin.
pub trait DynamicDatabase {
    const ENGINE: Engine;
    /// The longest user name the server accepts, in characters (generated
    /// names are ASCII, so in bytes too). Must exceed [`names::RANDOM_CHARS`].
    const MAX_NAME_LEN: usize;
    /// The database to connect to when the role names none.
    const DEFAULT_DATABASE: Option<&'static str>;
    /// Name prefixes the server keeps for itself; refused in `username_prefix`.
    const RESERVED_PREFIXES: &'static [&'static str] = &[];
    /// Whether DDL can run in a transaction, so a failed creation leaves
    /// nothing behind (else [`drop_user`](Self::drop_user) cleans up).
    const TRANSACTIONAL_DDL: bool;
    /// Used when the role gives no `creation_statements`.
    const DEFAULT_CREATION_STATEMENTS: &'static [&'static str];
    /// Used when the role gives no `revocation_statements`.
    const DEFAULT_REVOCATION_STATEMENTS: &'static [&'static str];

    /// What `{{password}}` stands for, before quoting: the form the server
    /// stores (a verifier or hash), so the plaintext never appears in a
    /// statement, or the plaintext itself where the engine has no such form.
    fn stored_password(password: &str) -> Result<String, StepError>;

    /// Refuses a use of `{{password}}` that does not fit what it stands for
    /// (e.g. a hash given where the server expects plaintext), given the
    /// statement's text before it. The default accepts every use.
    fn check_password_use(text_before: &str) -> Result<(), String> {
        let _ = text_before;
        Ok(())
    }

    /// What `{{expiration}}` stands for, before quoting, from the lease's
    /// `expires-at` (RFC 3339, UTC). The default keeps it as it is, checked.
    fn expiration_text(expires_at: &str) -> Result<String, StepError> {
        expiration::rfc3339_utc(expires_at)
    }

    /// Whether a user of that name exists (on any host, for MySQL).
    fn user_exists(connection: &Connection, username: &str) -> Result<bool, StepError>;

    /// Removes the user outright: cleans up after creation statements that
    /// failed half way on an engine without transactional DDL.
    fn drop_user(connection: &Connection, username: &str) -> Result<(), StepError>;

    /// Runs before the revocation statements, when the user exists (e.g.
    /// stop its logins and end its sessions, so that they release their
    /// locks). The default does nothing.
    fn before_revocation(connection: &Connection, username: &str) -> Result<(), StepError> {
        let _ = (connection, username);
        Ok(())
    }

    /// Moves the user's expiry at the server to `expiration` (from
    /// [`expiration_text`](Self::expiration_text)) when its lease is
    /// renewed. The default does nothing: the engine has no expiry of its own.
    fn set_expiry(connection: &Connection, username: &str, expiration: &str) -> Result<(), StepError> {
        let _ = (connection, username, expiration);
        Ok(())
    }

    /// Runs after the revocation statements, and also when the user was
    /// already gone, so a retried revoke finishes it (e.g. end sessions
    /// that outlived the user). The default does nothing.
    fn after_revocation(connection: &Connection, username: &str) -> Result<(), StepError> {
        let _ = (connection, username);
        Ok(())
    }
}

/// `revoke_handle`: what `revoke` needs to remove a user.
#[derive(Debug, Serialize, Deserialize)]
struct RevokeHandle {
    username: String,
}

impl RevokeHandle {
    /// The handle, refused unless it names a user tumbler could have made
    /// for this engine, so a damaged handle never drops someone else.
    fn parse<D: DynamicDatabase>(handle: &str) -> Result<Self, StepError> {
        let handle: RevokeHandle = serde_json::from_str(handle)
            .map_err(|e| StepError::fatal(format!("the revoke handle is not {{\"username\": ...}}: {e}")))?;
        if !names::is_generated_name(&handle.username, D::MAX_NAME_LEN) {
            return Err(StepError::fatal(format!(
                "the revoke handle names {:?}, which is not a user name tumbler generates",
                handle.username
            )));
        }
        Ok(handle)
    }
}

/// `check_role`: the role's params and templates are valid for `D`.
pub fn check_role<D: DynamicDatabase>(role: &str, params: &str) -> Result<(), StepError> {
    Role::parse::<D>(role, params).map(|_| ())
}

/// `issue`: creates a user for the lease and returns its credential.
pub fn issue<D: DynamicDatabase>(request: &IssueRequest) -> Result<Issued, StepError> {
    const { assert!(D::MAX_NAME_LEN > names::RANDOM_CHARS) };
    let role = Role::parse::<D>(&request.role, &request.params)?;
    let username = names::generate_username(&role.prefix, D::MAX_NAME_LEN)?;
    let password = generate_password(&PasswordOptions::alphanumeric(PASSWORD_CHARS))?;
    let stored = D::stored_password(&password)?;
    let expiration = if role.creation.iter().any(|t| t.uses(Placeholder::Expiration)) {
        Some(D::expiration_text(&request.expires_at)?)
    } else {
        None
    };
    let values = Values { name: &username, password: Some(&stored), expiration: expiration.as_deref() };
    let statements = expand_all(&role.creation, &values)?;

    let connection = connect::<D>(&role)?;
    create_user::<D>(&connection, &username, &statements, &[&password, &stored])?;
    log::info(format_args!("issue: created user {username:?} for lease {}", request.lease_id));

    let mut credential =
        DatabaseSecret::new(engine_name(D::ENGINE), &role.params.host, Some(role.port::<D>()), &username, password);
    credential.dbname = role.database::<D>();
    let revoke_handle = serde_json::to_string(&RevokeHandle { username })
        .map_err(|e| StepError::fatal(format!("the revoke handle could not be written: {e}")))?;
    Ok(Issued { credential: credential.to_json(), revoke_handle })
}

/// `renew`: the lease's user keeps working until `expires_at`.
pub fn renew<D: DynamicDatabase>(
    role: &str,
    params: &str,
    revoke_handle: &str,
    expires_at: &str,
) -> Result<(), StepError> {
    let role = Role::parse::<D>(role, params)?;
    let RevokeHandle { username } = RevokeHandle::parse::<D>(revoke_handle)?;
    let expiration = D::expiration_text(expires_at)?;
    let connection = connect::<D>(&role)?;
    if !D::user_exists(&connection, &username)? {
        return Err(StepError::fatal(format!(
            "user {username:?} no longer exists at the target; it cannot be renewed"
        )));
    }
    D::set_expiry(&connection, &username, &expiration)?;
    log::info(format_args!("renew: user {username:?} now expires at {expiration}"));
    Ok(())
}

/// `revoke`: removes the lease's user; a user already gone is success.
pub fn revoke<D: DynamicDatabase>(role: &str, params: &str, revoke_handle: &str) -> Result<(), StepError> {
    let role = Role::parse::<D>(role, params)?;
    let RevokeHandle { username } = RevokeHandle::parse::<D>(revoke_handle)?;
    let statements = expand_all(&role.revocation, &Values { name: &username, ..Values::default() })?;

    let connection = connect::<D>(&role)?;
    if D::user_exists(&connection, &username)? {
        D::before_revocation(&connection, &username)?;
        let revocation = || run(&connection, "revocation_statements", &statements, &[]);
        if D::TRANSACTIONAL_DDL {
            in_transaction(&connection, revocation)?
        } else {
            revocation()?
        }
        if D::user_exists(&connection, &username)? {
            return Err(StepError::fatal(format!(
                "revocation_statements ran, but user {username:?} still exists: they must drop it"
            )));
        }
        log::info(format_args!("revoke: dropped user {username:?}"));
    } else {
        log::info(format_args!("revoke: user {username:?} is already gone"));
    }
    D::after_revocation(&connection, &username)
}

fn expand_all(templates: &[Template], values: &Values<'_>) -> Result<Vec<SqlStatement>, StepError> {
    templates.iter().map(|template| template.expand(values)).collect()
}

/// A connection to the role's database as its admin.
fn connect<D: DynamicDatabase>(role: &Role) -> Result<Connection, StepError> {
    let admin = Credentials::FromSecret(SecretRef::Named(role.params.admin_secret.clone()));
    let mut options =
        ConnectOptions::new(D::ENGINE, &role.params.host, role.port::<D>(), admin).tls(role.params.tls.into());
    options.database = role.database::<D>();
    Ok(Connection::connect(&options)?)
}

/// Runs the creation statements so that a failure leaves no user behind:
/// in one transaction, or else dropping the user again.
fn create_user<D: DynamicDatabase>(
    connection: &Connection,
    username: &str,
    statements: &[SqlStatement],
    secrets: &[&str],
) -> Result<(), StepError> {
    if D::TRANSACTIONAL_DDL {
        return in_transaction(connection, || create::<D>(connection, username, statements, secrets));
    }
    create::<D>(connection, username, statements, secrets).inspect_err(|_| {
        if let Err(cleanup) = D::drop_user(connection, username) {
            log::warn(format_args!(
                "issue: user {username:?} may be left behind after the failed creation: {}",
                cleanup.message()
            ));
        }
    })
}

/// Runs the creation statements and checks they made the user.
fn create<D: DynamicDatabase>(
    connection: &Connection,
    username: &str,
    statements: &[SqlStatement],
    secrets: &[&str],
) -> Result<(), StepError> {
    run(connection, "creation_statements", statements, secrets)?;
    if !D::user_exists(connection, username)? {
        return Err(StepError::fatal(format!(
            "creation_statements ran, but user {username:?} does not exist: they must create {{{{name}}}}"
        )));
    }
    Ok(())
}

/// Runs `f` between `BEGIN` and `COMMIT`; `ROLLBACK` when it fails.
fn in_transaction(connection: &Connection, f: impl FnOnce() -> Result<(), StepError>) -> Result<(), StepError> {
    connection.execute("BEGIN", &[])?;
    if let Err(error) = f() {
        // Closing the connection would roll back too; this just says so sooner.
        let _ = connection.execute("ROLLBACK", &[]);
        return Err(error);
    }
    connection.execute("COMMIT", &[])?;
    Ok(())
}

/// Runs each statement of list `field`. An error names the statement by
/// its index, with `secrets` scrubbed from the server's message.
fn run(connection: &Connection, field: &str, statements: &[SqlStatement], secrets: &[&str]) -> Result<(), StepError> {
    for (i, statement) in statements.iter().enumerate() {
        if let Err(error) = connection.execute(statement.as_str(), &[]) {
            let error = StepError::from(error);
            let message = format!("{field}[{i}] failed: {}", scrub(error.message(), secrets));
            return Err(if error.is_retryable() { StepError::retryable(message) } else { StepError::fatal(message) });
        }
    }
    Ok(())
}

/// The credential's `engine`, as AWS's templates write it.
fn engine_name(engine: Engine) -> &'static str {
    match engine {
        Engine::Postgres => "postgres",
        Engine::Mysql => "mysql",
    }
}

#[cfg(test)]
mod tests;
