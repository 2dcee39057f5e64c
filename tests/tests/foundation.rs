//! Foundation: secrets CRUD, input validation, encryption at rest, master key
//! handling, tokens and policies, idempotent writes, listener rules and the
//! CLI — all through the real binary.

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use base64::Engine as _;
use serde_json::{Value, json};
use tumbler_tests::*;

/// A refused start must not take longer than this.
const QUICK_EXIT: Duration = Duration::from_secs(15);
const KIB_64: usize = 64 * 1024;
const MIB: usize = 1024 * 1024;

// ---------------------------------------------------------------------------
// helpers
// ---------------------------------------------------------------------------

fn path_str(path: &Path) -> &str {
    path.to_str().expect("temp paths are UTF-8")
}

/// Asserts a value read returned `value` of `version_id` for `name`.
#[track_caller]
fn assert_value(reply: &Reply, name: &str, value: &str, version_id: &str) {
    assert_eq!(reply.0, 200, "read failed: {reply:?}");
    assert_eq!(reply.1["name"], name, "{reply:?}");
    assert_eq!(reply.1["value"], value, "{reply:?}");
    assert_eq!(reply.1["version_id"], version_id, "{reply:?}");
}

/// Label → version id, asserting no label sits on two versions.
#[track_caller]
fn label_map(versions: &[Value]) -> BTreeMap<String, String> {
    let mut map = BTreeMap::new();
    for version in versions {
        let id = version["version_id"].as_str().expect("version_id").to_string();
        for label in version["labels"].as_array().expect("labels array") {
            let label = label.as_str().expect("label is a string").to_string();
            if let Some(other) = map.insert(label.clone(), id.clone()) {
                panic!("label {label} on two versions ({other}, {id}): {versions:?}");
            }
        }
    }
    map
}

fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs.iter().map(|(l, v)| (l.to_string(), v.to_string())).collect()
}

fn version_ids(versions: &[Value]) -> Vec<String> {
    versions.iter().map(|v| v["version_id"].as_str().expect("version_id").to_string()).collect()
}

/// Everything a client can see of the store: describe of every secret,
/// deleted ones included. Equal snapshots mean nothing was written.
async fn store_snapshot(c: &Client) -> Vec<Value> {
    let mut snapshot = Vec::new();
    for name in c.list_names(&[("include_deleted", "true")]).await {
        let reply = c.describe(&name).await;
        assert_eq!(reply.0, 200, "describe {name}: {reply:?}");
        snapshot.push(reply.1);
    }
    snapshot
}

/// `POST NAME:versions {value, client_token}`.
async fn write_with_client_token(c: &Client, name: &str, value: &str, client_token: &str) -> Reply {
    let body = json!({"value": value, "client_token": client_token});
    c.post(&format!("{}:versions", secret_path(name)), &body).await
}

/// `PUT NAME:labels/LABEL {version_id}`; asserts success.
async fn move_label(c: &Client, name: &str, label: &str, version_id: &str) {
    let path = format!("{}:labels/{label}", secret_path(name));
    let reply = c.put(&path, &json!({"version_id": version_id})).await;
    assert!(matches!(reply.0, 200 | 204), "move {label} to {version_id}: {reply:?}");
}

/// `DELETE NAME?QUERY`.
async fn delete_secret(c: &Client, name: &str, query: &str) -> Reply {
    c.delete(&format!("{}{query}", secret_path(name))).await
}

#[track_caller]
fn assert_success(reply: &Reply, what: &str) {
    assert!((200..300).contains(&reply.0), "{what}: {reply:?}");
}

/// A value read of a soft-deleted secret must fail with a client error.
#[track_caller]
fn assert_read_refused(reply: &Reply) {
    assert!((400..500).contains(&reply.0), "read of a deleted secret succeeded: {reply:?}");
    assert!(!error_code(&reply.1).is_empty(), "no error code: {reply:?}");
}

/// Runs a serve command that must exit before it starts listening.
fn expect_exit(cmd: Command) -> Exited {
    match Server::spawn(cmd) {
        Ok(server) => panic!("server started at {} but should have refused", server.url()),
        Err(exited) => exited,
    }
}

/// Asserts two snapshots of a directory are byte-identical.
#[track_caller]
fn assert_same_files(before: &BTreeMap<PathBuf, Vec<u8>>, after: &BTreeMap<PathBuf, Vec<u8>>) {
    let paths: BTreeSet<_> = before.keys().chain(after.keys()).collect();
    let changed: Vec<_> = paths.into_iter().filter(|p| before.get(*p) != after.get(*p)).collect();
    assert!(changed.is_empty(), "files changed: {changed:?}");
}

/// Asserts the serve `cmd` is refused quickly for a wrong master key and
/// leaves `data_dir` byte-identical.
fn assert_wrong_key_refused(cmd: Command, data_dir: &Path) {
    let before = dir_contents(data_dir);
    assert!(!before.is_empty(), "empty data dir {}", data_dir.display());
    let exited = expect_exit(cmd);
    assert!(!exited.status.success(), "exit status 0: {exited:?}");
    assert!(exited.after < QUICK_EXIT, "took too long to refuse: {exited:?}");
    let stderr = exited.stderr.to_lowercase();
    assert!(
        stderr.contains("master key") && stderr.contains("match"),
        "no message that the master key does not match: {exited:?}"
    );
    assert_same_files(&before, &dir_contents(data_dir));
}

/// `tumbler operator rotate-master-key` on the instance's store.
fn rotate_master_key(t: &Instance) -> CmdOutput {
    let mut cmd = command(["operator", "rotate-master-key"]);
    cmd.args(t.store_args());
    run(cmd, None)
}

