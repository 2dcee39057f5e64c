//! The built-in rotators (`postgres`, `mysql`, `ssh`, `apikey`) against
//! real servers each test starts on loopback ports of its own, in two
//! layers:
//!
//! - step by step, in-process: [`Rotation`] runs a plugin's `create`,
//!   `set`, `test` and `finish` in the runtime with the versions and labels
//!   the engine would pass, so each step's effect, a repeated step and an
//!   emergency `finish` are checked one at a time;
//! - end to end, through the real binary: `PUT NAME:rotation`, `POST
//!   NAME:rotate`, then what a user would check (the new credential works,
//!   the old one does not, the server log holds no password).

use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use std::path::PathBuf;
use std::process::Command;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};
use tumbler::crypto::MasterKey;
use tumbler::model::{SecretName, SecretValue};
use tumbler::plugins::bindings::tumbler::rotator::types::{StepInput, Version};
use tumbler::plugins::cache::ComponentCache;
use tumbler::plugins::capabilities::GrantsSpec;
use tumbler::plugins::{CallContext, LoadedPlugin, Runtime, RuntimeLimits, Step, StepOutcome};
use tumbler::store::Store;
use tumbler::store::secrets::{self as store_secrets, NewSecret};
use tumbler_tests::apikey_provider::ApiKeyProvider;
use tumbler_tests::servers::{Mariadb, Postgres, Sshd, ssh_keypair};
use tumbler_tests::{Client, Instance, secret_path, workspace_root};
use zeroize::Zeroizing;

// ---------------------------------------------------------------------------
// In-process harness
// ---------------------------------------------------------------------------

/// One runtime for the tests of this binary; its compiled cache is shared,
/// so a plugin compiles once however many tests load it.
fn runtime() -> &'static Arc<Runtime> {
    static RUNTIME: OnceLock<Arc<Runtime>> = OnceLock::new();
    RUNTIME.get_or_init(|| {
        let cache_dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("rotators-plugin-cache");
        let cache = ComponentCache::new(cache_dir, Zeroizing::new([5; 32])).expect("cache dir");
        Runtime::new(RuntimeLimits::default(), cache).expect("runtime")
    })
}

/// Builds the built-in rotator `name` (a no-op when it is up to date) and
/// loads it.
async fn load(name: &str) -> LoadedPlugin {
    let root = workspace_root();
    let status = tumbler_tests::cargo()
        .args(["build", "--release", "--target", "wasm32-wasip2", "-p", name, "--manifest-path"])
        .arg(root.join("plugins/Cargo.toml"))
        // The component lands in plugins/target, whatever this build uses.
        .env_remove("CARGO_TARGET_DIR")
        .status()
        .expect("run cargo to build the plugins");
    assert!(status.success(), "building the {name} plugin failed");
    let path = root.join("plugins/target/wasm32-wasip2/release").join(format!("{name}.wasm"));
    let wasm = Arc::new(std::fs::read(&path).expect("read the component"));
    let sha256: String = Sha256::digest(wasm.as_slice()).iter().map(|b| format!("{b:02x}")).collect();
    runtime().load(&sha256, wasm).await.unwrap_or_else(|e| panic!("load {name}: {e}"))
}

/// A store holding secrets a rotation may be granted (an admin secret, a
/// provider's credentials), for `from-secret named` and `secrets::get`.
struct Granted {
    store: Store,
    _dir: tempfile::TempDir,
}

impl Granted {
    async fn with(secrets: &[(&str, &str)]) -> Granted {
        let dir = tempfile::tempdir().expect("temp dir");
        let store = Store::create(dir.path(), MasterKey::generate()).expect("create a store");
        for (name, value) in secrets {
            let (name, value) = (name.to_string(), value.to_string());
            store
                .write(move |tx, keys| {
                    let new = NewSecret::new(SecretName::parse(&name)?, SecretValue::parse(Zeroizing::new(value))?);
                    store_secrets::create(tx, keys, new)
                })
                .await
                .expect("store a granted secret");
        }
        Granted { store, _dir: dir }
    }
}

/// A secret's versions and labels as the engine keeps them, and the
/// rotation config that drives a plugin's steps over them.
struct Rotation {
    plugin: LoadedPlugin,
    plugin_name: String,
    secret_name: String,
    params: Value,
    grants: Value,
    store: Option<Store>,
    /// Every version, oldest first.
    versions: Vec<Version>,
    current: usize,
    previous: Option<usize>,
}

/// How a rotation ended early: the step and its error.
#[derive(Debug)]
struct Failed {
    step: Step,
    message: String,
    log: String,
}

impl Rotation {
    async fn new(plugin: &str, initial: &str, params: Value, grants: Value) -> Rotation {
        Rotation {
            plugin: load(plugin).await,
            plugin_name: plugin.into(),
            secret_name: "test/rotated".into(),
            params,
            grants,
            store: None,
            versions: vec![Version { id: "v0".into(), value: initial.into() }],
            current: 0,
            previous: None,
        }
    }

    fn granting(mut self, granted: &Granted) -> Rotation {
        self.store = Some(granted.store.clone());
        self
    }

    fn current(&self) -> &str {
        &self.versions[self.current].value
    }

    fn current_json(&self) -> Value {
        serde_json::from_str(self.current()).expect("the current value is JSON")
    }

    fn previous_json(&self) -> Option<Value> {
        self.previous.map(|i| serde_json::from_str(&self.versions[i].value).expect("JSON"))
    }

    /// The input the engine gives `create`, `set` and `test`.
    fn input(&self, pending: Option<&Version>) -> StepInput {
        StepInput {
            secret_name: self.secret_name.clone(),
            params: self.params.to_string(),
            current: Some(self.versions[self.current].clone()),
            pending: pending.cloned(),
            previous: self.previous.map(|i| self.versions[i].clone()),
            fell_off: None,
            emergency: false,
            older: Vec::new(),
        }
    }

    /// Runs one step, the host filling `from-secret` credentials from the
    /// input's current and pending versions, as the engine does.
    async fn step(&self, step: Step, input: StepInput) -> StepOutcome {
        let spec: GrantsSpec = serde_json::from_value(self.grants.clone()).expect("grants in API form");
        let grants = spec.parse().unwrap_or_else(|e| panic!("grants: {}", e.message()));
        let shared = |v: &Option<Version>| v.as_ref().map(|v| Arc::new(Zeroizing::new(v.value.clone())));
        let ctx = CallContext {
            plugin: self.plugin_name.clone(),
            secret: SecretName::parse(&self.secret_name).ok(),
            grants: Arc::new(grants),
            store: self.store.clone(),
            current_value: shared(&input.current),
            pending_value: shared(&input.pending),
            ..CallContext::default()
        };
        runtime().run_step(&self.plugin, step, input, ctx).await
    }

