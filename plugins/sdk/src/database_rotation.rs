//! Password rotation for SQL databases, as AWS Secrets Manager's rotation
//! templates do it, written once for every engine the `sql` import speaks.
//! A rotator names its engine's statements ([`PasswordDatabase`]) and
//! forwards its four steps to [`create`], [`set`], [`test`] and [`finish`];
//! this module reads the parameters, applies the strategy, and makes each
//! step safe to run again.
//!
//! The secret's value is AWS's database shape ([`DatabaseSecret`]); fields
//! it does not know are kept. Two strategies (param `strategy`):
//!
//! - `single-user` (default): one user, whose password changes in `set`;
//!   the old password stops working there. Without `admin_secret` the user
//!   changes its own, logged in with the current version (AWS's template).
//!   With `admin_secret`, the admin changes it (as OpenBao's static roles
//!   do): the user needs no right to change its own password, a password
//!   changed outside tumbler is repaired by the next rotation, and `set`
//!   runs on the host's pooled admin session instead of a new login.
//! - `alternating-users`: two users, `NAME` and `NAME_clone`. Each rotation
//!   changes the one not in use, logged in as the admin secret named in
//!   `admin_secret` (granted under `grants.secrets`; the host fills in its
//!   credentials, so they never enter the plugin), creating the clone with
//!   the same privileges when it does not exist yet. The new value switches
//!   username and password together, and the previous user keeps working
//!   until the next rotation, so clients holding the previous value are
//!   never cut off mid-flight.
//!
//! Logins always go through `SecretRef`s (current, pending, the admin
//! secret): no password but the new one enters the plugin, and that one
//! reaches the database only in the form the engine stores (SCRAM verifier,
//! password hash), never as plaintext in a statement.

use serde::Deserialize;
use serde::de::DeserializeOwned;
use serde_json::{Map, Value, json};

use crate::database_secret::DatabaseSecret;
use crate::password::{PasswordOptions, generate_password};
use crate::sql::{ConnectOptions, Connection, Credentials, Engine, TlsMode};
use crate::{ErrorKind, SecretRef, StepError, StepInput, Version, log};

/// Appended to the user's name to make the second user of the
/// alternating-users strategy (AWS's name for it).
pub const CLONE_SUFFIX: &str = "_clone";

/// Characters left out of generated passwords unless `password` says
/// otherwise: those AWS's database rotation templates exclude, because
/// connection strings and shells trip on them.
pub const DEFAULT_EXCLUDED_CHARACTERS: &str = "/@\"'\\";

/// What an engine must provide: the few statements that differ between
/// databases. Every method runs on a connection the module opened and
/// must be safe to run again (a step may be retried after any of them).
pub trait PasswordDatabase {
    /// The engine this rotator speaks; a secret of another engine is refused.
    const ENGINE: Engine;
    /// The longest user name the server keeps whole, in bytes, so the
    /// clone's name is checked before the server truncates it.
    const MAX_USERNAME_BYTES: usize;
    /// The database to log in to when the secret names none.
    const DEFAULT_DATABASE: Option<&'static str>;

    /// Parameters of this engine only, next to the common ones.
    type Params: DeserializeOwned;

    /// JSON Schema `properties` of [`Self::Params`].
    fn params_schema() -> Map<String, Value>;

    /// Gives the logged-in user `username` the password `password`
    /// (single-user: the user changes its own).
    fn set_own_password(
        connection: &Connection,
        params: &Self::Params,
        username: &str,
        password: &str,
    ) -> Result<(), StepError>;

    /// As an admin: gives `username` the password `password`.
    fn set_password(
        connection: &Connection,
        params: &Self::Params,
        username: &str,
        password: &str,
    ) -> Result<(), StepError>;

    /// Whether the user `username` exists.
    fn user_exists(connection: &Connection, params: &Self::Params, username: &str) -> Result<bool, StepError>;

    /// As an admin: makes `username` exist with the privileges of
    /// `template` and the password `password`. Runs in every
    /// alternating-users `set`, so it must also finish what an interrupted
    /// earlier run left half done.
    fn provision_user(
        connection: &Connection,
        params: &Self::Params,
        username: &str,
        template: &str,
        password: &str,
    ) -> Result<(), StepError>;
}