/// Asserts no file under `dir` holds any of `values`.
#[track_caller]
fn assert_no_plaintext(dir: &Path, values: &[String]) {
    let files = dir_contents(dir);
    assert!(files.contains_key(&dir.join("tumbler.db")), "no tumbler.db in {}", dir.display());
    for (path, bytes) in &files {
        for value in values {
            assert!(!contains_bytes(bytes, value.as_bytes()), "plaintext {value} found in {}", path.display());
        }
    }
}

fn app_read_rules() -> Value {
    json!([{"names": "app/*", "capabilities": ["read", "list"]}])
}

// ---------------------------------------------------------------------------
// secrets: versions, labels, listing, deletion
// ---------------------------------------------------------------------------

#[tokio::test]
async fn new_version_becomes_current_and_old_one_previous() {
    let t = Instance::start();
    let c = t.root();
    let name = "app/db/main";

    let v1 = c.create_secret(name, "first").await;
    assert_eq!(c.read_value(name).await, "first");
    let v2 = c.add_version(name, "second").await;
    assert_ne!(v1, v2);

    assert_value(&c.read_label(name, "current").await, name, "second", &v2);
    assert_value(&c.read_label(name, "previous").await, name, "first", &v1);
    assert_value(&c.read_version(name, &v1).await, name, "first", &v1);
    assert_value(&c.read_version(name, &v2).await, name, "second", &v2);
    assert_eq!(c.read_value(name).await, "second", "reads default to current");

    let versions = c.versions(name).await;
    assert_eq!(versions.len(), 2, "{versions:?}");
    assert_eq!(label_map(&versions), labels(&[("current", &v2), ("previous", &v1)]));
}

#[tokio::test]
async fn moving_a_label() {
    let t = Instance::start();
    let c = t.root();
    let name = "app/labels";
    let v1 = c.create_secret(name, "one").await;
    let v2 = c.add_version(name, "two").await;
    let v3 = c.add_version(name, "three").await;

    move_label(&c, name, "stable", &v1).await;
    assert_value(&c.read_label(name, "stable").await, name, "one", &v1);

    // Moving `current` makes the old current `previous`.
    move_label(&c, name, "current", &v1).await;
    assert_value(&c.read_label(name, "current").await, name, "one", &v1);
    assert_value(&c.read_label(name, "previous").await, name, "three", &v3);
    assert_eq!(label_map(&c.versions(name).await), labels(&[("current", &v1), ("previous", &v3), ("stable", &v1)]));

    // A label sits on one version at most.
    move_label(&c, name, "stable", &v2).await;
    assert_value(&c.read_label(name, "stable").await, name, "two", &v2);
    assert_eq!(label_map(&c.versions(name).await), labels(&[("current", &v1), ("previous", &v3), ("stable", &v2)]));
}

#[tokio::test]
async fn listing_pages_through_250_secrets_and_filters_by_prefix() {
    let t = Instance::start();
    let c = t.root();
    let team_a: Vec<String> = (0..150).map(|i| format!("team-a/s-{i:03}")).collect();
    let team_b: Vec<String> = (0..100).map(|i| format!("team-b/s-{i:03}")).collect();
    for name in team_a.iter().chain(&team_b) {
        c.create_secret(name, "v").await;
    }
    let all: BTreeSet<String> = team_a.iter().chain(&team_b).cloned().collect();

    let pages = c.list_pages(&[("limit", "100")]).await;
    let sizes: Vec<usize> = pages.iter().map(Vec::len).collect();
    assert_eq!(sizes, [100, 100, 50], "page sizes (the last page carries no next_page_token)");
    let listed: Vec<String> = pages.concat();
    let unique: BTreeSet<String> = listed.iter().cloned().collect();
    assert_eq!(unique.len(), listed.len(), "duplicates across pages");
    assert_eq!(unique, all);

    let pages = c.list_pages(&[("prefix", "team-b/"), ("limit", "40")]).await;
    let sizes: Vec<usize> = pages.iter().map(Vec::len).collect();
    assert_eq!(sizes, [40, 40, 20]);
    let listed: BTreeSet<String> = pages.concat().into_iter().collect();
    assert_eq!(listed, team_b.iter().cloned().collect::<BTreeSet<_>>());
}

#[tokio::test]
async fn soft_delete_hides_the_secret_until_restored() {
    let t = Instance::start();
    let c = t.root();
    let name = "app/soft";
    c.create_secret(name, "keep-me").await;

    assert_success(&delete_secret(&c, name, "?recovery_days=7").await, "soft delete");
    assert_read_refused(&c.read_label(name, "current").await);
    let described = c.describe(name).await;
    assert_eq!(described.0, 200, "{described:?}");
    assert!(described.1["deleted_at"].is_string(), "no deletion date: {described:?}");
    assert!(!c.list_names(&[]).await.contains(&name.to_string()), "deleted secret listed");
    assert!(c.list_names(&[("include_deleted", "true")]).await.contains(&name.to_string()));

    let restored = c.post(&format!("{}:restore", secret_path(name)), &json!({})).await;
    assert_success(&restored, "restore");
    assert_eq!(c.read_value(name).await, "keep-me");
    let described = c.describe(name).await;
    assert!(described.1.get("deleted_at").is_none_or(Value::is_null), "{described:?}");
    assert!(c.list_names(&[]).await.contains(&name.to_string()));
}

