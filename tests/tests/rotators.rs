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
use tumbler::store::secrets::{self as store_secrets, NewSecret, Tags};
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
    let status = Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()))
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
                    let new = NewSecret {
                        name: SecretName::parse(&name)?,
                        value: SecretValue::parse(Zeroizing::new(value))?,
                        description: String::new(),
                        tags: Tags::new(),
                        client_token: None,
                    };
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
    let started = Instant::now();
    let reply = client.post(&format!("{}:rotate", secret_path(secret)), &json!({})).await;
    assert_eq!(reply.0, 202, "rotate {secret}: {reply:?}");
    let id = reply.1["rotation_id"].as_str().expect("rotation_id").to_owned();
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

/// A rotation that must succeed; prints how long it took (the measured
/// time of one rotation, from the request to the end of `finish`).
async fn rotate_ok(client: &Client, secret: &str, plugin: &str) -> Value {
    let record = rotate(client, secret).await;
    assert_eq!(record["status"], "succeeded", "rotation of {secret}: {record:#}");
    eprintln!("timing: one {plugin} rotation took {} ms", record["duration_ms"]);
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
                "rotation", "set", "db/app", "--plugin", "postgres", "--schedule", "rate(30 days)",
                "--param", "tls=disable", "--param", &format!("password={rules}"),
                "--grant", &format!("sql:{}", pg.addr()),
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