    /// Runs a step that must succeed; returns its log.
    async fn step_ok(&self, step: Step, input: StepInput) -> String {
        let outcome = self.step(step, input).await;
        if let Err(e) = &outcome.result {
            panic!("{} failed: {}\nlog:\n{}", step.as_str(), e.message, outcome.log);
        }
        outcome.log
    }

    /// `create`: the new value, not yet stored.
    async fn create(&self) -> String {
        match self.try_create().await {
            Ok(version) => version.value,
            Err(failed) => panic!("create failed: {}\nlog:\n{}", failed.message, failed.log),
        }
    }

    /// `create` as the engine runs it: the value becomes the pending version.
    async fn try_create(&self) -> Result<Version, Failed> {
        let outcome = self.step(Step::Create, self.input(None)).await;
        match outcome.result {
            Ok(Some(value)) => Ok(Version { id: format!("v{}", self.versions.len()), value: value.to_string() }),
            Ok(None) => panic!("create returned no value"),
            Err(e) => Err(Failed { step: Step::Create, message: e.message, log: outcome.log }),
        }
    }

    /// A whole rotation as the engine runs it: `create`, `set`, `test`, the
    /// label move, `finish`. A failed `set` or `test` drops the pending
    /// version and leaves the labels alone.
    async fn rotate(&mut self) -> Result<(), Failed> {
        self.rotate_with(false).await
    }

    /// A break-glass rotation: `finish` is told to invalidate every older
    /// credential and given them all.
    async fn rotate_emergency(&mut self) -> Result<(), Failed> {
        self.rotate_with(true).await
    }

    async fn rotate_with(&mut self, emergency: bool) -> Result<(), Failed> {
        let pending = self.try_create().await?;
        for step in [Step::Set, Step::Test] {
            let outcome = self.step(step, self.input(Some(&pending))).await;
            if let Err(e) = outcome.result {
                return Err(Failed { step, message: e.message, log: outcome.log });
            }
        }
        self.promote_and_finish(pending, emergency).await
    }

    /// The label move (`pending` becomes current, current previous, and the
    /// old previous falls off), then `finish`.
    async fn promote_and_finish(&mut self, pending: Version, emergency: bool) -> Result<(), Failed> {
        self.versions.push(pending.clone());
        let old_previous = self.previous;
        self.previous = Some(self.current);
        self.current = self.versions.len() - 1;
        let mut input = self.input(Some(&pending));
        input.fell_off = old_previous.map(|i| self.versions[i].clone());
        input.emergency = emergency;
        if emergency {
            input.older = self.versions[..self.current].iter().rev().cloned().collect();
        }
        let outcome = self.step(Step::Finish, input).await;
        match outcome.result {
            Ok(_) => Ok(()),
            Err(e) => Err(Failed { step: Step::Finish, message: e.message, log: outcome.log }),
        }
    }

    /// A rotation that must succeed.
    async fn rotate_ok(&mut self) {
        if let Err(failed) = self.rotate().await {
            panic!("rotation failed at {}: {}\nlog:\n{}", failed.step.as_str(), failed.message, failed.log);
        }
    }
}

/// A user name that breaks naive quoting: capitals, both quotes, a space,
/// a backslash and a statement terminator.
const AWKWARD_USER: &str = "App \"Svc\" o'Neil\\; x";

/// Password rules that use every printable character, space included.
fn awkward_password_rules() -> Value {
    json!({"length": 40, "exclude_characters": "", "include_space": true})
}

// ---------------------------------------------------------------------------
// postgres, step by step
// ---------------------------------------------------------------------------

fn pg_secret(pg: &Postgres, username: &str, password: &str) -> String {
    json!({
        "engine": "postgres", "host": "127.0.0.1", "port": pg.port, "username": username,
        "password": password, "dbname": "postgres", "masterarn": "arn:kept:as:found"
    })
    .to_string()
}

fn pg_grants(pg: &Postgres) -> Value {
    json!({"sql": [pg.addr()]})
}

/// Whether `user` logs in to `pg` with `password`.
fn pg_logs_in(pg: &Postgres, user: &str, password: &str) -> bool {
    pg.psql_as(user, password, "postgres", "SELECT 1").success()
}

fn pg_create_role(pg: &Postgres, user: &str, password: &str) {
    let ident = format!("\"{}\"", user.replace('"', "\"\""));
    let literal = format!("'{}'", password.replace('\'', "''"));
    pg.psql(&format!("CREATE ROLE {ident} LOGIN PASSWORD {literal}"));
}

#[tokio::test]
async fn postgres_single_user_steps_change_the_password_and_the_old_one_is_refused() {
    let pg = Postgres::start_with(&["log_statement=all"]);
    pg_create_role(&pg, AWKWARD_USER, "initial pw");
    let params = json!({"tls": "disable", "password": awkward_password_rules()});
    let mut rotation =
        Rotation::new("postgres", &pg_secret(&pg, AWKWARD_USER, "initial pw"), params, pg_grants(&pg)).await;

    let value: Value = serde_json::from_str(&rotation.create().await).unwrap();
    assert_eq!(value["username"], AWKWARD_USER);
    assert_eq!(value["masterarn"], "arn:kept:as:found", "fields the rotator does not know are kept");
    let password = value["password"].as_str().unwrap();
    assert_eq!(password.chars().count(), 40);
    assert!(!pg_logs_in(&pg, AWKWARD_USER, password), "create touches no target");

    // `set` twice (a retry after the first one worked), then `test`.
    let pending = Version { id: "v1".into(), value: value.to_string() };
    rotation.step_ok(Step::Set, rotation.input(Some(&pending))).await;
    let again = rotation.step_ok(Step::Set, rotation.input(Some(&pending))).await;
    assert!(again.contains("already logs in"), "{again}");
    rotation.step_ok(Step::Test, rotation.input(Some(&pending))).await;
    assert!(pg_logs_in(&pg, AWKWARD_USER, password));
    assert!(!pg_logs_in(&pg, AWKWARD_USER, "initial pw"));

    // `create` given the pending version returns it instead of a new one.
    let outcome = rotation.step(Step::Create, rotation.input(Some(&pending))).await;
    assert_eq!(outcome.result.unwrap().unwrap().as_str(), pending.value);
    rotation.promote_and_finish(pending, false).await.expect("finish");

    // Two whole rotations: only the newest password works.
    rotation.rotate_ok().await;
    let first = rotation.current_json()["password"].as_str().unwrap().to_owned();
    rotation.rotate_ok().await;
    let second = rotation.current_json()["password"].as_str().unwrap().to_owned();
    assert!(pg_logs_in(&pg, AWKWARD_USER, &second));
    assert!(!pg_logs_in(&pg, AWKWARD_USER, &first));

    // What reached the server: verifiers, never a password.
    let log = pg.log();
    assert!(log.contains("PASSWORD 'SCRAM-SHA-256$4096:"), "the statements were logged:\n{log}");
    for secret in [password, first.as_str(), second.as_str()] {
        assert!(!log.contains(secret), "a password reached the server log");
    }
}