#[tokio::test]
async fn recovery_window_outside_7_to_30_days_is_rejected() {
    let t = Instance::start();
    let c = t.root();
    let name = "app/window";
    c.create_secret(name, "v").await;
    let before = store_snapshot(&c).await;

    for days in ["3", "31"] {
        let reply = delete_secret(&c, name, &format!("?recovery_days={days}")).await;
        assert_error(&reply, 400, "invalid_request");
    }
    assert_eq!(store_snapshot(&c).await, before);
    assert_eq!(c.read_value(name).await, "v");
}

#[tokio::test]
async fn creating_over_a_soft_deleted_name_conflicts() {
    let t = Instance::start();
    let c = t.root();
    let name = "app/taken";
    c.create_secret(name, "original").await;
    assert_success(&delete_secret(&c, name, "").await, "soft delete");

    let reply = c.post("/v1/secrets", &json!({"name": name, "value": "usurper"})).await;
    assert_error(&reply, 409, "conflict");

    assert_success(&c.post(&format!("{}:restore", secret_path(name)), &json!({})).await, "restore");
    assert_eq!(c.read_value(name).await, "original");
}

#[tokio::test]
async fn force_delete_purges_at_once_and_frees_the_name() {
    let t = Instance::start();
    let c = t.root();
    let name = "app/purged";
    let v1 = c.create_secret(name, "old-1").await;
    c.add_version(name, "old-2").await;

    assert_success(&delete_secret(&c, name, "?force=true").await, "force delete");
    assert_error(&c.describe(name).await, 404, "not_found");
    assert_error(&c.read_label(name, "current").await, 404, "not_found");
    assert_error(&c.read_version(name, &v1).await, 404, "not_found");
    assert_error(&c.get(&format!("{}:versions", secret_path(name))).await, 404, "not_found");
    assert!(!c.list_names(&[("include_deleted", "true")]).await.contains(&name.to_string()));

    let fresh = c.create_secret(name, "new").await;
    assert_eq!(c.read_value(name).await, "new");
    assert_eq!(version_ids(&c.versions(name).await), [fresh]);
}

// ---------------------------------------------------------------------------
// bad input: refused, and nothing written
// ---------------------------------------------------------------------------

#[tokio::test]
async fn invalid_names_are_rejected() {
    let t = Instance::start();
    let c = t.root();
    c.create_secret("app/existing", "v").await;
    let before = store_snapshot(&c).await;

    for name in ["a:b", "app/a b", "app/a#b", "", &"x".repeat(513)] {
        let reply = c.post("/v1/secrets", &json!({"name": name, "value": "v"})).await;
        assert_error(&reply, 400, "invalid_request");
    }
    assert_eq!(store_snapshot(&c).await, before);
}

#[tokio::test]
async fn empty_value_is_rejected() {
    let t = Instance::start();
    let c = t.root();
    c.create_secret("app/existing", "v").await;
    let before = store_snapshot(&c).await;

    let reply = c.post("/v1/secrets", &json!({"name": "app/empty", "value": ""})).await;
    assert_error(&reply, 400, "invalid_request");
    let reply = c.post(&format!("{}:versions", secret_path("app/existing")), &json!({"value": ""})).await;
    assert_error(&reply, 400, "invalid_request");
    assert_eq!(store_snapshot(&c).await, before);
}

#[tokio::test]
async fn values_are_limited_to_64_kib() {
    let t = Instance::start();
    let c = t.root();
    let largest = "a".repeat(KIB_64);
    c.create_secret("app/big", &largest).await;
    assert_eq!(c.read_value("app/big").await, largest);
    let before = store_snapshot(&c).await;

    let too_big = "b".repeat(KIB_64 + 1);
    let reply = c.post("/v1/secrets", &json!({"name": "app/too-big", "value": too_big})).await;
    assert_error(&reply, 413, "too_large");
    let reply = c.post(&format!("{}:versions", secret_path("app/big")), &json!({"value": too_big})).await;
    assert_error(&reply, 413, "too_large");
    assert_eq!(store_snapshot(&c).await, before);
}

#[tokio::test]
async fn request_body_over_1_mib_is_too_large() {
    let t = Instance::start();
    let c = t.root();
    c.create_secret("app/existing", "v").await;
    let before = store_snapshot(&c).await;

    let huge = "c".repeat(MIB + 1);
    let reply = c.post_expect_continue("/v1/secrets", &json!({"name": "app/huge", "value": huge})).await;
    assert_error(&reply, 413, "too_large");
    let path = format!("{}:versions", secret_path("app/existing"));
    let reply = c.post_expect_continue(&path, &json!({"value": huge})).await;
    assert_error(&reply, 413, "too_large");
    assert_eq!(store_snapshot(&c).await, before);
}

