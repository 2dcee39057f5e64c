//! The `sql` and `ssh` capabilities against real servers (PostgreSQL,
//! MariaDB, sshd) started by each test on loopback ports of their own.
//! The runtime is driven in-process: the `test-probe` fixture's `set` step
//! makes the host call its params describe, and fails with
//! `kind: message` when the host refuses it.

use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use std::path::PathBuf;
use std::sync::{Arc, OnceLock};
use tumbler::crypto::MasterKey;
use tumbler::model::{Label, SecretName, SecretValue};
use tumbler::plugins::bindings::tumbler::rotator::types::{StepInput, Version};
use tumbler::plugins::cache::ComponentCache;
use tumbler::plugins::capabilities::GrantsSpec;
use tumbler::plugins::{CallContext, LoadedPlugin, Runtime, RuntimeLimits, Step, StepOutcome};
use tumbler::store::Store;
use tumbler::store::secrets::{self, NewSecret};
use tumbler_tests::servers::{Mariadb, Postgres, Sshd, ssh_keypair, ssh_keypair_of_type};
use tumbler_tests::workspace_root;
use zeroize::Zeroizing;

// ---------------------------------------------------------------------------
// Harness
// ---------------------------------------------------------------------------

/// One runtime and the loaded probe, shared by the tests of this binary
/// (compiling the component once, not once per test).
struct Harness {
    runtime: Arc<Runtime>,
    probe: LoadedPlugin,
}

fn harness() -> &'static Harness {
    static HARNESS: OnceLock<Harness> = OnceLock::new();
    HARNESS.get_or_init(|| {
        let wasm = Arc::new(std::fs::read(probe_wasm()).expect("read test_probe.wasm"));
        let sha256 = hex(&Sha256::digest(wasm.as_slice()));
        // Its own thread and runtime: each test has a runtime of its own,
        // and the harness outlives them all.
        std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("tokio runtime");
            rt.block_on(async {
                let cache_dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("capabilities-plugin-cache");
                let cache = ComponentCache::new(cache_dir, Zeroizing::new([7; 32])).expect("cache dir");
                let runtime = Runtime::new(RuntimeLimits::default(), cache).expect("runtime");
                let probe = runtime.load(&sha256, wasm).await.unwrap_or_else(|e| panic!("load the probe: {e}"));
                Harness { runtime, probe }
            })
        })
        .join()
        .expect("harness thread")
    })
}

/// Builds the fixture (a no-op when it is up to date) and returns its path.
fn probe_wasm() -> PathBuf {
    let root = workspace_root();
    let status = tumbler_tests::cargo()
        .args(["build", "--release", "--target", "wasm32-wasip2", "-p", "test-probe", "--manifest-path"])
        .arg(root.join("plugins/Cargo.toml"))
        // The fixture lands in plugins/target, whatever this build uses.
        .env_remove("CARGO_TARGET_DIR")
        .status()
        .expect("run cargo to build the plugins");
    assert!(status.success(), "building the test-probe plugin failed");
    root.join("plugins/target/wasm32-wasip2/release/test_probe.wasm")
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// What one probe call is given besides its params.
#[derive(Default)]
struct Call {
    grants: Value,
    current: Option<Value>,
    store: Option<Store>,
}

impl Call {
    fn granting(grants: Value) -> Call {
        Call { grants, ..Call::default() }
    }

    fn current(mut self, value: Value) -> Call {
        self.current = Some(value);
        self
    }

    fn store(mut self, store: &Store) -> Call {
        self.store = Some(store.clone());
        self
    }

    /// Runs the probe's `set` step with `params`.
    async fn probe(self, params: Value) -> StepOutcome {
        let spec: GrantsSpec = serde_json::from_value(self.grants).expect("grants in API form");
        let grants = spec.parse().unwrap_or_else(|e| panic!("grants: {}", e.message()));
        let current = self.current.map(|v| v.to_string());
        let ctx = CallContext {
            plugin: "test-probe".into(),
            grants: Arc::new(grants),
            store: self.store,
            current_value: current.clone().map(|v| Arc::new(Zeroizing::new(v))),
            ..CallContext::default()
        };
        let input = StepInput {
            secret_name: "test/probe".into(),
            params: params.to_string(),
            current: current.map(|value| Version { id: "v1".into(), value }),
            pending: None,
            previous: None,
            fell_off: None,
            emergency: false,
            older: Vec::new(),
        };
        let h = harness();
        h.runtime.run_step(&h.probe, Step::Set, input, ctx).await
    }
}

/// The step's error message (`kind: message`), failing the test if the
/// step succeeded.
fn failure(outcome: &StepOutcome) -> String {
    match &outcome.result {
        Ok(_) => panic!("the step succeeded; log:\n{}", outcome.log),
        // The runtime may name the plugin and step first.
        Err(e) => match e.message.split_once("step `set`: ") {
            Some((_, plugin_message)) => plugin_message.to_owned(),
            None => e.message.clone(),
        },
    }
}

fn succeeded(outcome: &StepOutcome) {
    if let Err(e) = &outcome.result {
        panic!("the step failed: {}\nlog:\n{}", e.message, outcome.log);
    }
}

/// The rows the probe logged for its query, as JSON.
fn logged_rows(outcome: &StepOutcome) -> Value {
    succeeded(outcome);
    let line = outcome
        .log
        .lines()
        .find_map(|l| l.strip_prefix("info: sql-query rows: "))
        .unwrap_or_else(|| panic!("no rows line in the log:\n{}", outcome.log));
    serde_json::from_str(line).expect("rows are JSON")
}

/// Peak and current resident memory of this process, in bytes.
fn memory() -> (u64, u64) {
    let status = std::fs::read_to_string("/proc/self/status").expect("read /proc/self/status");
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.trim().trim_end_matches(" kB").parse::<u64>().ok())
            .map(|kb| kb * 1024)
            .unwrap_or_else(|| panic!("{name} in /proc/self/status"))
    };
    (field("VmHWM:"), field("VmRSS:"))
}

