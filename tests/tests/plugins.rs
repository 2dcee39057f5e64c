//! The plugin registry through the real binary: uploads are accepted only
//! when they are components implementing the world, versions are kept,
//! built-ins are reserved, and a restart loads compiled code from the
//! MAC'd cache instead of recompiling (a tampered cache file is recompiled).

use serde_json::Value;
use tumbler_tests::fixtures::{fixture_bytes, sha256_hex};
use tumbler_tests::{Client, Instance, Reply, assert_error, error_message};

async fn upload(client: &Client, name: &str, wasm: Vec<u8>) -> Reply {
    client.send_raw(reqwest::Method::POST, &format!("/v1/plugins/{name}"), &[], Some(("application/wasm", wasm))).await
}

async fn upload_with_sha(client: &Client, name: &str, wasm: Vec<u8>, sha: &str) -> Reply {
    let url = format!("{}/v1/plugins/{name}", client.base_url());
    let response = reqwest::Client::new()
        .post(url)
        .bearer_auth(client.token().expect("token"))
        .header("X-Tumbler-Sha256", sha)
        .body(wasm)
        .send()
        .await
        .expect("upload");
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}

#[tokio::test]
async fn a_component_implementing_the_world_is_registered_with_its_info() {
    let instance = Instance::start();
    let root = instance.root();
    let wasm = fixture_bytes("test-gate");
    let (status, body) = upload(&root, "gate", wasm.clone()).await;
    assert_eq!(status, 201, "{body}");
    assert_eq!(body["name"], "gate");
    assert_eq!(body["version"], 1);
    assert_eq!(body["sha256"], sha256_hex(&wasm));
    assert_eq!(body["info"]["name"], "test-gate");
    assert_eq!(body["builtin"], false);

    let (status, list) = root.get("/v1/plugins").await;
    assert_eq!(status, 200);
    let names: Vec<&str> = list["plugins"].as_array().unwrap().iter().filter_map(|p| p["name"].as_str()).collect();
    assert!(names.contains(&"gate") && names.contains(&"noop"), "{names:?}");
    let noop = list["plugins"].as_array().unwrap().iter().find(|p| p["name"] == "noop").unwrap();
    assert_eq!(noop["builtin"], true, "built-ins are listed like uploads");
}

#[tokio::test]
async fn anything_but_a_rotator_component_is_refused_saying_what_it_is() {
    let instance = Instance::start();
    let root = instance.root();
    let core_module = b"\0asm\x01\0\0\0".to_vec();
    let cases: [(&str, Vec<u8>, &str); 3] = [
        ("core", core_module, "core WebAssembly module"),
        ("random", tumbler_tests::random_bytes(4096), "not a WebAssembly binary"),
        ("other", fixture_bytes("test-other-world"), "does not implement the tumbler:rotator"),
    ];
    for (name, wasm, expected) in cases {
        let reply = upload(&root, name, wasm).await;
        assert_error(&reply, 400, "invalid_request");
        assert!(error_message(&reply.1).contains(expected), "{name}: {}", reply.1);
    }
    let (_, list) = root.get("/v1/plugins").await;
    assert!(list["plugins"].as_array().unwrap().iter().all(|p| p["builtin"] == true), "only built-ins: {list}");
}

/// A component of `n` core instances of one module (text format).
fn component_of(n: usize, module: &str) -> Vec<u8> {
    let mut text = format!("(component (core module $m {module})");
    for _ in 0..n {
        text.push_str(" (core instance (instantiate $m))");
    }
    text.push(')');
    wat::parse_str(&text).expect("the text parses")
}

#[tokio::test]
async fn a_component_bigger_than_a_plugin_may_be_is_refused_naming_the_bound() {
    let instance = Instance::start();
    let root = instance.root();
    let cases = [
        ("memories", component_of(5, "(memory 1)"), "contains 5 Wasm linear memories"),
        ("instances", component_of(33, ""), "contains 33 core module instances"),
        ("tables", component_of(1, &"(table 1 funcref)".repeat(33)), "tables count of 33"),
        ("huge-memory", component_of(1, "(memory 8192)"), "minimum byte size of 536870912"),
    ];
    for (name, wasm, detail) in cases {
        let reply = upload(&root, name, wasm).await;
        assert_error(&reply, 400, "invalid_request");
        let message = error_message(&reply.1);
        assert!(
            message.contains("bigger than a plugin may be: at most 32 core instances, 4 memories and 32 tables"),
            "{name}: {message}"
        );
        assert!(message.contains(detail), "{name}: {message}");
    }
    // At the bounds a component is no longer too big; this one is refused
    // for what it is, a component that is not a rotator.
    for at_bounds in
        [component_of(4, "(memory 1)"), component_of(32, ""), component_of(1, &"(table 1 funcref)".repeat(32))]
    {
        let reply = upload(&root, "at-bounds", at_bounds).await;
        assert_error(&reply, 400, "invalid_request");
        assert!(error_message(&reply.1).contains("does not implement the tumbler:rotator"), "{}", reply.1);
    }
    let (_, list) = root.get("/v1/plugins").await;
    assert!(list["plugins"].as_array().unwrap().iter().all(|p| p["builtin"] == true), "only built-ins: {list}");
}