#[tokio::test]
async fn malformed_json_is_rejected_without_echoing_it() {
    let t = Instance::start();
    let c = t.root();
    c.create_secret("app/existing", "v").await;
    let before = store_snapshot(&c).await;

    let secret = "s3cr3t-in-broken-json";
    let bodies = [format!(r#"{{"name": "app/broken", "value": "{secret}"#), format!("value={secret}")];
    for body in bodies {
        let reply =
            c.send_raw(reqwest::Method::POST, "/v1/secrets", &[], Some(("application/json", body.into_bytes()))).await;
        assert_error(&reply, 400, "invalid_request");
        assert!(!reply.1.to_string().contains(secret), "value echoed: {reply:?}");
    }
    assert_eq!(store_snapshot(&c).await, before);
}

#[tokio::test]
async fn error_messages_never_contain_the_submitted_value() {
    let t = Instance::start();
    let c = t.root();
    c.create_secret("app/existing", "v").await;
    let before = store_snapshot(&c).await;

    let reply = c.post("/v1/secrets", &json!({"name": "x", "value": 12345678})).await;
    assert_error(&reply, 400, "invalid_request");
    assert!(!reply.1.to_string().contains("12345678"), "value echoed: {reply:?}");

    let path = format!("{}:versions", secret_path("app/existing"));
    let reply = c.post(&path, &json!({"value": 12345678})).await;
    assert_error(&reply, 400, "invalid_request");
    assert!(!reply.1.to_string().contains("12345678"), "value echoed: {reply:?}");
    assert_eq!(store_snapshot(&c).await, before);
}

#[tokio::test]
async fn unknown_label_or_version_is_not_found() {
    let t = Instance::start();
    let c = t.root();
    c.create_secret("app/one", "1").await;
    let other_version = c.create_secret("app/two", "2").await;

    assert_error(&c.read_label("app/one", "nope").await, 404, "not_found");
    // A real version id, but of another secret.
    assert_error(&c.read_version("app/one", &other_version).await, 404, "not_found");
    assert_error(&c.read_label("app/none", "current").await, 404, "not_found");
}

#[tokio::test]
async fn missing_or_wrong_token_is_unauthorized() {
    let t = Instance::start();
    let root = t.root();
    root.create_secret("app/existing", "v").await;
    let before = store_snapshot(&root).await;

    let wrong = format!("tmb_{}", random_string(40));
    for client in [t.client(None), t.client(Some(&wrong))] {
        assert_error(&client.list(&[]).await, 401, "unauthorized");
        assert_error(&client.read_label("app/existing", "current").await, 401, "unauthorized");
        let reply = client.post("/v1/secrets", &json!({"name": "app/intruder", "value": "v"})).await;
        assert_error(&reply, 401, "unauthorized");
    }
    assert_eq!(store_snapshot(&root).await, before);
}

// ---------------------------------------------------------------------------
// encryption at rest and the master key
// ---------------------------------------------------------------------------

#[tokio::test]
async fn plaintext_never_reaches_disk_or_logs() {
    let mut t = Instance::start();
    let c = t.root();
    let mut values = Vec::new();
    for i in 0..4 {
        let name = format!("app/plain/{i}");
        let first = random_string(40);
        c.create_secret(&name, &first).await;
        values.push(first);
        for _ in 0..i {
            let next = random_string(40);
            c.add_version(&name, &next).await;
            values.push(next);
        }
    }
    let idempotent = random_string(40);
    let reply = write_with_client_token(&c, "app/plain/0", &idempotent, "ct-plain").await;
    assert!(matches!(reply.0, 200 | 201), "{reply:?}");
    values.push(idempotent);

    assert_no_plaintext(&t.data_dir, &values);
    let logs = format!("{}{}", t.server().stdout(), t.server().stderr());
    for value in &values {
        assert!(!logs.contains(value.as_str()), "value {value} in server output");
    }
    t.stop();
    assert_no_plaintext(&t.data_dir, &values);
}

#[tokio::test]
async fn a_refused_request_logs_its_method_route_and_status_and_a_read_logs_no_line() {
    let inst = Instance::init();
    let mut cmd = serve_command(inst.store_args());
    // The shipped default level, whatever the caller's shell says.
    cmd.env("TUMBLER_LOG", "info");
    let mut server = Server::spawn(cmd).expect("server starts");
    let c = Client::new(server.url(), Some(&inst.root_token));
    c.create_secret("app/logged", "logged-value").await;
    let http = reqwest::Client::new();
    let get = |path: &str, id: &str| {
        http.get(format!("{}{path}", server.url())).bearer_auth(&inst.root_token).header("x-request-id", id).send()
    };
    assert_eq!(get("/v1/secrets/app/logged:value", "quiet-read-1").await.unwrap().status(), 200);
    assert_eq!(get("/v1/secrets/app/missing:value", "loud-miss-1").await.unwrap().status(), 404);

    let mut line = None;
    for _ in 0..100 {
        line = server.stderr().lines().find(|l| l.contains("loud-miss-1")).map(str::to_owned);
        if line.is_some() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let line = line.unwrap_or_else(|| panic!("no line for the refused request:\n{}", server.stderr()));
    for part in ["request finished", "method=GET", "route=/v1/secrets/{*path}", "status=404", "latency_ms="] {
        assert!(line.contains(part), "{part:?} missing from {line:?}");
    }
    assert!(!line.contains("app/missing"), "a secret name in a log line: {line}");
    server.stop();
    let logs = format!("{}{}", server.stdout(), server.stderr());
    assert!(!logs.contains("quiet-read-1"), "a successful read logged a line at info:\n{logs}");
    assert!(!logs.contains("logged-value"));
}

#[tokio::test]
async fn ciphertext_moved_to_another_version_fails_to_decrypt() {
    let mut t = Instance::start();
    let name = "app/moved";
    let (a, b) = {
        let c = t.root();
        (c.create_secret(name, "value-A").await, c.add_version(name, "value-B").await)
    };
    t.stop();

    let db = rusqlite::Connection::open(t.data_dir.join("tumbler.db")).expect("open tumbler.db");
    let (nonce, ciphertext): (Vec<u8>, Vec<u8>) = db
        .query_row("SELECT nonce, ciphertext FROM versions WHERE id = ?1", [&a], |row| Ok((row.get(0)?, row.get(1)?)))
        .expect("version A's row");
    let updated = db
        .execute(
            "UPDATE versions SET nonce = ?1, ciphertext = ?2 WHERE id = ?3",
            rusqlite::params![nonce, ciphertext, b],
        )
        .expect("overwrite version B's row");
    assert_eq!(updated, 1);
    drop(db);

    t.serve();
    let c = t.root();
    let reply = c.read_version(name, &b).await;
    assert_error(&reply, 500, "internal");
    let message = error_message(&reply.1).to_lowercase();
    assert!(message.contains("decrypt") || message.contains("integrity"), "{reply:?}");
    assert!(!reply.1.to_string().contains("value-A"), "{reply:?}");

    assert_value(&c.read_version(name, &a).await, name, "value-A", &a);
    assert!(t.server().is_running(), "server died: {}", t.server().stderr());
}

#[tokio::test]
async fn wrong_master_key_file_is_refused_and_store_untouched() {
    let mut store = Instance::start();
    store.root().create_secret("app/keyed", "v").await;
    store.stop();
    let other = Instance::init();

    let mut cmd = serve_command(["--data-dir", path_str(&store.data_dir)]);
    cmd.args(["--key-file", path_str(&other.key_file)]);
    assert_wrong_key_refused(cmd, &store.data_dir);

    // The right key still opens it.
    store.serve();
    assert_eq!(store.root().read_value("app/keyed").await, "v");
}

#[test]
fn wrong_master_key_from_env_is_refused() {
    let store = Instance::init();
    let home = store.dir.path().join("home");
    std::fs::create_dir_all(home.join(".config")).unwrap();
    let wrong_key = base64::engine::general_purpose::STANDARD.encode(random_bytes(32));

    let mut cmd = serve_command(["--data-dir", path_str(&store.data_dir)]);
    cmd.env("TUMBLER_MASTER_KEY", wrong_key).env("HOME", &home).env("XDG_CONFIG_HOME", home.join(".config"));
    assert_wrong_key_refused(cmd, &store.data_dir);
}

#[tokio::test]
async fn rotate_master_key_refuses_while_a_server_holds_the_data_dir() {
    let t = Instance::start();
    t.root().create_secret("app/k", "v").await;
    let key_before = std::fs::read(&t.key_file).unwrap();

    let out = rotate_master_key(&t);
    out.assert_failure();
    let text = out.text_lowercase();
    assert!(
        ["running", "in use", "locked"].iter().any(|w| text.contains(w)),
        "no message about the running server: {out:?}"
    );
    assert_eq!(std::fs::read(&t.key_file).unwrap(), key_before, "key file changed");
    assert_eq!(t.root().read_value("app/k").await, "v");
}

#[tokio::test]
async fn rotate_master_key_rewraps_every_value_and_retires_the_old_key() {
    let mut t = Instance::start();
    let mut expected = Vec::new(); // (name, version id, value)
    {
        let c = t.root();
        for i in 0..3 {
            let name = format!("app/rewrap/{i}");
            let value = random_string(24);
            expected.push((name.clone(), c.create_secret(&name, &value).await, value));
            let value = random_string(24);
            expected.push((name.clone(), c.add_version(&name, &value).await, value));
        }
    }
    t.stop();
    let old_key = t.dir.path().join("old.key");
    std::fs::copy(&t.key_file, &old_key).unwrap();

    rotate_master_key(&t).assert_success();
    assert_ne!(std::fs::read(&t.key_file).unwrap(), std::fs::read(&old_key).unwrap(), "key unchanged");
    let mode = std::fs::metadata(&t.key_file).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600, "new key file mode {mode:o}");

    t.serve();
    let c = t.root();
    for (name, version_id, value) in &expected {
        assert_value(&c.read_version(name, version_id).await, name, value, version_id);
    }
    t.stop();

    let mut cmd = serve_command(["--data-dir", path_str(&t.data_dir)]);
    cmd.args(["--key-file", path_str(&old_key)]);
    assert_wrong_key_refused(cmd, &t.data_dir);
}

#[test]
fn init_keeps_the_default_key_file_outside_the_data_dir_with_mode_0600() {
    let tmp = tempfile::tempdir().unwrap();
    let home = tmp.path().join("home");
    std::fs::create_dir_all(home.join(".config")).unwrap();
    let data_dir = tmp.path().join("data");

    let mut cmd = init_command(&data_dir, None);
    cmd.env("HOME", &home).env("XDG_CONFIG_HOME", home.join(".config"));
    let out = run_init(cmd);

    let key_file = out.key_file.canonicalize().expect("key file exists");
    let data_dir = data_dir.canonicalize().expect("data dir exists");
    assert!(!key_file.starts_with(&data_dir), "{} is inside {}", key_file.display(), data_dir.display());
    let mode = std::fs::metadata(&key_file).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600, "key file mode {mode:o}");
}

// ---------------------------------------------------------------------------
// tokens and policies
// ---------------------------------------------------------------------------

#[tokio::test]
async fn scoped_token_gets_only_what_its_policy_grants() {
    let t = Instance::start();
    let root = t.root();
    root.put_policy("app-read", app_read_rules()).await;
    for name in ["app/x", "app/y", "db/x", "app/x/y"] {
        root.create_secret(name, &format!("value of {name}")).await;
    }
    let token = root.create_token("reader", &["app-read"], "1h").await;
    assert!(token.token.starts_with("tmb_"), "{token:?}");
    let reader = t.client(Some(&token.token));

    assert_eq!(reader.read_value("app/x").await, "value of app/x");
    assert_error(&reader.read_label("db/x", "current").await, 403, "forbidden");
    assert_error(&reader.read_label("app/x/y", "current").await, 403, "forbidden");
    let write = reader.post(&format!("{}:versions", secret_path("app/x")), &json!({"value": "w"})).await;
    assert_error(&write, 403, "forbidden");
    let create = reader.post("/v1/secrets", &json!({"name": "app/z", "value": "z"})).await;
    assert_error(&create, 403, "forbidden");

    let mut listed = reader.list_names(&[]).await;
    listed.sort();
    assert_eq!(listed, ["app/x", "app/y"]);
    assert_error(&t.client(None).read_label("app/x", "current").await, 401, "unauthorized");

    assert_eq!(root.versions("app/x").await.len(), 1, "refused write changed app/x");
    assert_error(&root.describe("app/z").await, 404, "not_found");
}

#[tokio::test]
async fn tokens_mint_only_subsets_of_their_policies_with_no_longer_ttl() {
    let t = Instance::start();
    let root = t.root();
    root.put_policy("app-read", app_read_rules()).await;
    root.put_policy("token-admin", json!([{"names": "sys/tokens", "capabilities": ["admin"]}])).await;
    root.put_policy("db-read", json!([{"names": "db/*", "capabilities": ["read", "list"]}])).await;
    root.create_secret("app/x", "x").await;
    root.create_secret("db/x", "d").await;
    let parent = root.create_token("minter", &["app-read", "token-admin"], "1h").await;
    let minter = t.client(Some(&parent.token));

    let foreign = minter.try_create_token("escalate", &["db-read"], "30m").await;
    assert_error(&foreign, 403, "forbidden");
    let mixed = minter.try_create_token("escalate", &["app-read", "db-read"], "30m").await;
    assert_error(&mixed, 403, "forbidden");
    let longer = minter.try_create_token("long", &["app-read"], "2h").await;
    assert!(
        matches!((longer.0, error_code(&longer.1)), (403, "forbidden") | (400, "invalid_request")),
        "longer TTL accepted or wrong error: {longer:?}"
    );

    let child = minter.create_token("child", &["app-read"], "30m").await;
    let child = t.client(Some(&child.token));
    assert_eq!(child.read_value("app/x").await, "x");
    assert_error(&child.read_label("db/x", "current").await, 403, "forbidden");
    assert_error(&child.try_create_token("grandchild", &["app-read"], "10m").await, 403, "forbidden");
}

#[tokio::test]
async fn revoked_token_is_refused_on_its_next_request() {
    let t = Instance::start();
    let root = t.root();
    root.put_policy("app-read", app_read_rules()).await;
    root.create_secret("app/x", "x").await;
    let token = root.create_token("short-lived", &["app-read"], "1h").await;
    let holder = t.client(Some(&token.token));
    assert_eq!(holder.read_value("app/x").await, "x");

    let revoked = root.delete(&format!("/v1/tokens/{}", token.id)).await;
    assert!(matches!(revoked.0, 200 | 204), "revoke: {revoked:?}");
    assert_error(&holder.read_label("app/x", "current").await, 401, "unauthorized");
}

// The server caches authenticated tokens; these check that no change to a
// token or a policy is ever hidden by it, each on a token used just before.

#[tokio::test]
async fn revoking_a_parent_refuses_its_child_on_the_next_request() {
    let t = Instance::start();
    let root = t.root();
    root.put_policy("app-read", app_read_rules()).await;
    root.put_policy("token-admin", json!([{"names": "sys/tokens", "capabilities": ["admin"]}])).await;
    root.create_secret("app/x", "x").await;
    let parent = root.create_token("parent", &["app-read", "token-admin"], "1h").await;
    let child = t.client(Some(&parent.token)).create_token("child", &["app-read"], "30m").await;
    let child_client = t.client(Some(&child.token));
    for _ in 0..3 {
        assert_eq!(child_client.read_value("app/x").await, "x");
    }

    let revoked = root.delete(&format!("/v1/tokens/{}", parent.id)).await;
    assert_eq!(revoked.0, 200, "revoke: {revoked:?}");
    assert_eq!(revoked.1["revoked"], 2, "{revoked:?}");
    assert_error(&child_client.read_label("app/x", "current").await, 401, "unauthorized");
    assert_error(&t.client(Some(&parent.token)).read_label("app/x", "current").await, 401, "unauthorized");
}

#[tokio::test]
async fn a_policy_change_applies_to_the_next_request() {
    let t = Instance::start();
    let root = t.root();
    root.put_policy("app-read", app_read_rules()).await;
    root.create_secret("app/x", "x").await;
    root.create_secret("db/x", "d").await;
    let token = root.create_token("reader", &["app-read"], "1h").await;
    let reader = t.client(Some(&token.token));
    assert_eq!(reader.read_value("app/x").await, "x");
    assert_error(&reader.read_label("db/x", "current").await, 403, "forbidden");

    // Same policy name, other rules: the token now reads db/*, not app/*.
    root.put_policy("app-read", json!([{"names": "db/*", "capabilities": ["read"]}])).await;
    assert_error(&reader.read_label("app/x", "current").await, 403, "forbidden");
    assert_eq!(reader.read_value("db/x").await, "d");

    let deleted = root.delete("/v1/policies/app-read").await;
    assert_eq!(deleted.0, 200, "{deleted:?}");
    assert_error(&reader.read_label("db/x", "current").await, 403, "forbidden");
}

#[tokio::test]
async fn a_token_used_just_before_it_expires_is_refused_after() {
    let t = Instance::start();
    let root = t.root();
    root.put_policy("app-read", app_read_rules()).await;
    root.create_secret("app/x", "x").await;
    let token = root.create_token("brief", &["app-read"], "2s").await;
    let holder = t.client(Some(&token.token));
    assert_eq!(holder.read_value("app/x").await, "x");
    tokio::time::sleep(Duration::from_millis(2200)).await;
    let refused = holder.read_label("app/x", "current").await;
    assert_error(&refused, 401, "unauthorized");
    assert!(refused.1.to_string().contains("expired"), "{refused:?}");
}

// ---------------------------------------------------------------------------
// idempotent concurrent writes
// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_writers_with_client_tokens_are_idempotent() {
    const WRITERS: usize = 32;
    let t = Instance::start();
    let c = t.root();
    let name = "app/contended";
    let initial = c.create_secret(name, "v-initial").await;

    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..WRITERS {
        let c = c.clone();
        tasks.spawn(async move { (i, write_with_client_token(&c, name, &format!("v-{i}"), &format!("ct-{i}")).await) });
    }
    let mut ids = vec![String::new(); WRITERS];
    while let Some(joined) = tasks.join_next().await {
        let (i, reply) = joined.expect("writer task");
        assert!(matches!(reply.0, 200 | 201), "writer {i}: {reply:?}");
        ids[i] = version_id_of(&reply);
    }
    let distinct: HashSet<&String> = ids.iter().collect();
    assert_eq!(distinct.len(), WRITERS, "version ids not distinct: {ids:?}");
    assert!(!distinct.contains(&initial));

    let versions = c.versions(name).await;
    assert_eq!(versions.len(), WRITERS + 1);
    let listed: HashSet<String> = version_ids(&versions).into_iter().collect();
    let expected: HashSet<String> = ids.iter().cloned().chain([initial]).collect();
    assert_eq!(listed, expected);
    let current = &label_map(&versions)["current"];
    assert!(ids.contains(current), "current is not one of the writes");

    for (i, id) in ids.iter().enumerate() {
        let retry = write_with_client_token(&c, name, &format!("v-{i}"), &format!("ct-{i}")).await;
        assert!(matches!(retry.0, 200 | 201), "retry {i}: {retry:?}");
        assert_eq!(&version_id_of(&retry), id, "retry {i} made a new version");
    }
    assert_eq!(c.versions(name).await.len(), WRITERS + 1, "retries created versions");

    let reuse = write_with_client_token(&c, name, "another value", "ct-0").await;
    assert_error(&reuse, 409, "conflict");
    assert_eq!(c.versions(name).await.len(), WRITERS + 1);
}