/// Param `strategy`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Strategy {
    #[default]
    SingleUser,
    AlternatingUsers,
}

/// Param `tls`: how the host's connection to the database is secured.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Tls {
    Disable,
    Require,
    #[default]
    VerifyFull,
}

impl From<Tls> for TlsMode {
    fn from(tls: Tls) -> Self {
        match tls {
            Tls::Disable => TlsMode::Disable,
            Tls::Require => TlsMode::Require,
            Tls::VerifyFull => TlsMode::VerifyFull,
        }
    }
}

/// The rotation's parameters: the common ones and the engine's.
#[derive(Debug, Deserialize)]
pub struct DatabaseParams<E> {
    #[serde(default)]
    pub strategy: Strategy,
    /// The secret holding the admin's credentials: required by
    /// alternating-users; with single-user, the admin sets the password.
    #[serde(default)]
    pub admin_secret: Option<String>,
    /// Rules for new passwords (AWS GetRandomPassword's options).
    #[serde(default = "default_password_options")]
    pub password: PasswordOptions,
    #[serde(default)]
    pub tls: Tls,
    #[serde(flatten)]
    pub engine: E,
}

fn default_password_options() -> PasswordOptions {
    PasswordOptions { exclude_characters: DEFAULT_EXCLUDED_CHARACTERS.into(), ..PasswordOptions::default() }
}

impl<E: DeserializeOwned> DatabaseParams<E> {
    /// Parses the step's params; alternating-users without an admin secret
    /// is a fatal error.
    pub fn of(input: &StepInput) -> Result<Self, StepError> {
        let params: Self = input.params()?;
        if params.strategy == Strategy::AlternatingUsers && params.admin_secret.is_none() {
            return Err(StepError::fatal(
                "strategy alternating-users needs `admin_secret`: the name of a granted secret \
                 holding an admin's username and password",
            ));
        }
        Ok(params)
    }

    /// The admin's credentials (checked present by [`Self::of`]).
    fn admin(&self) -> Result<SecretRef, StepError> {
        self.admin_secret.clone().map(SecretRef::Named).ok_or_else(|| StepError::fatal("`admin_secret` is not set"))
    }
}

/// The JSON Schema of a database rotator's params: the common ones plus
/// `engine_properties` ([`PasswordDatabase::params_schema`]).
pub fn params_schema(engine_properties: Map<String, Value>) -> String {
    let mut password = PasswordOptions::json_schema();
    password["description"] = json!(format!(
        "rules for new passwords, AWS GetRandomPassword's options \
         (default: 32 characters, excluding {DEFAULT_EXCLUDED_CHARACTERS})"
    ));
    let mut properties = json!({
        "strategy": {
            "type": "string",
            "enum": ["single-user", "alternating-users"],
            "description": "single-user (default): one user, whose password changes (by itself, or by \
                            the admin when admin_secret is set); alternating-users: the admin changes \
                            NAME or NAME_clone in turn"
        },
        "admin_secret": {
            "type": "string",
            "minLength": 1,
            "description": "a granted secret with an admin's username and password: required by \
                            alternating-users; with single-user, the admin sets the user's password"
        },
        "password": password,
        "tls": {
            "type": "string",
            "enum": ["disable", "require", "verify-full"],
            "description": "TLS to the database (default verify-full)"
        }
    });
    if let Some(common) = properties.as_object_mut() {
        common.extend(engine_properties);
    }
    json!({"type": "object", "additionalProperties": false, "properties": properties}).to_string()
}

/// `create`: the current value with a new password (and, alternating
/// users, the other user's name).
pub fn create<D: PasswordDatabase>(input: &StepInput) -> Result<String, StepError> {
    let params = DatabaseParams::<D::Params>::of(input)?;
    let mut secret = secret_of::<D>(input.current_version()?)?;
    secret.password = generate_password(&params.password)?;
    if params.strategy == Strategy::AlternatingUsers {
        secret.username = other_user(&secret.username, D::MAX_USERNAME_BYTES)?;
    }
    Ok(secret.to_json())
}