#[tokio::test]
async fn postgres_alternating_users_steps_switch_users_and_keep_the_previous_one_working() {
    let pg = Postgres::start();
    let admin = pg_secret(&pg, &pg.superuser, &pg.password);
    let granted = Granted::with(&[("db/admin", &admin)]).await;
    pg_create_role(&pg, AWKWARD_USER, "initial pw");
    pg.psql("CREATE TABLE orders (id int); INSERT INTO orders VALUES (7)");
    pg.psql(&format!("GRANT SELECT ON orders TO \"{}\"", AWKWARD_USER.replace('"', "\"\"")));
    let params = json!({"strategy": "alternating-users", "admin_secret": "db/admin", "tls": "disable",
                        "password": awkward_password_rules()});
    let grants = json!({"sql": [pg.addr()], "secrets": ["db/admin"]});
    let initial = pg_secret(&pg, AWKWARD_USER, "initial pw");
    let mut rotation = Rotation::new("postgres", &initial, params, grants).await.granting(&granted);
    let clone = format!("{AWKWARD_USER}_clone");

    // First rotation: the clone is created with the user's privileges.
    rotation.rotate_ok().await;
    let now = rotation.current_json();
    assert_eq!(now["username"], clone.as_str());
    let clone_pw = now["password"].as_str().unwrap().to_owned();
    let reads = pg.psql_as(&clone, &clone_pw, "postgres", "SELECT id FROM orders");
    assert_eq!(reads.stdout.trim(), "7", "the clone has the user's privileges: {reads:?}");
    assert!(pg_logs_in(&pg, AWKWARD_USER, "initial pw"), "the previous user keeps working");

    // Second: back to the user, with a new password; the clone still works.
    rotation.rotate_ok().await;
    let now = rotation.current_json();
    assert_eq!(now["username"], AWKWARD_USER);
    let user_pw = now["password"].as_str().unwrap().to_owned();
    assert!(pg_logs_in(&pg, AWKWARD_USER, &user_pw));
    assert!(!pg_logs_in(&pg, AWKWARD_USER, "initial pw"));
    assert!(pg_logs_in(&pg, &clone, &clone_pw), "the previous value keeps working until the next rotation");

    // Third: the clone's old password goes.
    rotation.rotate_ok().await;
    assert!(!pg_logs_in(&pg, &clone, &clone_pw));
    assert!(pg_logs_in(&pg, AWKWARD_USER, &user_pw));

    // Break glass: the previous user is locked out as well.
    rotation.rotate_emergency().await.expect("emergency rotation");
    let now = rotation.current_json();
    assert_eq!(now["username"], AWKWARD_USER);
    assert!(pg_logs_in(&pg, AWKWARD_USER, now["password"].as_str().unwrap()));
    let previous = rotation.previous_json().unwrap();
    assert_eq!(previous["username"], clone.as_str());
    assert!(!pg_logs_in(&pg, &clone, previous["password"].as_str().unwrap()), "emergency: no older credential works");
    assert!(!pg_logs_in(&pg, AWKWARD_USER, &user_pw));
}

#[tokio::test]
async fn postgres_refusals_fail_the_step_and_leave_current_working() {
    let pg = Postgres::start();
    pg_create_role(&pg, "app", "initial pw");
    let initial = pg_secret(&pg, "app", "initial pw");

    // Not granted: a fatal error naming the grant.
    let mut rotation = Rotation::new("postgres", &initial, json!({"tls": "disable"}), json!({})).await;
    let failed = rotation.rotate().await.unwrap_err();
    assert_eq!(failed.step, Step::Set);
    assert!(failed.message.contains("grants.sql"), "{}", failed.message);

    // Alternating users without an admin secret: refused before any change.
    rotation.grants = pg_grants(&pg);
    rotation.params = json!({"tls": "disable", "strategy": "alternating-users"});
    let failed = rotation.rotate().await.unwrap_err();
    assert_eq!(failed.step, Step::Create);
    assert!(failed.message.contains("admin_secret"), "{}", failed.message);

    // A secret of another engine.
    let mysql_value = initial.replace("\"postgres\"", "\"mysql\"");
    let other = Rotation::new("postgres", &mysql_value, json!({"tls": "disable"}), pg_grants(&pg)).await;
    let outcome = other.step(Step::Create, other.input(None)).await;
    assert!(outcome.result.unwrap_err().message.contains("handles postgres"));
    assert!(pg_logs_in(&pg, "app", "initial pw"));
}

#[tokio::test]
async fn postgres_tls_require_reaches_a_tls_server() {
    let pg = Postgres::start_with_tls();
    pg_create_role(&pg, "app", "initial pw");
    let mut rotation =
        Rotation::new("postgres", &pg_secret(&pg, "app", "initial pw"), json!({"tls": "require"}), pg_grants(&pg))
            .await;
    rotation.rotate_ok().await;
    let now = rotation.current_json();
    assert!(pg_logs_in(&pg, "app", now["password"].as_str().unwrap()));
    // verify-full (the default) checks the self-signed certificate: refused.
    rotation.params = json!({});
    let failed = rotation.rotate().await.unwrap_err();
    assert_eq!(failed.step, Step::Set);
    assert!(pg_logs_in(&pg, "app", now["password"].as_str().unwrap()));
}

// ---------------------------------------------------------------------------
// End to end, through the real binary
// ---------------------------------------------------------------------------

/// Retries come quickly in tests.
const SERVE_ARGS: &[&str] = &["--rotation-retry-base", "200ms", "--rotation-retry-max", "1s"];

fn serve() -> Instance {
    let mut instance = Instance::init();
    instance.serve_with(SERVE_ARGS);
    instance
}

/// `PUT NAME:rotation` with a monthly schedule; asserts it is accepted.
async fn configure(client: &Client, secret: &str, plugin: &str, params: Value, grants: Value, max_attempts: u32) {
    let body = json!({"plugin": plugin, "schedule": "rate(30 days)", "params": params, "grants": grants,
                      "max_attempts": max_attempts});
    let reply = client.put(&format!("{}:rotation", secret_path(secret)), &body).await;
    assert_eq!(reply.0, 200, "rotation config of {secret}: {reply:?}");
}

/// `POST NAME:rotate`, then polls the rotation until it ends; returns its
/// record (status, attempts with their logs and errors, duration).
async fn rotate(client: &Client, secret: &str) -> Value {
    let reply = client.post(&format!("{}:rotate", secret_path(secret)), &json!({})).await;
    assert_eq!(reply.0, 202, "rotate {secret}: {reply:?}");
    let id = reply.1["rotation_id"].as_str().expect("rotation_id").to_owned();
    wait_rotation(client, &id).await
}