// ---------------------------------------------------------------------------
// the listener
// ---------------------------------------------------------------------------

#[tokio::test]
async fn plain_http_off_loopback_requires_insecure_plaintext() {
    let t = Instance::init();
    let mut args = t.store_args();
    args.extend(["--listen".into(), "0.0.0.0:0".into()]);

    let exited = expect_exit(serve_command(&args));
    assert!(!exited.status.success(), "{exited:?}");
    assert!(exited.text_lowercase().contains("--insecure-plaintext"), "{exited:?}");

    args.push("--insecure-plaintext".into());
    let server = Server::start(&args);
    let health = Client::new(&format!("http://127.0.0.1:{}", server.port()), None).get("/v1/health").await;
    assert_eq!(health.0, 200, "{health:?}");
}

#[tokio::test]
async fn tls_listener_serves_https_only() {
    let mut t = Instance::init();
    let certified = rcgen::generate_simple_self_signed(vec!["localhost".into(), "127.0.0.1".into()])
        .expect("self-signed certificate");
    let cert_pem = certified.cert.pem();
    let (cert_file, key_file) = (t.dir.path().join("cert.pem"), t.dir.path().join("key.pem"));
    std::fs::write(&cert_file, &cert_pem).unwrap();
    std::fs::write(&key_file, certified.key_pair.serialize_pem()).unwrap();

    t.serve_with(["--tls-cert", path_str(&cert_file), "--tls-key", path_str(&key_file)]);
    assert!(t.url().starts_with("https://"), "listening on {}", t.url());
    let http = reqwest::Client::builder()
        .add_root_certificate(reqwest::Certificate::from_pem(cert_pem.as_bytes()).unwrap())
        .timeout(Duration::from_secs(30))
        .build()
        .unwrap();
    let c = Client::with_http(http, t.url(), Some(&t.root_token));
    c.create_secret("app/tls", "over-tls").await;
    assert_eq!(c.read_value("app/tls").await, "over-tls");

    let untrusting = reqwest::Client::new().get(format!("{}/v1/health", t.url())).send().await;
    assert!(untrusting.is_err(), "certificate not verified: {untrusting:?}");
    let port = t.server().port();
    let plain = reqwest::Client::new().get(format!("http://127.0.0.1:{port}/v1/health")).send().await;
    if let Ok(response) = plain {
        assert!(!response.status().is_success(), "plain HTTP served on the TLS port: {response:?}");
    }
}