/// Values that break naive quoting: quotes, a statement terminator, a
/// comment, backslashes, non-ASCII and a 4-byte character.
const AWKWARD: &str = "it's a \"quoted\"; DROP TABLE kv; -- \\ back\\slash \u{e9}\u{fc} \u{1F511}";

fn pg_target(pg: &Postgres) -> Value {
    json!({"host": "127.0.0.1", "port": pg.port, "database": "postgres", "user": pg.superuser, "password": pg.password})
}

fn with(mut base: Value, extra: Value) -> Value {
    if let (Some(base), Value::Object(extra)) = (base.as_object_mut(), extra) {
        base.extend(extra);
    }
    base
}

// ---------------------------------------------------------------------------
// sql: PostgreSQL
// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread")]
async fn postgres_granted_query_binds_parameters_and_round_trips_awkward_values() {
    let pg = Postgres::start();
    let grants = json!({"sql": [pg.addr()]});
    let target = with(pg_target(&pg), json!({"call": "sql-query"}));

    let typed = Call::granting(grants.clone())
        .probe(with(
            target.clone(),
            json!({
                "statement": "SELECT $1::text AS t, $2::int8 AS i, $3::float8 AS f, $4::bool AS b, \
                              $5::bytea AS raw, $6::text AS n, $7::int4 AS small, $8::jsonb AS j",
                "params": [AWKWARD, 9_007_199_254_740_993_i64, 1.5, true, {"bytes": [0, 1, 255]}, null,
                           -2_147_483_648_i64, "{\"a\": [1, \"x\"]}"],
            }),
        ))
        .await;
    assert_eq!(
        logged_rows(&typed),
        json!({
            "columns": ["t", "i", "f", "b", "raw", "n", "small", "j"],
            "rows": [[AWKWARD, 9_007_199_254_740_993_i64, 1.5, true, {"bytes": [0, 1, 255]}, null,
                      -2_147_483_648_i64, "{\"a\": [1, \"x\"]}"]],
        })
    );

    // Statements and bound values reach the table intact, as psql sees it.
    let execute = |statement: &str, params: Value| {
        Call::granting(grants.clone())
            .probe(with(target.clone(), json!({"statement": statement, "params": params, "execute": true})))
    };
    succeeded(&execute("CREATE TABLE kv (k text PRIMARY KEY, v bytea, n int8)", json!([])).await);
    let inserted = execute(
        "INSERT INTO kv VALUES ($1, $2, $3), ($4, $5, $6)",
        json!([
            AWKWARD, {"bytes": [222, 173]}, 1, "plain", null, null
        ]),
    )
    .await;
    succeeded(&inserted);
    assert!(inserted.log.contains("sql-query: 2 rows affected"), "{}", inserted.log);
    assert_eq!(pg.psql("SELECT k FROM kv WHERE n = 1"), AWKWARD);
    let selected = Call::granting(grants.clone())
        .probe(with(target.clone(), json!({"statement": "SELECT v, n FROM kv WHERE k = $1", "params": [AWKWARD]})))
        .await;
    assert_eq!(logged_rows(&selected)["rows"], json!([[{"bytes": [222, 173]}, 1]]));

    // The plugin's mistakes are `invalid`; the server's answers are `target`.
    let mistyped = Call::granting(grants.clone())
        .probe(with(target.clone(), json!({"statement": "SELECT $1::int4", "params": ["abc"]})))
        .await;
    let message = failure(&mistyped);
    assert!(message.starts_with("invalid: parameter $1 is text but the statement expects int4"), "{message}");
    let missing = Call::granting(grants.clone())
        .probe(with(target.clone(), json!({"statement": "SELECT $1::text", "params": []})))
        .await;
    assert!(failure(&missing).starts_with("invalid: the statement takes 1 parameters; 0 were given"));
    let unknown = Call::granting(grants.clone())
        .probe(with(target.clone(), json!({"statement": "SELECT * FROM no_such_table"})))
        .await;
    let message = failure(&unknown);
    assert!(message.starts_with("target: ") && message.contains("\"no_such_table\" does not exist"), "{message}");
}