/// `set`: the database accepts the pending value. Repeatable: a `set`
/// whose first run already changed the password finds the pending login
/// working and changes nothing (single-user: checked only when the current
/// password is refused, so a first run logs in once, not twice; with an
/// admin, setting the same password again is the check).
pub fn set<D: PasswordDatabase>(input: &StepInput) -> Result<(), StepError> {
    let params = DatabaseParams::<D::Params>::of(input)?;
    let pending = secret_of::<D>(input.pending_version()?)?;
    let current = secret_of::<D>(input.current_version()?)?;
    let already = || {
        log::info(format_args!("set: user {:?} already logs in with the pending password", pending.username));
        Ok(())
    };
    match params.strategy {
        Strategy::SingleUser => {
            if current.username != pending.username {
                return Err(StepError::fatal(format!(
                    "single-user rotation, but the pending value is for user {:?} and the current \
                     one for {:?} (was the strategy changed during a rotation?)",
                    pending.username, current.username
                )));
            }
            if let Some(admin) = &params.admin_secret {
                let connection = connect::<D>(&pending, &params, SecretRef::Named(admin.clone()))?;
                D::set_password(&connection, &params.engine, &pending.username, &pending.password)?;
                log::info(format_args!("set: the admin gave user {:?} the pending password", pending.username));
                return Ok(());
            }
            let Some(connection) = connect_unless_refused::<D>(&current, &params, SecretRef::Current)? else {
                if logs_in::<D>(&pending, &params, SecretRef::Pending)? {
                    return already();
                }
                // Retried, as any refused login: the database may be mid-failover.
                return Err(StepError::Retryable(format!(
                    "auth: the database refuses both the current and the pending password of user {:?}; \
                     if its password was changed outside tumbler, store the one it accepts as a new current \
                     version of the secret, or set `admin_secret` so that an admin sets the password",
                    current.username
                )));
            };
            D::set_own_password(&connection, &params.engine, &pending.username, &pending.password)?;
        }
        Strategy::AlternatingUsers => {
            if logs_in::<D>(&pending, &params, SecretRef::Pending)? {
                return already();
            }
            let connection = connect::<D>(&pending, &params, params.admin()?)?;
            D::provision_user(&connection, &params.engine, &pending.username, &current.username, &pending.password)?;
        }
    }
    log::info(format_args!("set: user {:?} now has the pending password", pending.username));
    Ok(())
}

/// `test`: the pending value logs in and runs a query.
pub fn test<D: PasswordDatabase>(input: &StepInput) -> Result<(), StepError> {
    let params = DatabaseParams::<D::Params>::of(input)?;
    let pending = secret_of::<D>(input.pending_version()?)?;
    let connection = connect::<D>(&pending, &params, SecretRef::Pending)?;
    connection.query("SELECT 1", &[])?;
    log::info(format_args!("test: user {:?} logs in with the pending password", pending.username));
    Ok(())
}

/// `finish`: nothing in a normal rotation (single-user: the old password
/// stopped working in `set`; alternating-users: the previous user keeps
/// working until the next rotation changes it). In an emergency, the
/// alternating strategy's other user gets a password nobody holds.
pub fn finish<D: PasswordDatabase>(input: &StepInput) -> Result<(), StepError> {
    let params = DatabaseParams::<D::Params>::of(input)?;
    if !input.emergency {
        log::info("finish: nothing to remove; older passwords are replaced by later rotations");
        return Ok(());
    }
    if params.strategy == Strategy::SingleUser {
        log::info("finish: the only user's old password stopped working in set");
        return Ok(());
    }
    let live = input
        .pending
        .as_ref()
        .or(input.current.as_ref())
        .ok_or_else(|| StepError::fatal("finish was given neither a pending nor a current version"))?;
    let live = secret_of::<D>(live)?;
    let (others, skipped) = other_users(input, &live.username);
    for id in skipped {
        log::warn(format_args!("finish: version {id} is not a database secret; skipped"));
    }
    if others.is_empty() {
        log::info("finish: no other user to lock out");
        return Ok(());
    }
    let connection = connect::<D>(&live, &params, params.admin()?)?;
    for username in others {
        if !D::user_exists(&connection, &params.engine, &username)? {
            continue;
        }
        // Long and never stored: the user is unusable until a later
        // rotation gives it a password again.
        let unknown = generate_password(&PasswordOptions::alphanumeric(64))?;
        D::set_password(&connection, &params.engine, &username, &unknown)?;
        log::warn(format_args!("finish: emergency: user {username:?} got a password nobody holds"));
    }
    Ok(())
}