/// A rotation that must succeed; prints how long it took (the measured
/// time of one rotation, from the request to the end of `finish`).
async fn rotate_ok(client: &Client, secret: &str, plugin: &str) -> Value {
    let record = rotate(client, secret).await;
    assert_eq!(record["status"], "succeeded", "rotation of {secret}: {record:#}");
    let steps: Vec<String> = record["attempts"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|a| format!("{} {} ms", a["step"].as_str().unwrap_or("?"), a["duration_ms"]))
        .collect();
    eprintln!("timing: one {plugin} rotation took {} ms ({})", record["duration_ms"], steps.join(", "));
    record
}

async fn current_json(client: &Client, secret: &str) -> Value {
    serde_json::from_str(&client.read_value(secret).await).expect("the value is JSON")
}

/// `(step, outcome)` of each attempt.
fn attempts(record: &Value) -> Vec<(String, String)> {
    record["attempts"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|a| (a["step"].as_str().unwrap_or("").to_owned(), a["outcome"].as_str().unwrap_or("").to_owned()))
        .collect()
}

/// A password from a value.
fn password_of(value: &Value) -> &str {
    value["password"].as_str().expect("a password")
}

#[tokio::test]
async fn postgres_single_user_rotates_through_the_cli_and_no_password_reaches_the_server_log() {
    let pg = Postgres::start_with(&["log_statement=all"]);
    pg_create_role(&pg, AWKWARD_USER, "initial pw");
    let instance = serve();
    let root = instance.root();
    root.create_secret("db/app", &pg_secret(&pg, AWKWARD_USER, "initial pw")).await;

    // The README's example, with this server's address.
    let rules = awkward_password_rules().to_string();
    instance
        .cli(
            [
                "rotation",
                "set",
                "db/app",
                "--plugin",
                "postgres",
                "--schedule",
                "rate(30 days)",
                "--param",
                "tls=disable",
                "--param",
                &format!("password={rules}"),
                "--grant",
                &format!("sql:{}", pg.addr()),
            ],
            None,
        )
        .assert_success();
    let mut passwords = vec!["initial pw".to_owned()];
    for _ in 0..2 {
        let started = Instant::now();
        instance.cli(["rotate", "db/app", "--wait"], None).assert_success();
        eprintln!("timing: one postgres rotation through `tumbler rotate --wait` took {:?}", started.elapsed());
        let value = current_json(&root, "db/app").await;
        assert_eq!(value["username"], AWKWARD_USER);
        assert_eq!(value["masterarn"], "arn:kept:as:found");
        let new = password_of(&value).to_owned();
        assert!(pg_logs_in(&pg, AWKWARD_USER, &new), "the new password works");
        let old = passwords.last().unwrap();
        assert!(!pg_logs_in(&pg, AWKWARD_USER, old), "the old password is refused");
        passwords.push(new);
    }
    rotate_ok(&root, "db/app", "postgres").await;
    passwords.push(password_of(&current_json(&root, "db/app").await).to_owned());

    let log = pg.log();
    assert!(log.contains("PASSWORD 'SCRAM-SHA-256$4096:"), "the statements were logged:\n{log}");
    for password in &passwords[1..] {
        assert!(!log.contains(password.as_str()), "a new password reached the server log");
    }
}

#[tokio::test]
async fn postgres_alternating_users_keep_the_previous_credential_working_until_the_next_rotation() {
    let pg = Postgres::start();
    pg_create_role(&pg, AWKWARD_USER, "initial pw");
    let instance = serve();
    let root = instance.root();
    root.create_secret("db/admin", &pg_secret(&pg, &pg.superuser, &pg.password)).await;
    root.create_secret("db/app", &pg_secret(&pg, AWKWARD_USER, "initial pw")).await;
    let params = json!({"strategy": "alternating-users", "admin_secret": "db/admin", "tls": "disable",
                        "password": awkward_password_rules()});
    configure(&root, "db/app", "postgres", params, json!({"sql": [pg.addr()], "secrets": ["db/admin"]}), 5).await;

    let mut previous = current_json(&root, "db/app").await;
    for round in 0..3 {
        rotate_ok(&root, "db/app", "postgres").await;
        let now = current_json(&root, "db/app").await;
        assert_ne!(now["username"], previous["username"], "round {round}: the users alternate");
        let user = now["username"].as_str().unwrap();
        assert!(pg_logs_in(&pg, user, password_of(&now)), "round {round}: the new credential works");
        let previous_user = previous["username"].as_str().unwrap();
        assert!(
            pg_logs_in(&pg, previous_user, password_of(&previous)),
            "round {round}: the previous credential keeps working"
        );
        previous = now;
    }
    // Three rotations in, the first value's password was replaced.
    assert!(!pg_logs_in(&pg, AWKWARD_USER, "initial pw"));
}

#[tokio::test]
async fn postgres_down_during_set_retries_then_fails_and_current_still_works() {
    let mut pg = Postgres::start();
    pg_create_role(&pg, "app", "initial pw");
    let instance = serve();
    let root = instance.root();
    root.create_secret("db/app", &pg_secret(&pg, "app", "initial pw")).await;
    configure(&root, "db/app", "postgres", json!({"tls": "disable"}), pg_grants(&pg), 3).await;

    pg.stop();
    let record = rotate(&root, "db/app").await;
    assert_eq!(record["status"], "failed", "{record:#}");
    assert_eq!(record["step"], "set");
    let set_attempts = attempts(&record).iter().filter(|(step, _)| step == "set").count();
    assert_eq!(set_attempts, 3, "set was retried up to max_attempts: {record:#}");
    assert!(record["error"].as_str().unwrap_or("").contains("unreachable"), "{record:#}");

    pg.restart();
    let value = current_json(&root, "db/app").await;
    assert_eq!(password_of(&value), "initial pw", "current is untouched");
    assert!(pg_logs_in(&pg, "app", "initial pw"), "and still works");
    let versions = root.versions("db/app").await;
    assert!(
        versions.iter().all(|v| !v["labels"].as_array().unwrap().contains(&json!("pending"))),
        "the pending version was dropped: {versions:?}"
    );
    // Once the target is back, the next rotation goes through.
    rotate_ok(&root, "db/app", "postgres").await;
    assert!(pg_logs_in(&pg, "app", password_of(&current_json(&root, "db/app").await)));
}

// ---------------------------------------------------------------------------
// apikey
// ---------------------------------------------------------------------------