#[tokio::test]
async fn a_sha256_header_that_does_not_match_is_refused() {
    let instance = Instance::start();
    let root = instance.root();
    let wasm = fixture_bytes("test-loop");
    let reply = upload_with_sha(&root, "loop", wasm.clone(), &"0".repeat(64)).await;
    assert_error(&reply, 400, "invalid_request");
    assert!(error_message(&reply.1).contains("X-Tumbler-Sha256"), "{}", reply.1);
    let (status, _) = upload_with_sha(&root, "loop", wasm.clone(), &sha256_hex(&wasm)).await;
    assert_eq!(status, 201);
}

#[tokio::test]
async fn built_in_names_are_reserved_and_cannot_be_removed() {
    let instance = Instance::start();
    let root = instance.root();
    let reply = upload(&root, "noop", fixture_bytes("test-loop")).await;
    assert_error(&reply, 409, "conflict");
    assert!(error_message(&reply.1).contains("built-in"), "{}", reply.1);
    assert_error(&root.delete("/v1/plugins/noop").await, 409, "conflict");
    let (_, noop) = root.get("/v1/plugins/noop").await;
    assert_eq!(noop["versions"][0]["info"]["name"], "noop", "the built-in is untouched");
}

#[tokio::test]
async fn versions_are_kept_and_the_same_bytes_are_not_registered_twice() {
    let instance = Instance::start();
    let root = instance.root();
    assert_eq!(upload(&root, "p", fixture_bytes("test-loop")).await.0, 201);
    let (status, again) = upload(&root, "p", fixture_bytes("test-loop")).await;
    assert_eq!((status, again["version"].as_i64()), (200, Some(1)), "{again}");
    let (status, second) = upload(&root, "p", fixture_bytes("test-trap")).await;
    assert_eq!((status, second["version"].as_i64()), (201, Some(2)), "{second}");

    let (_, described) = root.get("/v1/plugins/p").await;
    let versions: Vec<i64> =
        described["versions"].as_array().unwrap().iter().filter_map(|v| v["version"].as_i64()).collect();
    assert_eq!(versions, [2, 1], "newest first");

    let (status, removed) = root.delete("/v1/plugins/p?version=1").await;
    assert_eq!((status, removed["versions_removed"].as_i64()), (200, Some(1)), "{removed}");
    let (_, described) = root.get("/v1/plugins/p").await;
    assert_eq!(described["versions"].as_array().unwrap().len(), 1);
    assert_error(&root.delete("/v1/plugins/missing").await, 404, "not_found");
}

#[tokio::test]
async fn uploading_needs_admin_on_the_plugin_name() {
    let instance = Instance::start();
    let root = instance.root();
    root.put_policy("plugin-reader", serde_json::json!([{"names": "sys/plugins/*", "capabilities": ["read", "list"]}]))
        .await;
    let token = root.create_token("reader", &["plugin-reader"], "1h").await;
    let reader = root.with_token(Some(&token.token));
    assert_error(&upload(&reader, "x", fixture_bytes("test-loop")).await, 403, "forbidden");
    // Refused before its body was read: the response says the connection
    // closes, so no client sends its next request on it.
    let refused = reqwest::Client::new()
        .post(format!("{}/v1/plugins/x", reader.base_url()))
        .bearer_auth(&token.token)
        .body(fixture_bytes("test-loop"))
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status().as_u16(), 403);
    assert_eq!(refused.headers().get("connection").map(|v| v.as_bytes()), Some(&b"close"[..]));
    assert_eq!(reader.get("/v1/plugins/noop").await.0, 200);
    assert_error(&instance.client(None).get("/v1/plugins").await, 401, "unauthorized");
}

/// Resident memory of a process, in KiB.
fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("read /proc status");
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS")
}

#[tokio::test]
async fn a_50_mib_upload_is_refused_without_reading_it_into_memory() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut instance = Instance::start();
    let pid = instance.server().pid();
    let before = rss_kib(pid);
    let port = instance.server().port();
    let mut stream = tokio::net::TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    let head = format!(
        "POST /v1/plugins/big HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {}\r\n\
         Content-Type: application/wasm\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        instance.root_token,
        50 << 20
    );
    stream.write_all(head.as_bytes()).await.unwrap();
    // Offer a first MiB of the body: the server must answer without waiting for the rest.
    let _ = stream.write_all(&vec![0u8; 1 << 20]).await;
    let mut response = Vec::new();
    let _ = tokio::time::timeout(std::time::Duration::from_secs(10), stream.read_to_end(&mut response)).await;
    let text = String::from_utf8_lossy(&response);
    assert!(text.starts_with("HTTP/1.1 413"), "{text}");
    assert!(text.contains("too_large"), "{text}");
    let after = rss_kib(pid);
    assert!(after < before + 20 * 1024, "RSS went from {before} KiB to {after} KiB");
}