#[tokio::test(flavor = "multi_thread")]
async fn postgres_credentials_from_the_secret_never_enter_the_plugin() {
    let pg = Postgres::start();
    let password = "S3cret-from-the-store!";
    pg.psql(&format!("CREATE ROLE app LOGIN PASSWORD '{password}'"));
    let outcome = Call::granting(json!({"sql": [pg.addr()]}))
        .current(json!({"engine": "postgres", "username": "app", "password": password}))
        .probe(json!({"call": "sql-query", "host": "127.0.0.1", "port": pg.port, "database": "postgres",
                      "secret": "current", "statement": "SELECT current_user"}))
        .await;
    assert_eq!(logged_rows(&outcome)["rows"], json!([["app"]]));
    assert!(!outcome.log.contains(password), "{}", outcome.log);
}

#[tokio::test(flavor = "multi_thread")]
async fn postgres_wrong_password_is_auth() {
    let pg = Postgres::start();
    let outcome = Call::granting(json!({"sql": [pg.addr()]}))
        .probe(json!({"call": "sql", "host": "127.0.0.1", "port": pg.port, "user": pg.superuser,
                      "password": "not-the-password"}))
        .await;
    let message = failure(&outcome);
    assert!(message.starts_with("auth: "), "{message}");
    assert!(message.contains("password authentication failed"), "{message}");
    assert!(!message.contains("not-the-password"), "{message}");
}

/// The key the probe's `pbkdf2` call logged.
fn logged_key(outcome: &StepOutcome) -> String {
    succeeded(outcome);
    outcome
        .log
        .lines()
        .find_map(|l| l.strip_prefix("info: pbkdf2: "))
        .unwrap_or_else(|| panic!("{}", outcome.log))
        .into()
}

#[tokio::test(flavor = "multi_thread")]
async fn crypto_derives_keys_without_a_grant_within_its_limits() {
    // RFC 7914's PBKDF2-HMAC-SHA-256 vector, computed by the host for a
    // plugin granted nothing; then SHA-512 (Python's hashlib).
    let outcome = Call::granting(json!({}))
        .probe(json!({"call": "pbkdf2", "password": "passwd", "salt": "salt", "iterations": 1, "length": 64}))
        .await;
    assert_eq!(
        logged_key(&outcome),
        "55ac046e56e3089fec1691c22544b605f94185216dde0465e68b9d57c20dacbc\
         49ca9cccf179b645991664b39d77ef317c71b845b1e30bd509112041d3a19783"
    );
    let outcome = Call::granting(json!({}))
        .probe(json!({"call": "pbkdf2", "password": "password", "salt": "salt", "iterations": 4096, "length": 64,
                      "sha512": true}))
        .await;
    assert_eq!(
        logged_key(&outcome),
        "d197b1b33db0143e018b12f3d1d1479e6cdebdcc97c5c0f87f6902e072f457b5\
         143f30602641b3d55cd335988cb36b84376060ecd532e039b742a239434af2d5"
    );

    // Past a per-call limit: `invalid`, saying which.
    let too_many = json!({"call": "pbkdf2", "password": "p", "salt": "s", "iterations": 1_000_001, "length": 32});
    let message = failure(&Call::granting(json!({})).probe(too_many).await);
    assert!(message.starts_with("invalid: iterations must be 1 to 1000000"), "{message}");
    let too_long = json!({"call": "pbkdf2", "password": "p", "salt": "s", "iterations": 1, "length": 4096});
    assert!(failure(&Call::granting(json!({})).probe(too_long).await).starts_with("invalid: length"));

    // One call asking for more than a step's whole allowance (a million
    // iterations of 32 output blocks): `limit`, and nothing is derived.
    // (Calls adding up to it are counted the same way; the host's unit
    // tests show that without spending the 16 million rounds.)
    let greedy = json!({"call": "pbkdf2", "password": "p", "salt": "s", "iterations": 1_000_000, "length": 1024});
    let outcome = Call::granting(json!({})).probe(greedy).await;
    let message = failure(&outcome);
    assert!(message.starts_with("limit: a step may run at most 16000000 rounds"), "{message}");
    assert!(message.contains("32000000 asked"), "{message}");
}