/// The README's apikey params, pointed at `provider`.
fn apikey_params(provider: &ApiKeyProvider) -> Value {
    let base = provider.base();
    json!({
        "credentials_secret": "acme/admin",
        "create": {"url": format!("{base}/keys"), "headers": {"Authorization": "Bearer {{credentials.token}}"},
                   "body": {"name": "{{secret_name}}"}},
        "key_pointer": "/data/secret",
        "id_pointer": "/data/id",
        "test": {"url": format!("{base}/whoami"), "headers": {"X-Api-Key": "{{key}}"}},
        "delete": {"url": format!("{base}/keys/{{{{id}}}}"), "headers": {"Authorization": "Bearer {{credentials.token}}"}}
    })
}

fn apikey_grants(provider: &ApiKeyProvider) -> Value {
    json!({"http": [provider.base()], "secrets": ["acme/admin"]})
}

fn apikey_value((id, key): &(String, String)) -> String {
    json!({"key": key, "id": id}).to_string()
}

fn key_of(value: &Value) -> &str {
    value["key"].as_str().expect("a key")
}

#[tokio::test]
async fn apikey_steps_issue_test_and_delete_keys_at_the_provider() {
    let provider = ApiKeyProvider::start().await;
    let granted = Granted::with(&[("acme/admin", &json!({"token": provider.admin_token}).to_string())]).await;
    let first = provider.issue();
    let mut rotation =
        Rotation::new("apikey", &apikey_value(&first), apikey_params(&provider), apikey_grants(&provider))
            .await
            .granting(&granted);

    rotation.rotate_ok().await;
    let second = rotation.current_json();
    assert_eq!(second["id"], "key-2");
    assert!(provider.is_live(key_of(&second)));
    assert!(provider.is_live(&first.1), "the previous key stays valid until the next rotation");
    assert!(provider.requests().contains(&"GET /v1/whoami".to_owned()), "test tried the new key");

    rotation.rotate_ok().await;
    assert!(!provider.is_live(&first.1), "the key that fell off was deleted");
    assert!(provider.is_live(key_of(&second)));
    assert_eq!(provider.live_count(), 2);

    // `finish` again (a retry): the key is already gone, which is fine.
    let mut again = rotation.input(Some(&rotation.versions[rotation.current].clone()));
    again.fell_off = Some(rotation.versions[0].clone());
    rotation.step_ok(Step::Finish, again).await;

    // Break glass: every older key goes, only the new one is left.
    rotation.rotate_ok().await;
    rotation.rotate_emergency().await.expect("emergency rotation");
    assert_eq!(provider.live_count(), 1);
    assert!(provider.is_live(key_of(&rotation.current_json())));
}

#[tokio::test]
async fn apikey_provider_failures_fail_the_rotation_and_leave_the_key_working() {
    let provider = ApiKeyProvider::start().await;
    let granted = Granted::with(&[("acme/admin", &json!({"token": provider.admin_token}).to_string())]).await;
    let first = provider.issue();
    let mut rotation =
        Rotation::new("apikey", &apikey_value(&first), apikey_params(&provider), apikey_grants(&provider))
            .await
            .granting(&granted);

    provider.fail(true);
    let failed = rotation.rotate().await.unwrap_err();
    assert_eq!(failed.step, Step::Create);
    assert!(failed.message.contains("status 503"), "{}", failed.message);
    provider.fail(false);
    assert!(provider.is_live(&first.1));
    assert_eq!(provider.live_count(), 1);

    // A wrong pointer is the operator's to fix: fatal, naming the pointer.
    rotation.params["key_pointer"] = json!("/data/key");
    let failed = rotation.rotate().await.unwrap_err();
    assert!(failed.message.contains("\"/data/key\""), "{}", failed.message);
    assert!(!failed.message.contains("ak_"), "no key in the error: {}", failed.message);

    // Without the credentials granted, nothing is sent.
    rotation.params = apikey_params(&provider);
    rotation.grants = json!({"http": [provider.base()]});
    let sent = provider.requests().len();
    let failed = rotation.rotate().await.unwrap_err();
    assert!(failed.message.starts_with("plugin 'apikey' step `create`: denied"), "{}", failed.message);
    assert_eq!(provider.requests().len(), sent);
}

#[tokio::test]
async fn apikey_rotates_end_to_end_and_a_failing_provider_fails_the_rotation() {
    let provider = ApiKeyProvider::start().await;
    let instance = serve();
    let root = instance.root();
    root.create_secret("acme/admin", &json!({"token": provider.admin_token}).to_string()).await;
    let first = provider.issue();
    root.create_secret("api/acme", &apikey_value(&first)).await;
    configure(&root, "api/acme", "apikey", apikey_params(&provider), apikey_grants(&provider), 2).await;

    rotate_ok(&root, "api/acme", "apikey").await;
    let second = current_json(&root, "api/acme").await;
    assert!(provider.is_live(key_of(&second)) && provider.is_live(&first.1));
    rotate_ok(&root, "api/acme", "apikey").await;
    let third = current_json(&root, "api/acme").await;
    assert!(provider.is_live(key_of(&third)) && provider.is_live(key_of(&second)));
    assert!(!provider.is_live(&first.1), "the key that fell off was deleted");

    provider.fail(true);
    let record = rotate(&root, "api/acme").await;
    assert_eq!(record["status"], "failed", "{record:#}");
    assert_eq!(
        attempts(&record),
        [("create".to_owned(), "plugin_retryable".to_owned()), ("create".to_owned(), "plugin_retryable".to_owned())]
    );
    provider.fail(false);
    assert_eq!(current_json(&root, "api/acme").await, third, "current is untouched");
    assert!(provider.is_live(key_of(&third)));
}

// ---------------------------------------------------------------------------
// mysql (against MariaDB)
// ---------------------------------------------------------------------------

fn my_secret(db: &Mariadb, username: &str, password: &str) -> String {
    json!({"engine": "mariadb", "host": "127.0.0.1", "port": db.port, "username": username, "password": password})
        .to_string()
}

fn my_grants(db: &Mariadb) -> Value {
    json!({"sql": [db.addr()]})
}

/// `` `name`@`%` ``
fn my_account(user: &str) -> String {
    format!("`{}`@`%`", user.replace('`', "``"))
}

fn my_logs_in(db: &Mariadb, user: &str, password: &str) -> bool {
    db.sql_as(user, password, "SELECT 1").success()
}

/// Turns the general query log on (every statement the server receives)
/// and returns where it is written.
fn my_general_log(db: &Mariadb) -> PathBuf {
    let path = db.data_dir().join("general.log");
    db.sql(&format!("SET GLOBAL general_log_file = '{}'; SET GLOBAL general_log = 1", path.display()));
    path
}