#[tokio::test]
async fn a_restart_loads_plugins_from_the_cache_and_recompiles_a_tampered_entry() {
    let mut instance = Instance::start();
    let root = instance.root();
    let fixtures = ["test-loop", "test-trap", "test-chatty", "test-memhog", "test-gate"];
    for (i, fixture) in fixtures.iter().enumerate() {
        assert_eq!(upload(&root, &format!("p{i}"), fixture_bytes(fixture)).await.0, 201);
    }
    let (_, list) = root.get("/v1/plugins").await;
    let builtins = list["plugins"].as_array().unwrap().iter().filter(|p| p["builtin"] == true).count();
    assert!(builtins >= 1, "{list}");
    instance.stop();

    instance.serve();
    let log = instance.server().stderr();
    let loaded = log.matches("plugin loaded from the compiled cache").count();
    assert_eq!(loaded, fixtures.len() + builtins, "5 uploads + {builtins} built-ins:\n{log}");
    assert!(!log.contains("plugin compiled and cached"), "nothing was recompiled:\n{log}");
    instance.stop();

    let tampered = sha256_hex(&fixture_bytes("test-gate"));
    let cache_file = instance.data_dir.join("plugin-cache").join(format!("{tampered}.cwasm"));
    let mut bytes = std::fs::read(&cache_file).expect("cache file exists");
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0xff;
    std::fs::write(&cache_file, bytes).unwrap();

    instance.serve();
    let log = instance.server().stderr();
    assert!(log.contains("discarding the compiled plugin cache entry"), "{log}");
    assert_eq!(log.matches("plugin compiled and cached").count(), 1, "only the tampered one:\n{log}");
    assert!(log.contains(&tampered));
    let (status, described) = instance.root().get("/v1/plugins/p4").await;
    assert_eq!((status, described["versions"][0]["info"]["name"].as_str()), (200, Some("test-gate")));
}

#[tokio::test]
async fn the_cli_uploads_lists_describes_and_removes_plugins() {
    let instance = Instance::start();
    let wasm = tumbler_tests::fixtures::fixture_path("test-loop");
    let wasm = wasm.to_str().unwrap();
    let out = instance.cli(["plugin", "upload", wasm, "--name", "spin", "--output", "json"], None);
    out.assert_success();
    assert_eq!(out.json()["version"], 1);
    let listed = instance.cli(["plugin", "ls", "--output", "json"], None);
    let names: Vec<String> = listed.json()["plugins"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|p| p["name"].as_str().map(str::to_owned))
        .collect();
    assert!(names.contains(&"spin".to_owned()), "{names:?}");
    let described = instance.cli(["plugin", "describe", "spin", "--output", "json"], None);
    assert_eq!(described.json()["versions"][0]["info"]["name"], "test-loop");
    instance.cli(["plugin", "rm", "spin"], None).assert_success();
    assert_eq!(instance.root().get("/v1/plugins/spin").await.0, 404);
}

#[tokio::test]
async fn a_plugin_built_against_contract_0_1_0_still_rotates_and_issues() {
    // Built from the frozen 0.1.0 WIT: its imports (`log@0.1.0`) and its
    // `dynamic@0.1.0` export must resolve against this host's 0.1.x.
    let instance = Instance::start();
    let root = instance.root();
    let (status, body) = upload(&root, "legacy", fixture_bytes("test-contract-0-1-0")).await;
    assert_eq!(status, 201, "{body}");
    assert_eq!(body["info"]["dynamic"], true, "{body}");

    root.create_secret("legacy/s", "v0").await;
    let config = serde_json::json!({"plugin": "legacy", "schedule": "rate(30 days)"});
    let (status, reply) = root.put("/v1/secrets/legacy/s:rotation", &config).await;
    assert_eq!(status, 200, "{reply}");
    let (status, started) = root.post("/v1/secrets/legacy/s:rotate", &serde_json::json!({})).await;
    assert_eq!(status, 202, "{started}");
    let id = started["rotation_id"].as_str().expect("rotation_id").to_owned();
    let mut record = Value::Null;
    for _ in 0..400 {
        record = root.get(&format!("/v1/rotations/{id}")).await.1;
        if record["status"] != "running" {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(25)).await;
    }
    assert_eq!(record["status"], "succeeded", "{record}");
    assert_eq!(root.read_value("legacy/s").await, "v0+0.1.0", "the 0.1.0 plugin's create made the new value");

    root.create_secret("legacy/admin", "unused").await;
    let role = serde_json::json!({"plugin": "legacy", "admin_secret": "legacy/admin", "params": {}});
    let (status, reply) = root.put("/v1/roles/legacy", &role).await;
    assert_eq!(status, 200, "{reply}");
    let (status, issued) = root.post("/v1/roles/legacy:issue", &serde_json::json!({})).await;
    assert_eq!(status, 201, "{issued}");
    assert_eq!(issued["credential"]["issued_by"], "0.1.0", "{issued}");
    assert_eq!(issued["credential"]["lease"], issued["lease_id"], "{issued}");
}