#[tokio::test]
async fn health_is_public_and_openapi_describes_the_api() {
    let t = Instance::start();
    assert_eq!(t.client(None).get("/v1/health").await.0, 200);

    let reply = t.root().get("/v1/openapi.json").await;
    assert_eq!(reply.0, 200, "{reply:?}");
    let version = reply.1["openapi"].as_str().unwrap_or_default();
    assert!(version.starts_with('3'), "openapi field: {:?}", reply.1["openapi"]);
    assert!(reply.1["paths"].get("/v1/secrets").is_some(), "no /v1/secrets path");
    assert_error(&t.client(None).get("/v1/openapi.json").await, 401, "unauthorized");
}

#[tokio::test]
async fn dev_mode_uses_the_given_root_token() {
    let root_token = format!("dev-root-{}", random_string(16));
    let mut server = Server::start(["--dev", "--dev-root-token", &root_token]);
    let c = Client::new(server.url(), Some(&root_token));
    c.create_secret("app/dev", "dev-value").await;
    assert_eq!(c.read_value("app/dev").await, "dev-value");
    assert_error(&c.with_token(Some("dev-root-wrong")).list(&[]).await, 401, "unauthorized");
    // Stopped as an operator stops it, it takes its throwaway store along.
    let said = server.stdout();
    let dir = said.split("throwaway store in ").nth(1).and_then(|rest| rest.split(" (").next());
    let dir = PathBuf::from(dir.unwrap_or_else(|| panic!("the dev server said where its store is: {said}")));
    assert!(dir.exists(), "{}", dir.display());
    assert!(server.stop().success());
    assert!(!dir.exists(), "{} is left behind", dir.display());
}