#[tokio::test]
async fn postgres_single_user_set_with_a_stale_current_password_changes_nothing_and_says_why() {
    let pg = Postgres::start();
    pg_create_role(&pg, "app", "the real one");
    let params = json!({"tls": "disable"});
    let rotation = Rotation::new("postgres", &pg_secret(&pg, "app", "out of date"), params, pg_grants(&pg)).await;
    let pending = rotation.try_create().await.expect("create");
    let outcome = rotation.step(Step::Set, rotation.input(Some(&pending))).await;
    let error = outcome.result.expect_err("set with a password the database refuses");
    assert!(
        error.message.contains("refuses both the current and the pending password of user \"app\""),
        "{}",
        error.message
    );
    assert!(error.message.contains("store the one it accepts as a new current version"), "{}", error.message);
    assert!(pg_logs_in(&pg, "app", "the real one"), "the password was changed anyway");
}

#[tokio::test]
async fn postgres_single_user_with_an_admin_secret_sets_the_password_as_the_admin_and_repairs_a_stale_one() {
    // `%u|` before each line: who ran the statement.
    let pg = Postgres::start_with(&["log_statement=all", "log_line_prefix=%u|"]);
    let granted = Granted::with(&[("db/admin", &pg_secret(&pg, &pg.superuser, &pg.password))]).await;
    pg_create_role(&pg, AWKWARD_USER, "changed outside tumbler");
    let params = json!({"tls": "disable", "admin_secret": "db/admin", "password": awkward_password_rules()});
    let grants = json!({"sql": [pg.addr()], "secrets": ["db/admin"]});
    // The stored password is out of date: without an admin, `set` could not log in.
    let initial = pg_secret(&pg, AWKWARD_USER, "out of date");
    let mut rotation = Rotation::new("postgres", &initial, params, grants).await.granting(&granted);

    let pending = rotation.try_create().await.expect("create");
    let value: Value = serde_json::from_str(&pending.value).unwrap();
    assert_eq!(value["username"], AWKWARD_USER, "single-user keeps the user");
    let password = value["password"].as_str().unwrap().to_owned();
    let log = rotation.step_ok(Step::Set, rotation.input(Some(&pending))).await;
    assert!(log.contains("the admin gave user"), "{log}");
    // A retry sets the same password again.
    rotation.step_ok(Step::Set, rotation.input(Some(&pending))).await;
    rotation.step_ok(Step::Test, rotation.input(Some(&pending))).await;
    rotation.promote_and_finish(pending, false).await.expect("finish");
    assert!(pg_logs_in(&pg, AWKWARD_USER, &password));
    assert!(!pg_logs_in(&pg, AWKWARD_USER, "changed outside tumbler"), "the old password stops working at set");

    rotation.rotate_ok().await;
    let second = password_of(&rotation.current_json()).to_owned();
    assert!(pg_logs_in(&pg, AWKWARD_USER, &second));
    assert!(!pg_logs_in(&pg, AWKWARD_USER, &password));

    // Every ALTER ROLE ran as the admin, with a verifier, never a password.
    let server_log = pg.log();
    let alters: Vec<&str> = server_log.lines().filter(|l| l.contains(": ALTER ROLE")).collect();
    assert_eq!(alters.len(), 3, "two sets of the first rotation, one of the second:\n{server_log}");
    for line in &alters {
        assert!(line.starts_with(&format!("{}|", pg.superuser)), "not run as the admin: {line}");
        assert!(line.contains("PASSWORD 'SCRAM-SHA-256$4096:"), "{line}");
    }
    for secret in [password.as_str(), second.as_str()] {
        assert!(!server_log.contains(secret), "a password reached the server log");
    }
}

#[tokio::test]
async fn mysql_single_user_with_an_admin_secret_repairs_a_stale_password() {
    let db = Mariadb::start();
    db.sql(&format!("CREATE USER {} IDENTIFIED BY 'changed outside tumbler'", my_account(AWKWARD_USER)));
    let granted = Granted::with(&[("db/admin", &my_secret(&db, &db.superuser, &db.password))]).await;
    let params = json!({"tls": "disable", "admin_secret": "db/admin"});
    let grants = json!({"sql": [db.addr()], "secrets": ["db/admin"]});
    let initial = my_secret(&db, AWKWARD_USER, "out of date");
    let mut rotation = Rotation::new("mysql", &initial, params, grants).await.granting(&granted);

    rotation.rotate_ok().await;
    let now = rotation.current_json();
    assert_eq!(now["username"], AWKWARD_USER, "single-user keeps the user");
    assert!(my_logs_in(&db, AWKWARD_USER, password_of(&now)));
    assert!(!my_logs_in(&db, AWKWARD_USER, "changed outside tumbler"));

    // Without the admin, the same stale value cannot be rotated.
    let mut alone = Rotation::new("mysql", &initial, json!({"tls": "disable"}), my_grants(&db)).await;
    let failed = alone.rotate().await.unwrap_err();
    assert_eq!(failed.step, Step::Set);
    assert!(failed.message.contains("or set `admin_secret`"), "{}", failed.message);
    assert!(my_logs_in(&db, AWKWARD_USER, password_of(&now)), "the failed rotation changed nothing");
}

#[tokio::test]
async fn mysql_single_user_steps_change_the_password_and_no_password_reaches_the_general_log() {
    let db = Mariadb::start();
    let general_log = my_general_log(&db);
    db.sql(&format!("CREATE USER {} IDENTIFIED BY 'initial pw'", my_account(AWKWARD_USER)));
    let params = json!({"tls": "disable", "password": awkward_password_rules()});
    let mut rotation =
        Rotation::new("mysql", &my_secret(&db, AWKWARD_USER, "initial pw"), params, my_grants(&db)).await;

    let pending = rotation.try_create().await.expect("create");
    rotation.step_ok(Step::Set, rotation.input(Some(&pending))).await;
    let again = rotation.step_ok(Step::Set, rotation.input(Some(&pending))).await;
    assert!(again.contains("already logs in"), "{again}");
    rotation.step_ok(Step::Test, rotation.input(Some(&pending))).await;
    rotation.promote_and_finish(pending, false).await.expect("finish");
    let first = password_of(&rotation.current_json()).to_owned();
    assert!(my_logs_in(&db, AWKWARD_USER, &first));
    assert!(!my_logs_in(&db, AWKWARD_USER, "initial pw"));

    rotation.rotate_ok().await;
    let second = password_of(&rotation.current_json()).to_owned();
    assert!(my_logs_in(&db, AWKWARD_USER, &second));
    assert!(!my_logs_in(&db, AWKWARD_USER, &first));

    let log = std::fs::read_to_string(&general_log).expect("read the general log");
    assert!(log.contains("SET PASSWORD = '*"), "the statements were logged:\n{log}");
    for password in [&first, &second] {
        assert!(!log.contains(password.as_str()), "a password reached the general log");
    }
}