/// Creates secret `name`, or adds `value` to it as its new current version.
async fn put_secret(store: &Store, name: &str, value: &Value) {
    let (name, value) = (SecretName::parse(name).expect("secret name"), value.to_string());
    store
        .write(move |tx, keys| {
            let value = SecretValue::parse(Zeroizing::new(value))?;
            match secrets::put_version(tx, keys, &name, &value, None, &[Label::current()]) {
                Err(e) if e.kind == tumbler::error::Kind::NotFound => {
                    let new = NewSecret::new(name, value);
                    secrets::create(tx, keys, new)
                }
                other => other,
            }
        })
        .await
        .expect("store the secret");
}

/// A store whose secret `db/admin` holds `pool_admin`'s first password, and
/// grants for the database at `addr` and that secret.
async fn admin_secret_granted(addr: String) -> (tempfile::TempDir, Store, Value) {
    let (dir, store) = test_store();
    put_secret(&store, "db/admin", &json!({"username": "pool_admin", "password": "first-password"})).await;
    (dir, store, json!({"sql": [addr], "secrets": ["db/admin"]}))
}

/// Runs `statement` through the probe logged in with `secret`'s
/// credentials and returns its first row. The rotated secret's `current`
/// version holds the very credentials of `db/admin`, so a `current` login
/// could take an idle admin session if the pool keyed on credentials alone.
async fn first_row(grants: &Value, store: &Store, target: &Value, secret: &str, statement: &str) -> Vec<Value> {
    let outcome = Call::granting(grants.clone())
        .store(store)
        .current(json!({"username": "pool_admin", "password": "first-password"}))
        .probe(with(target.clone(), json!({"call": "sql-query", "secret": secret, "statement": statement})))
        .await;
    let rows = logged_rows(&outcome);
    rows["rows"][0].as_array().cloned().unwrap_or_else(|| panic!("no row: {rows}"))
}

#[tokio::test(flavor = "multi_thread")]
async fn postgres_sessions_of_a_granted_admin_secret_are_reused_reset_and_never_for_other_logins() {
    let pg = Postgres::start();
    pg.psql("CREATE ROLE pool_admin LOGIN PASSWORD 'first-password'");
    let (_dir, store, grants) = admin_secret_granted(pg.addr()).await;
    let target = json!({"host": "127.0.0.1", "port": pg.port, "database": "postgres"});

    // A session that changes its settings, then one more call: the same
    // backend, with the settings of a fresh login.
    let dirty = "SELECT pg_backend_pid()::int8, set_config('search_path', 'leaked', false)";
    let first = first_row(&grants, &store, &target, "db/admin", dirty).await;
    let fresh = "SELECT pg_backend_pid()::int8, current_setting('search_path')";
    let second = first_row(&grants, &store, &target, "db/admin", fresh).await;
    assert_eq!(second[0], first[0], "the admin session was not reused: {first:?} then {second:?}");
    assert_eq!(second[1], json!("\"$user\", public"), "the reused session kept its settings");

    // The rotated secret's own versions always log in for real.
    let current = first_row(&grants, &store, &target, "current", fresh).await;
    let again = first_row(&grants, &store, &target, "current", fresh).await;
    assert_ne!(current[0], again[0], "a login with the current version was reused");
    assert_ne!(current[0], first[0], "the current version's login took the admin secret's session");

    // A new admin password never finds the old password's session, and
    // idle sessions do not pile up: the old password's (until pruned) and
    // the new one's are all that stay logged in.
    pg.psql("ALTER ROLE pool_admin PASSWORD 'second-password'");
    put_secret(&store, "db/admin", &json!({"username": "pool_admin", "password": "second-password"})).await;
    let after = first_row(&grants, &store, &target, "db/admin", fresh).await;
    assert_ne!(after[0], first[0], "the session of the old password was reused");
    let logins: i64 =
        pg.psql("SELECT count(*) FROM pg_stat_activity WHERE usename = 'pool_admin'").trim().parse().expect("count");
    assert!(logins <= 2, "idle admin sessions pile up: {logins}");
}