#[test]
fn a_dev_server_stopped_while_it_starts_still_removes_its_throwaway_dir() {
    use std::io::BufRead;
    let mut child = Command::new(tumbler_bin())
        .args(["serve", "--dev", "--listen", "127.0.0.1:0"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let mut lines = std::io::BufReader::new(child.stdout.take().unwrap()).lines();
    // Printed once the store exists, before the built-in plugins are
    // compiled and long before it listens.
    let dir = loop {
        let line = lines.next().expect("the dev server said where its store is").unwrap();
        if let Some(rest) = line.split("throwaway store in ").nth(1) {
            break PathBuf::from(rest.split(" (").next().unwrap());
        }
    };
    assert!(dir.exists(), "{}", dir.display());
    let killed = Command::new("kill").args(["-TERM", &child.id().to_string()]).status().unwrap();
    assert!(killed.success());
    let rest: Vec<String> = lines.map_while(|l| l.ok()).collect();
    let status = child.wait().unwrap();
    assert!(status.success(), "ended by the signal instead of shutting down: {status:?}");
    assert!(rest.iter().any(|l| l.starts_with("listening on")), "{rest:?}");
    assert!(!dir.exists(), "{} is left behind", dir.display());
}

// ---------------------------------------------------------------------------
// the CLI client
// ---------------------------------------------------------------------------

#[tokio::test]
async fn cli_manages_secrets() {
    let t = Instance::start();
    let root = t.root();
    let first = r#"{"username":"app","password":"pw-from-file"}"#;
    let second = r#"{"username":"app","password":"pw-second"}"#;
    let (file1, file2) = (t.dir.path().join("v1.json"), t.dir.path().join("v2.json"));
    std::fs::write(&file1, first).unwrap();
    std::fs::write(&file2, second).unwrap();

    t.cli(["secret", "create", "app/cli", "--value-file", path_str(&file1)], None).assert_success();
    let got = t.cli(["secret", "get", "app/cli", "--output", "json"], None);
    assert_eq!(got.assert_success().json()["value"], first);
    let field = t.cli(["secret", "get", "app/cli", "--field", "password"], None);
    assert_eq!(field.assert_success().stdout.trim(), "pw-from-file");

    t.cli(["secret", "create", "app/stdin", "-"], Some(b"from-stdin")).assert_success();
    assert_eq!(root.read_value("app/stdin").await, "from-stdin");

    t.cli(["secret", "put", "app/cli", "--value-file", path_str(&file2)], None).assert_success();
    assert_eq!(root.read_value("app/cli").await, second);
    let field = t.cli(["secret", "get", "app/cli", "--field", "password"], None);
    assert_eq!(field.assert_success().stdout.trim(), "pw-second");

    let listed = t.cli(["secret", "ls", "--output", "json"], None);
    let listed = listed.assert_success().json().to_string();
    assert!(listed.contains("\"app/cli\"") && listed.contains("\"app/stdin\""), "{listed}");

    let versions = t.cli(["secret", "versions", "app/cli", "--output", "json"], None);
    let versions = versions.assert_success().json().to_string();
    for id in version_ids(&root.versions("app/cli").await) {
        assert!(versions.contains(&id), "version {id} missing from {versions}");
    }

    t.cli(["secret", "rm", "app/stdin"], None).assert_success();
    assert_read_refused(&root.read_label("app/stdin", "current").await);
    assert!(root.describe("app/stdin").await.1["deleted_at"].is_string());
    t.cli(["secret", "restore", "app/stdin"], None).assert_success();
    assert_eq!(root.read_value("app/stdin").await, "from-stdin");

    let missing = t.cli(["secret", "get", "app/missing"], None);
    missing.assert_failure();
    assert!(!missing.stderr.trim().is_empty(), "no error message: {missing:?}");
}

#[tokio::test]
async fn cli_puts_policies_and_creates_tokens() {
    let t = Instance::start();
    let root = t.root();
    root.create_secret("app/x", "x").await;
    root.create_secret("db/x", "d").await;
    let policy_file = t.dir.path().join("policy.json");
    std::fs::write(&policy_file, json!({"rules": app_read_rules()}).to_string()).unwrap();

    t.cli(["policy", "put", "cli-read", path_str(&policy_file)], None).assert_success();
    let created = t.cli(["token", "create", "--name", "n", "--policy", "cli-read", "--output", "json"], None);
    let token = created.assert_success().json()["token"].as_str().expect("token in output").to_string();
    assert!(token.starts_with("tmb_"), "{token}");

    let holder = t.client(Some(&token));
    assert_eq!(holder.read_value("app/x").await, "x");
    assert_error(&holder.read_label("db/x", "current").await, 403, "forbidden");

    let read = cli(t.url(), Some(&token), ["secret", "get", "app/x", "--output", "json"], None);
    assert_eq!(read.assert_success().json()["value"], "x");
    cli(t.url(), Some(&token), ["secret", "get", "db/x"], None).assert_failure();
}