#[tokio::test]
async fn mysql_alternating_users_steps_copy_grants_to_the_clone_and_keep_the_previous_user_working() {
    let db = Mariadb::start();
    db.sql(&format!(
        "CREATE DATABASE shop; CREATE TABLE shop.orders (id int); INSERT INTO shop.orders VALUES (7);
         CREATE USER {0} IDENTIFIED BY 'initial pw'; GRANT SELECT ON shop.* TO {0};",
        my_account(AWKWARD_USER)
    ));
    let granted = Granted::with(&[("db/admin", &my_secret(&db, &db.superuser, &db.password))]).await;
    let params = json!({"strategy": "alternating-users", "admin_secret": "db/admin", "tls": "disable",
                        "password": awkward_password_rules()});
    let grants = json!({"sql": [db.addr()], "secrets": ["db/admin"]});
    let mut rotation =
        Rotation::new("mysql", &my_secret(&db, AWKWARD_USER, "initial pw"), params, grants).await.granting(&granted);
    let clone = format!("{AWKWARD_USER}_clone");

    rotation.rotate_ok().await;
    let now = rotation.current_json();
    assert_eq!(now["username"], clone.as_str());
    let clone_pw = password_of(&now).to_owned();
    let reads = db.sql_as(&clone, &clone_pw, "SELECT id FROM shop.orders");
    assert_eq!(reads.stdout.trim(), "7", "the clone has the user's grants: {reads:?}");
    assert!(my_logs_in(&db, AWKWARD_USER, "initial pw"), "the previous user keeps working");

    rotation.rotate_ok().await;
    let user_pw = password_of(&rotation.current_json()).to_owned();
    assert!(my_logs_in(&db, AWKWARD_USER, &user_pw));
    assert!(!my_logs_in(&db, AWKWARD_USER, "initial pw"));
    assert!(my_logs_in(&db, &clone, &clone_pw), "the previous value keeps working until the next rotation");

    rotation.rotate_emergency().await.expect("emergency rotation");
    let now = rotation.current_json();
    assert_eq!(now["username"], clone.as_str());
    assert!(my_logs_in(&db, &clone, password_of(&now)));
    assert!(!my_logs_in(&db, AWKWARD_USER, &user_pw), "emergency: no older credential works");
}

#[tokio::test]
async fn mysql_rotates_end_to_end_with_both_strategies() {
    let db = Mariadb::start();
    db.sql(&format!(
        "CREATE USER {} IDENTIFIED BY 'initial pw'; CREATE USER `report`@`%` IDENTIFIED BY 'initial pw';",
        my_account(AWKWARD_USER)
    ));
    let instance = serve();
    let root = instance.root();
    root.create_secret("db/admin", &my_secret(&db, &db.superuser, &db.password)).await;
    root.create_secret("db/app", &my_secret(&db, AWKWARD_USER, "initial pw")).await;
    root.create_secret("db/report", &my_secret(&db, "report", "initial pw")).await;
    let single = json!({"tls": "disable", "password": awkward_password_rules()});
    configure(&root, "db/app", "mysql", single, my_grants(&db), 5).await;
    let alternating = json!({"tls": "disable", "strategy": "alternating-users", "admin_secret": "db/admin"});
    configure(&root, "db/report", "mysql", alternating, json!({"sql": [db.addr()], "secrets": ["db/admin"]}), 5).await;

    let mut old = current_json(&root, "db/app").await;
    for _ in 0..2 {
        rotate_ok(&root, "db/app", "mysql").await;
        let now = current_json(&root, "db/app").await;
        assert!(my_logs_in(&db, AWKWARD_USER, password_of(&now)));
        assert!(!my_logs_in(&db, AWKWARD_USER, password_of(&old)), "single user: the old password is refused");
        old = now;
    }

    let mut previous = current_json(&root, "db/report").await;
    for _ in 0..2 {
        rotate_ok(&root, "db/report", "mysql").await;
        let now = current_json(&root, "db/report").await;
        assert_ne!(now["username"], previous["username"]);
        assert!(my_logs_in(&db, now["username"].as_str().unwrap(), password_of(&now)));
        assert!(
            my_logs_in(&db, previous["username"].as_str().unwrap(), password_of(&previous)),
            "alternating users: the previous credential keeps working"
        );
        previous = now;
    }
}

// ---------------------------------------------------------------------------
// ssh
// ---------------------------------------------------------------------------

fn ssh_secret(sshd: &Sshd, private_key: &str, public_key: &str) -> String {
    json!({"host": "127.0.0.1", "port": sshd.port, "username": sshd.user, "private_key": private_key,
           "public_key": public_key})
    .to_string()
}

/// The host key pinned, as an operator grants it.
fn ssh_grants(sshd: &Sshd) -> Value {
    json!({"ssh": [format!("{} {}", sshd.addr(), sshd.host_key_fingerprint)]})
}

fn ssh_params(sshd: &Sshd) -> Value {
    json!({"authorized_keys": sshd.authorized_keys_path()})
}

/// Whether OpenSSH's own client logs in to `sshd` with `private_key`.
fn ssh_logs_in(sshd: &Sshd, private_key: &str) -> bool {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().expect("temp dir");
    let key = dir.path().join("id");
    std::fs::write(&key, private_key).expect("write the key");
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).expect("chmod the key");
    let mut ssh = Command::new("ssh");
    ssh.arg("-i").arg(&key).args([
        "-o",
        "BatchMode=yes",
        "-o",
        "IdentitiesOnly=yes",
        "-o",
        "StrictHostKeyChecking=no",
        "-o",
        "UserKnownHostsFile=/dev/null",
        "-o",
        "ConnectTimeout=10",
        "-o",
        "LogLevel=ERROR",
        "-p",
        &sshd.port.to_string(),
        &format!("{}@127.0.0.1", sshd.user),
        "true",
    ]);
    tumbler_tests::run(ssh, None).success()
}

/// The base64 blob of an `authorized_keys` line.
fn blob(public_key: &str) -> &str {
    public_key.split_whitespace().nth(1).expect("a key blob")
}