/// A version's value as a database secret of this rotator's engine.
fn secret_of<D: PasswordDatabase>(version: &Version) -> Result<DatabaseSecret, StepError> {
    let secret = DatabaseSecret::parse(&version.value)?;
    if secret.sql_engine()? != D::ENGINE {
        return Err(StepError::fatal(format!(
            "version {} is a secret for engine {:?}; this rotator handles {}",
            version.id,
            secret.engine,
            engine_name(D::ENGINE)
        )));
    }
    Ok(secret)
}

fn engine_name(engine: Engine) -> &'static str {
    match engine {
        Engine::Postgres => "postgres",
        Engine::Mysql => "mysql",
    }
}

/// A connection to the database of `secret`, logged in as `who`.
fn connect<D: PasswordDatabase>(
    secret: &DatabaseSecret,
    params: &DatabaseParams<D::Params>,
    who: SecretRef,
) -> Result<Connection, StepError> {
    Ok(Connection::connect(&connect_options::<D>(secret, params, who)?)?)
}

fn connect_options<D: PasswordDatabase>(
    secret: &DatabaseSecret,
    params: &DatabaseParams<D::Params>,
    who: SecretRef,
) -> Result<ConnectOptions, StepError> {
    let mut options = secret.connect_options(Credentials::FromSecret(who))?.tls(params.tls.into());
    if options.database.is_none() {
        options.database = D::DEFAULT_DATABASE.map(str::to_owned);
    }
    Ok(options)
}

/// Whether `who` can log in: `false` when the database refuses the
/// credentials; other failures (unreachable, denied) are errors.
fn logs_in<D: PasswordDatabase>(
    secret: &DatabaseSecret,
    params: &DatabaseParams<D::Params>,
    who: SecretRef,
) -> Result<bool, StepError> {
    Ok(connect_unless_refused::<D>(secret, params, who)?.is_some())
}

/// A connection logged in as `who`, or `None` when the database refuses
/// the credentials; other failures (unreachable, denied) are errors.
fn connect_unless_refused<D: PasswordDatabase>(
    secret: &DatabaseSecret,
    params: &DatabaseParams<D::Params>,
    who: SecretRef,
) -> Result<Option<Connection>, StepError> {
    match Connection::connect(&connect_options::<D>(secret, params, who)?) {
        Ok(connection) => Ok(Some(connection)),
        Err(e) if e.kind == ErrorKind::Auth => Ok(None),
        Err(e) => Err(e.into()),
    }
}

/// The alternating partner of `username`: `NAME` ⇄ `NAME_clone`.
pub fn other_user(username: &str, max_bytes: usize) -> Result<String, StepError> {
    if let Some(base) = username.strip_suffix(CLONE_SUFFIX)
        && !base.is_empty()
    {
        return Ok(base.to_owned());
    }
    let clone = format!("{username}{CLONE_SUFFIX}");
    if clone.len() > max_bytes {
        return Err(StepError::fatal(format!(
            "user {username:?} is too long for alternating users: {clone:?} would pass the \
             server's limit of {max_bytes} bytes"
        )));
    }
    Ok(clone)
}