#[tokio::test(flavor = "multi_thread")]
async fn mariadb_sessions_of_a_granted_admin_secret_are_reused_and_reset() {
    let db = Mariadb::start();
    db.sql("CREATE USER pool_admin@'%' IDENTIFIED BY 'first-password'");
    let (_dir, store, grants) = admin_secret_granted(db.addr()).await;
    let target = json!({"engine": "mysql", "host": "127.0.0.1", "port": db.port});

    let first = first_row(&grants, &store, &target, "db/admin", "SELECT CONNECTION_ID(), @leak := 'x'").await;
    let second = first_row(&grants, &store, &target, "db/admin", "SELECT CONNECTION_ID(), @leak").await;
    assert_eq!(second[0], first[0], "the admin session was not reused: {first:?} then {second:?}");
    assert_eq!(second[1], Value::Null, "a user variable survived the reset");
    let current = first_row(&grants, &store, &target, "current", "SELECT CONNECTION_ID()").await;
    assert_ne!(current[0], first[0], "a login with the current version was reused");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_plugin_connecting_in_a_loop_is_stopped_at_the_cap() {
    let pg = Postgres::start();
    let outcome = Call::granting(json!({"sql": [pg.addr()]}))
        .probe(with(pg_target(&pg), json!({"call": "sql-connect-loop", "n": 100})))
        .await;
    let message = failure(&outcome);
    // The probe holds every connection: the fifth is refused.
    assert!(message.starts_with("limit: a step may hold at most 4 SQL connections"), "{message}");
    assert!(outcome.log.contains("connection 5 of 100 failed"), "{}", outcome.log);
    // Nothing leaked: once the step is over the server sees every session
    // of the probe end (backends notice a closed socket promptly).
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let sessions = pg.psql("SELECT count(*) FROM pg_stat_activity WHERE application_name = 'tumbler'");
        if sessions == "0" {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "{sessions} sessions still open");
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_gigabyte_postgres_result_is_cut_at_the_byte_cap_without_buffering_it() {
    let pg = Postgres::start();
    let (_, rss_before) = memory();
    let outcome = Call::granting(json!({"sql": [pg.addr()]}))
        .probe(with(
            pg_target(&pg),
            json!({"call": "sql-query", "statement": "SELECT repeat('x', 1000000) FROM generate_series(1, 1000)"}),
        ))
        .await;
    let message = failure(&outcome);
    assert!(message.starts_with("limit: the query returned more than 4194304 bytes"), "{message}");
    let (peak_after, _) = memory();
    assert!(
        peak_after.saturating_sub(rss_before) < 256 << 20,
        "memory grew by {} MiB",
        (peak_after - rss_before) >> 20
    );

    // One value bigger than the cap is cut on the wire, before the driver
    // holds the whole row.
    let one_huge_value = Call::granting(json!({"sql": [pg.addr()]}))
        .probe(with(pg_target(&pg), json!({"call": "sql-query", "statement": "SELECT repeat('x', 500000000)"})))
        .await;
    let message = failure(&one_huge_value);
    assert!(message.starts_with("limit: "), "{message}");
    let (peak_after, _) = memory();
    assert!(
        peak_after.saturating_sub(rss_before) < 256 << 20,
        "memory grew by {} MiB",
        (peak_after - rss_before) >> 20
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn postgres_tls_require_encrypts_and_verify_full_refuses_an_unknown_certificate() {
    let pg = Postgres::start_with_tls();
    let grants = json!({"sql": [pg.addr()]});
    let statement = "SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()";
    let required = Call::granting(grants.clone())
        .probe(with(pg_target(&pg), json!({"call": "sql-query", "tls": "require", "statement": statement})))
        .await;
    assert_eq!(logged_rows(&required)["rows"], json!([[true]]));

    let verified =
        Call::granting(grants).probe(with(pg_target(&pg), json!({"call": "sql", "tls": "verify-full"}))).await;
    let message = failure(&verified);
    assert!(message.starts_with("unreachable: ") && message.contains("UnknownIssuer"), "{message}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_name_resolving_to_loopback_is_refused_unless_the_grant_names_the_ip() {
    let pg = Postgres::start();
    let by_name = Call::granting(json!({"sql": [format!("localhost:{}", pg.port)]}))
        .probe(with(pg_target(&pg), json!({"call": "sql", "host": "localhost"})))
        .await;
    let message = failure(&by_name);
    assert!(message.starts_with("denied: localhost resolves to internal address"), "{message}");
    assert!(message.contains(&format!("127.0.0.1:{}", pg.port)), "{message}");

    let by_ip = Call::granting(json!({"sql": [pg.addr()]})).probe(with(pg_target(&pg), json!({"call": "sql"}))).await;
    succeeded(&by_ip);
}

#[tokio::test(flavor = "multi_thread")]
async fn sql_and_ssh_to_targets_not_granted_are_denied() {
    // No server is needed: the grant is checked before anything is dialled.
    let sql = Call::granting(json!({"sql": ["127.0.0.1:5432"]}))
        .probe(json!({"call": "sql", "host": "127.0.0.1", "port": 5433, "user": "u", "password": "p"}))
        .await;
    let message = failure(&sql);
    assert!(message.starts_with("denied: connecting to 127.0.0.1:5433 is not granted"), "{message}");

    let ssh = Call::granting(json!({"ssh": ["127.0.0.1:22 tofu"]}))
        .probe(json!({"call": "ssh", "host": "10.0.0.9", "port": 22, "username": "u", "password": "p"}))
        .await;
    let message = failure(&ssh);
    assert!(message.starts_with("denied: ssh to 10.0.0.9:22 is not granted"), "{message}");

    // A bare host:port says nothing about the host key: refused, saying how to fix it.
    let unpinned = Call::granting(json!({"ssh": ["127.0.0.1:22"]}))
        .probe(json!({"call": "ssh", "host": "127.0.0.1", "port": 22, "username": "u", "password": "p"}))
        .await;
    let message = failure(&unpinned);
    assert!(message.starts_with("denied: the grant for 127.0.0.1:22 does not say how to check its host key"));
    assert!(message.contains("SHA256:") && message.contains("tofu"), "{message}");
}

// ---------------------------------------------------------------------------
// sql: MariaDB
// ---------------------------------------------------------------------------

fn my_target(db: &Mariadb) -> Value {
    json!({"engine": "mysql", "host": "127.0.0.1", "port": db.port, "user": db.superuser, "password": db.password})
}

#[tokio::test(flavor = "multi_thread")]
async fn mariadb_granted_query_binds_parameters_and_round_trips_awkward_values() {
    let db = Mariadb::start();
    db.sql("CREATE DATABASE app");
    let grants = json!({"sql": [db.addr()]});
    let target = with(my_target(&db), json!({"call": "sql-query", "database": "app"}));
    let run = |extra: Value| Call::granting(grants.clone()).probe(with(target.clone(), extra));

    succeeded(
        &run(json!({"execute": true, "statement":
            "CREATE TABLE kv (k VARCHAR(200) PRIMARY KEY, v VARBINARY(64), n BIGINT, f DOUBLE, b BOOLEAN, d DATETIME)"}))
        .await,
    );
    let inserted = run(json!({"execute": true,
        "statement": "INSERT INTO kv VALUES (?, ?, ?, ?, ?, '2024-02-29 13:14:15'), (?, ?, ?, ?, ?, NULL)",
        "params": [AWKWARD, {"bytes": [0, 1, 255]}, 9_007_199_254_740_993_i64, 1.5, true,
                   "plain", null, null, null, false]}))
    .await;
    succeeded(&inserted);
    assert!(inserted.log.contains("sql-query: 2 rows affected"), "{}", inserted.log);
    assert_eq!(db.sql("SELECT k FROM app.kv WHERE n IS NOT NULL"), AWKWARD.replace('\\', "\\\\"));

    let selected = run(json!({"statement": "SELECT k, v, n, f, b, d FROM kv WHERE k = ?", "params": [AWKWARD]})).await;
    assert_eq!(
        logged_rows(&selected),
        json!({
            "columns": ["k", "v", "n", "f", "b", "d"],
            "rows": [[AWKWARD, {"bytes": [0, 1, 255]}, 9_007_199_254_740_993_i64, 1.5, 1, "2024-02-29 13:14:15"]],
        })
    );

    let missing = run(json!({"statement": "SELECT ?", "params": []})).await;
    assert!(failure(&missing).starts_with("invalid: "), "{}", failure(&missing));
    let unknown = run(json!({"statement": "SELECT * FROM no_such_table"})).await;
    let message = failure(&unknown);
    assert!(message.starts_with("target: ") && message.contains("no_such_table"), "{message}");
}

#[tokio::test(flavor = "multi_thread")]
async fn mariadb_wrong_password_is_auth() {
    let db = Mariadb::start();
    let outcome = Call::granting(json!({"sql": [db.addr()]}))
        .probe(with(my_target(&db), json!({"call": "sql", "password": "not-the-password"})))
        .await;
    let message = failure(&outcome);
    assert!(message.starts_with("auth: ") && message.contains("Access denied"), "{message}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_gigabyte_mariadb_result_is_cut_at_the_byte_cap_without_buffering_it() {
    let db = Mariadb::start();
    let (_, rss_before) = memory();
    let outcome = Call::granting(json!({"sql": [db.addr()]}))
        .probe(with(
            my_target(&db),
            json!({"call": "sql-query", "database": "mysql",
                   "statement": "SELECT REPEAT('x', 1000000) FROM seq_1_to_1000"}),
        ))
        .await;
    let message = failure(&outcome);
    assert!(message.starts_with("limit: the query returned more than 4194304 bytes"), "{message}");

    // One row bigger than the cap is refused as it arrives.
    let one_huge_row = Call::granting(json!({"sql": [db.addr()]}))
        .probe(with(my_target(&db), json!({"call": "sql-query", "statement": "SELECT REPEAT('x', 10000000)"})))
        .await;
    let message = failure(&one_huge_row);
    assert!(message.starts_with("limit: "), "{message}");
    let (peak_after, _) = memory();
    assert!(
        peak_after.saturating_sub(rss_before) < 256 << 20,
        "memory grew by {} MiB",
        (peak_after - rss_before) >> 20
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn mariadb_tls_require_encrypts_and_verify_full_refuses_an_unknown_certificate() {
    let db = Mariadb::start_with_tls();
    let grants = json!({"sql": [db.addr()]});
    let statement =
        "SELECT VARIABLE_VALUE <> '' FROM information_schema.SESSION_STATUS WHERE VARIABLE_NAME = 'Ssl_cipher'";
    let required = Call::granting(grants.clone())
        .probe(with(my_target(&db), json!({"call": "sql-query", "tls": "require", "statement": statement})))
        .await;
    assert_eq!(logged_rows(&required)["rows"], json!([[1]]));

    let verified =
        Call::granting(grants).probe(with(my_target(&db), json!({"call": "sql", "tls": "verify-full"}))).await;
    let message = failure(&verified);
    assert!(message.starts_with("unreachable: ") && message.contains("UnknownIssuer"), "{message}");
}

// ---------------------------------------------------------------------------
// ssh
// ---------------------------------------------------------------------------

fn ssh_call(sshd: &Sshd, private_key: &str, command: &str) -> Value {
    json!({"call": "ssh", "host": "127.0.0.1", "port": sshd.port, "username": sshd.user,
           "private_key": private_key, "command": command})
}

fn test_store() -> (tempfile::TempDir, Store) {
    let dir = tempfile::tempdir().expect("temp dir");
    let store = Store::create(dir.path(), MasterKey::generate()).expect("create a store");
    (dir, store)
}

async fn recorded_fingerprint(store: &Store, target: String) -> Option<String> {
    store
        .read(move |conn, _| {
            let mut rows = conn.prepare("SELECT fingerprint FROM ssh_known_hosts WHERE target = ?1")?;
            let mut found = rows.query_map([&target], |r| r.get::<_, String>(0))?;
            Ok(found.next().transpose()?)
        })
        .await
        .expect("read ssh_known_hosts")
}

#[tokio::test(flavor = "multi_thread")]
async fn ssh_with_a_pinned_host_key_runs_the_command() {
    let key = ssh_keypair("tumbler-test");
    let sshd = Sshd::start(&key.public_key);
    let grants = json!({"ssh": [format!("{} {}", sshd.addr(), sshd.host_key_fingerprint)]});

    let mut call = ssh_call(&sshd, &key.private_key, "read line; echo \"got $line\"; echo oops >&2; exit 3");
    call["stdin"] = json!("hello over stdin\n");
    let outcome = Call::granting(grants.clone()).probe(call).await;
    succeeded(&outcome);
    assert!(outcome.log.contains("ssh: exit 3"), "{}", outcome.log);
    assert!(outcome.log.contains("ssh stdout: got hello over stdin"), "{}", outcome.log);
    assert!(outcome.log.contains("ssh stderr: oops"), "{}", outcome.log);

    // The same login with the key taken from the secret by the host.
    let from_secret = Call::granting(grants.clone())
        .current(json!({"username": sshd.user, "private_key": key.private_key}))
        .probe(json!({"call": "ssh", "host": "127.0.0.1", "port": sshd.port, "secret": "current", "command": "whoami"}))
        .await;
    succeeded(&from_secret);
    assert!(from_secret.log.contains(&format!("ssh stdout: {}", sshd.user)), "{}", from_secret.log);

    // RSA keys sign with SHA-2, as current OpenSSH requires.
    let rsa = ssh_keypair_of_type("rsa", "tumbler-test-rsa");
    std::fs::write(sshd.authorized_keys_path(), format!("{}\n{}\n", key.public_key, rsa.public_key))
        .expect("add the RSA key");
    let with_rsa = Call::granting(grants.clone()).probe(ssh_call(&sshd, &rsa.private_key, "echo rsa")).await;
    succeeded(&with_rsa);
    assert!(with_rsa.log.contains("ssh stdout: rsa"), "{}", with_rsa.log);

    // A key the server does not know is `auth`.
    let stranger = ssh_keypair("stranger");
    let refused = Call::granting(grants).probe(ssh_call(&sshd, &stranger.private_key, "true")).await;
    let message = failure(&refused);
    assert!(message.starts_with("auth: ") && message.contains("refused the login"), "{message}");
}

#[tokio::test(flavor = "multi_thread")]
async fn ssh_output_past_the_cap_is_refused() {
    let key = ssh_keypair("tumbler-test");
    let sshd = Sshd::start(&key.public_key);
    let grants = json!({"ssh": [format!("{} {}", sshd.addr(), sshd.host_key_fingerprint)]});
    let outcome = Call::granting(grants).probe(ssh_call(&sshd, &key.private_key, "head -c 3000000 /dev/zero")).await;
    let message = failure(&outcome);
    assert!(message.starts_with("limit: the command wrote more than 1048576 bytes to stdout"), "{message}");
}

#[tokio::test(flavor = "multi_thread")]
async fn ssh_with_a_wrong_pinned_fingerprint_is_refused_before_logging_in() {
    let key = ssh_keypair("tumbler-test");
    let sshd = Sshd::start(&key.public_key);
    let other_host = ssh_keypair("other-host");
    let wrong = {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("other.pub");
        std::fs::write(&path, &other_host.public_key).expect("write key");
        tumbler_tests::servers::ssh_fingerprint(&path)
    };
    assert_ne!(wrong, sshd.host_key_fingerprint);
    let outcome = Call::granting(json!({"ssh": [format!("{} {wrong}", sshd.addr())]}))
        .probe(ssh_call(&sshd, &key.private_key, "touch /tmp/should-not-run"))
        .await;
    let message = failure(&outcome);
    assert!(message.starts_with(&format!("denied: {} presented host key {}", sshd.addr(), sshd.host_key_fingerprint)));
    assert!(message.contains(&format!("but {wrong} is pinned by the grant")), "{message}");
    // Refused during the key exchange: no login was ever attempted.
    assert!(!sshd.log().contains("Accepted publickey"), "{}", sshd.log());
}

#[tokio::test(flavor = "multi_thread")]
async fn ssh_trust_on_first_use_records_the_key_then_enforces_it() {
    let key = ssh_keypair("tumbler-test");
    let mut sshd = Sshd::start(&key.public_key);
    let (_dir, store) = test_store();
    let grants = json!({"ssh": [format!("{} tofu", sshd.addr())]});
    assert_eq!(recorded_fingerprint(&store, sshd.addr()).await, None);

    let first =
        Call::granting(grants.clone()).store(&store).probe(ssh_call(&sshd, &key.private_key, "echo first")).await;
    succeeded(&first);
    assert_eq!(recorded_fingerprint(&store, sshd.addr()).await, Some(sshd.host_key_fingerprint.clone()));
    let again =
        Call::granting(grants.clone()).store(&store).probe(ssh_call(&sshd, &key.private_key, "echo again")).await;
    succeeded(&again);

    // The host now presents another key: refused, and the record stands.
    let recorded = sshd.host_key_fingerprint.clone();
    sshd.rekey();
    let after = Call::granting(grants).store(&store).probe(ssh_call(&sshd, &key.private_key, "echo after")).await;
    let message = failure(&after);
    assert!(message.starts_with(&format!("denied: {} presented host key {}", sshd.addr(), sshd.host_key_fingerprint)));
    assert!(message.contains(&format!("but {recorded} was recorded on first use")), "{message}");
    assert_eq!(recorded_fingerprint(&store, sshd.addr()).await, Some(recorded));
}