#[tokio::test]
async fn ssh_steps_install_the_new_key_and_remove_the_one_that_fell_off() {
    let initial = ssh_keypair("initial");
    let ops = ssh_keypair("ops-by-hand");
    let sshd = Sshd::start(&format!("# keys of this account\n{}\n{}", initial.public_key, ops.public_key));
    let mut rotation = Rotation::new(
        "ssh",
        &ssh_secret(&sshd, &initial.private_key, &initial.public_key),
        ssh_params(&sshd),
        ssh_grants(&sshd),
    )
    .await;

    let pending = rotation.try_create().await.expect("create");
    let new: Value = serde_json::from_str(&pending.value).unwrap();
    let new_public = new["public_key"].as_str().unwrap().to_owned();
    assert!(new_public.starts_with("ssh-ed25519 ") && new_public.ends_with(" tumbler:test/rotated"), "{new_public}");
    assert!(new["private_key"].as_str().unwrap().starts_with("-----BEGIN OPENSSH PRIVATE KEY-----"));
    assert_eq!(new["host"], "127.0.0.1");

    // `set` twice: the key is in the file once.
    rotation.step_ok(Step::Set, rotation.input(Some(&pending))).await;
    let again = rotation.step_ok(Step::Set, rotation.input(Some(&pending))).await;
    assert!(again.contains("already accepts"), "{again}");
    assert_eq!(sshd.authorized_keys().matches(blob(&new_public)).count(), 1);
    rotation.step_ok(Step::Test, rotation.input(Some(&pending))).await;
    rotation.promote_and_finish(pending, false).await.expect("finish");
    assert!(ssh_logs_in(&sshd, new["private_key"].as_str().unwrap()));
    assert!(ssh_logs_in(&sshd, &initial.private_key), "the previous key stays until the next rotation");

    // The next rotation removes the key that fell off, and only that one.
    rotation.rotate_ok().await;
    let keys = sshd.authorized_keys();
    assert!(!keys.contains(blob(&initial.public_key)), "{keys}");
    assert!(keys.contains(blob(&new_public)) && keys.contains(blob(&ops.public_key)), "{keys}");
    assert!(!ssh_logs_in(&sshd, &initial.private_key));
    assert!(ssh_logs_in(&sshd, rotation.current_json()["private_key"].as_str().unwrap()));

    // Break glass: every key but the new one goes; comments stay.
    rotation.rotate_emergency().await.expect("emergency rotation");
    let newest = rotation.current_json();
    let keys = sshd.authorized_keys();
    let key_lines: Vec<&str> = keys.lines().filter(|l| !l.trim().is_empty() && !l.starts_with('#')).collect();
    assert_eq!(key_lines, [newest["public_key"].as_str().unwrap()], "{keys}");
    assert!(keys.contains("# keys of this account"));
    assert!(ssh_logs_in(&sshd, newest["private_key"].as_str().unwrap()));
    assert!(!ssh_logs_in(&sshd, &ops.private_key));
}

#[tokio::test]
async fn ssh_refusals_leave_authorized_keys_and_the_current_key_alone() {
    let initial = ssh_keypair("initial");
    let sshd = Sshd::start(&initial.public_key);
    let before = sshd.authorized_keys();
    let value = ssh_secret(&sshd, &initial.private_key, &initial.public_key);

    // Another host key pinned: refused before logging in.
    let wrong = json!({"ssh": [format!("{} SHA256:{}", sshd.addr(), "A".repeat(43))]});
    let mut rotation = Rotation::new("ssh", &value, ssh_params(&sshd), wrong).await;
    let failed = rotation.rotate().await.unwrap_err();
    assert_eq!(failed.step, Step::Set);
    assert!(failed.message.contains("denied"), "{}", failed.message);

    // A current key the host no longer accepts: `set` cannot install the new one.
    let stranger = ssh_keypair("stranger");
    rotation.versions[0].value = ssh_secret(&sshd, &stranger.private_key, &stranger.public_key);
    rotation.grants = ssh_grants(&sshd);
    let failed = rotation.rotate().await.unwrap_err();
    assert_eq!(failed.step, Step::Set);
    assert!(failed.message.contains("auth"), "{}", failed.message);

    assert_eq!(sshd.authorized_keys(), before);
    assert!(ssh_logs_in(&sshd, &initial.private_key));
}

#[tokio::test]
async fn ssh_rotates_end_to_end_and_a_stopped_host_fails_the_rotation() {
    let initial = ssh_keypair("initial");
    let mut sshd = Sshd::start(&initial.public_key);
    let instance = serve();
    let root = instance.root();
    root.create_secret("hosts/web1", &ssh_secret(&sshd, &initial.private_key, &initial.public_key)).await;
    configure(&root, "hosts/web1", "ssh", ssh_params(&sshd), ssh_grants(&sshd), 3).await;

    let mut previous = current_json(&root, "hosts/web1").await;
    for _ in 0..2 {
        rotate_ok(&root, "hosts/web1", "ssh").await;
        let now = current_json(&root, "hosts/web1").await;
        assert!(ssh_logs_in(&sshd, now["private_key"].as_str().unwrap()), "the new key works");
        assert!(ssh_logs_in(&sshd, previous["private_key"].as_str().unwrap()), "the previous one still does");
        previous = now;
    }
    assert!(!ssh_logs_in(&sshd, &initial.private_key), "the key that fell off was removed");

    let before = sshd.authorized_keys();
    sshd.stop();
    let record = rotate(&root, "hosts/web1").await;
    assert_eq!((record["status"].as_str(), record["step"].as_str()), (Some("failed"), Some("set")), "{record:#}");
    assert_eq!(attempts(&record).iter().filter(|(step, _)| step == "set").count(), 3, "{record:#}");
    sshd.restart();
    assert_eq!(current_json(&root, "hosts/web1").await, previous, "current is untouched");
    assert!(ssh_logs_in(&sshd, previous["private_key"].as_str().unwrap()), "and still logs in");
    assert_eq!(sshd.authorized_keys(), before);

    // Break glass: afterwards only the new key is authorized.
    let reply = root.post(&format!("{}:revoke", secret_path("hosts/web1")), &json!({"reason": "laptop stolen"})).await;
    assert_eq!(reply.0, 202, "{reply:?}");
    let record = wait_rotation(&root, reply.1["rotation_id"].as_str().unwrap()).await;
    assert_eq!(record["status"], "succeeded", "{record:#}");
    let new = current_json(&root, "hosts/web1").await;
    assert!(ssh_logs_in(&sshd, new["private_key"].as_str().unwrap()), "the new key works");
    assert!(!ssh_logs_in(&sshd, previous["private_key"].as_str().unwrap()), "the previous key is removed at once");
    let keys: Vec<String> =
        sshd.authorized_keys().lines().filter(|l| !l.trim().is_empty()).map(str::to_owned).collect();
    assert_eq!(keys.len(), 1, "only the new key is left: {keys:#?}");
    assert!(keys[0].contains(new["public_key"].as_str().unwrap().split_whitespace().nth(1).unwrap()));
}

/// Polls a rotation record until it is no longer running.
async fn wait_rotation(client: &Client, id: &str) -> Value {
    let started = Instant::now();
    loop {
        let (status, record) = client.get(&format!("/v1/rotations/{id}")).await;
        assert_eq!(status, 200, "rotation {id}: {record}");
        if record["status"] != "running" {
            return record;
        }
        assert!(started.elapsed() < Duration::from_secs(180), "rotation {id} still running: {record:#}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