/// The users of the versions an emergency invalidates (every stale version
/// and the previous one), but for `live`, each once; and the ids of
/// versions of another shape, which hold no user this rotator manages.
fn other_users<'a>(input: &'a StepInput, live: &str) -> (Vec<String>, Vec<&'a str>) {
    let (mut users, mut skipped): (Vec<String>, Vec<&str>) = (Vec::new(), Vec::new());
    let versions = input.stale_versions().into_iter().chain(input.previous.as_ref());
    for version in versions {
        match DatabaseSecret::parse(&version.value) {
            Ok(secret) if secret.username != live && !users.contains(&secret.username) => users.push(secret.username),
            Ok(_) => {}
            Err(_) => skipped.push(&version.id),
        }
    }
    (users, skipped)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn users_alternate_between_name_and_clone() {
        assert_eq!(other_user("app", 63).unwrap(), "app_clone");
        assert_eq!(other_user("app_clone", 63).unwrap(), "app");
        assert_eq!(other_user("_clone", 63).unwrap(), "_clone_clone");
        assert_eq!(other_user("My \"App\"", 63).unwrap(), "My \"App\"_clone");
        let long = "x".repeat(60);
        let error = other_user(&long, 63).unwrap_err();
        assert!(!error.is_retryable() && error.message().contains("63 bytes"));
    }

    #[derive(Debug, Default, Deserialize)]
    #[serde(default)]
    struct EngineParams {
        user_host: Option<String>,
    }

    fn input(params: Value) -> StepInput {
        StepInput {
            secret_name: "db/app".into(),
            params: params.to_string(),
            current: None,
            pending: None,
            previous: None,
            fell_off: None,
            emergency: false,
            older: Vec::new(),
        }
    }

    #[test]
    fn params_default_to_single_user_verify_full_and_aws_exclusions() {
        let params = DatabaseParams::<EngineParams>::of(&input(json!({}))).unwrap();
        assert_eq!(params.strategy, Strategy::SingleUser);
        assert_eq!(params.tls, Tls::VerifyFull);
        assert_eq!(params.password.exclude_characters, DEFAULT_EXCLUDED_CHARACTERS);
        assert_eq!(params.engine.user_host, None);

        let params = DatabaseParams::<EngineParams>::of(&input(json!({
            "strategy": "alternating-users", "admin_secret": "db/admin", "tls": "disable",
            "password": {"length": 12}, "user_host": "10.%"
        })))
        .unwrap();
        assert_eq!(params.strategy, Strategy::AlternatingUsers);
        assert_eq!(params.password.length, 12);
        assert_eq!(params.password.exclude_characters, "");
        assert_eq!(params.engine.user_host.as_deref(), Some("10.%"));
    }

    #[test]
    fn alternating_users_without_an_admin_secret_is_fatal() {
        let error = DatabaseParams::<EngineParams>::of(&input(json!({"strategy": "alternating-users"}))).unwrap_err();
        assert!(!error.is_retryable() && error.message().contains("admin_secret"));
        assert!(DatabaseParams::<EngineParams>::of(&input(json!({"strategy": "both"}))).is_err());
        assert!(DatabaseParams::<EngineParams>::of(&input(json!({"password": {"lenght": 3}}))).is_err());
    }

    #[test]
    fn the_schema_holds_common_and_engine_params() {
        let mut engine = Map::new();
        engine.insert("user_host".into(), json!({"type": "string"}));
        let schema: Value = serde_json::from_str(&params_schema(engine)).unwrap();
        let properties = schema["properties"].as_object().unwrap();
        for name in ["strategy", "admin_secret", "password", "tls", "user_host"] {
            assert!(properties.contains_key(name), "{name}");
        }
        assert_eq!(schema["additionalProperties"], false);
    }

    fn version(id: &str, username: &str) -> Version {
        Version {
            id: id.into(),
            value: json!({"engine": "postgres", "host": "h", "username": username, "password": "p"}).to_string(),
        }
    }

    #[test]
    fn an_emergency_locks_out_every_other_user_once() {
        let mut input = input(json!({}));
        input.current = Some(version("v4", "app"));
        input.pending = Some(version("v4", "app"));
        input.previous = Some(version("v3", "app_clone"));
        input.emergency = true;
        input.older = vec![
            version("v3", "app_clone"),
            version("v2", "app"),
            version("v1", "app_clone"),
            Version { id: "v0".into(), value: "plain".into() },
        ];
        let (users, skipped) = other_users(&input, "app");
        assert_eq!((users, skipped), (vec!["app_clone".to_owned()], vec!["v0"]));
    }
}
