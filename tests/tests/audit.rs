//! Audit log, metrics, logs and alerts, through the real binary: the chain
//! catches every kind of tampering, concurrent requests each leave one
//! record, an unwritable audit log fails requests closed (503, nothing
//! changed, an alert delivered), no value or token reaches a log, a record
//! or `/metrics`, and `/metrics` parses as Prometheus text.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use hmac::{Hmac, Mac};
use serde_json::{Value, json};
use sha2::Sha256;
use tumbler_tests::*;

// ---------------------------------------------------------------------------
// helpers
// ---------------------------------------------------------------------------

/// `tumbler audit verify` on a data dir with its key file.
fn verify(data_dir: &Path, key_file: &Path) -> CmdOutput {
    let mut cmd = command(["audit", "verify", "--output", "json"]);
    cmd.arg("--data-dir").arg(data_dir).arg("--key-file").arg(key_file);
    run(cmd, None)
}

/// Asserts the chain verifies; returns how many records it holds.
#[track_caller]
fn assert_intact(data_dir: &Path, key_file: &Path) -> i64 {
    let out = verify(data_dir, key_file);
    out.assert_success();
    let json = out.json();
    assert_eq!(json["intact"], true, "{out:?}");
    json["records"].as_i64().expect("records")
}

/// Asserts the chain is reported broken at record `seq`.
#[track_caller]
fn assert_broken_at(data_dir: &Path, key_file: &Path, seq: i64, what: &str) {
    let out = verify(data_dir, key_file);
    assert!(!out.success(), "{what}: verify passed: {out:?}");
    let json = out.json();
    assert_eq!(json["intact"], false, "{what}: {out:?}");
    assert_eq!(json["broken_at"], seq, "{what}: {out:?}");
    assert!(!json["problem"].as_str().unwrap_or("").is_empty(), "{what}: {out:?}");
}

fn db(data_dir: &Path) -> rusqlite::Connection {
    rusqlite::Connection::open(data_dir.join("tumbler.db")).expect("open the store")
}

/// A copy of a stopped store's data dir, to tamper with.
fn copy_store(data_dir: &Path, into: &Path) -> PathBuf {
    let copy = into.join(format!("copy-{}", random_string(8)));
    std::fs::create_dir_all(&copy).unwrap();
    std::fs::copy(data_dir.join("tumbler.db"), copy.join("tumbler.db")).unwrap();
    copy
}

/// Every audit record through `GET /v1/audit`, following pages.
async fn all_records(c: &Client) -> Vec<Value> {
    let mut records = Vec::new();
    let mut after = 0i64;
    loop {
        let reply = c.get_query("/v1/audit", &[("after_seq", &after.to_string()), ("limit", "1000")]).await;
        assert_eq!(reply.0, 200, "{reply:?}");
        let page = reply.1["records"].as_array().expect("records").clone();
        records.extend(page);
        match reply.1.get("next_after_seq").and_then(Value::as_i64) {
            Some(next) => after = next,
            None => return records,
        }
    }
}

/// The audit table as text, every column, as someone with the file sees it.
fn audit_table_dump(data_dir: &Path) -> String {
    let conn = db(data_dir);
    let mut stmt = conn.prepare("SELECT * FROM audit ORDER BY seq").unwrap();
    let columns = stmt.column_count();
    let mut rows = stmt.query([]).unwrap();
    let mut out = String::new();
    while let Some(row) = rows.next().unwrap() {
        for i in 0..columns {
            let v: rusqlite::types::Value = row.get(i).unwrap();
            out.push_str(&format!("{v:?}|"));
        }
        out.push('\n');
    }
    out
}

/// The canonical MAC of a record row under `key`, as the chain defines it:
/// HMAC-SHA256 over length-prefixed fields, the previous MAC last.
fn record_mac(key: &[u8], row: &BTreeMap<String, rusqlite::types::Value>, prev: &[u8]) -> Vec<u8> {
    use rusqlite::types::Value as V;
    let text = |k: &str| match &row[k] {
        V::Text(t) => t.as_bytes().to_vec(),
        V::Null => Vec::new(),
        V::Integer(i) => i.to_string().into_bytes(),
        other => panic!("{k}: {other:?}"),
    };
    let int = |k: &str| match &row[k] {
        V::Integer(i) => i.to_be_bytes().to_vec(),
        other => panic!("{k}: {other:?}"),
    };
    let parts: Vec<Vec<u8>> = vec![
        b"tumbler/v1/audit-record".to_vec(),
        int("seq"),
        int("time"),
        text("kind"),
        text("request_id"),
        text("token_id"),
        text("token_name"),
        text("client"),
        text("action"),
        text("resource"),
        text("status"),
        text("outcome"),
        text("detail"),
        prev.to_vec(),
    ];
    let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(key).unwrap();
    for p in &parts {
        mac.update(&(p.len() as u64).to_be_bytes());
        mac.update(p);
    }
    mac.finalize().into_bytes().to_vec()
}

/// The audit MAC key the store derives from its master key (HKDF-SHA256).
fn audit_key(key_file: &Path) -> Vec<u8> {
    use base64::Engine as _;
    let text = std::fs::read_to_string(key_file).unwrap();
    let master = base64::engine::general_purpose::STANDARD.decode(text.trim()).unwrap();
    let mut out = [0u8; 32];
    hkdf::Hkdf::<Sha256>::new(Some(b"tumbler"), &master).expand(b"tumbler/v1/audit-mac", &mut out).unwrap();
    out.to_vec()
}

fn audit_rows(conn: &rusqlite::Connection) -> Vec<BTreeMap<String, rusqlite::types::Value>> {
    let mut stmt = conn.prepare("SELECT * FROM audit ORDER BY seq").unwrap();
    let names: Vec<String> = stmt.column_names().map(|s| s.to_string()).collect();
    let mut rows = stmt.query([]).unwrap();
    let mut out = Vec::new();
    while let Some(row) = rows.next().unwrap() {
        out.push(names.iter().enumerate().map(|(i, n)| (n.clone(), row.get(i).unwrap())).collect());
    }
    out
}

/// A reqwest client for requests the harness client cannot shape (headers).
fn http() -> reqwest::Client {
    reqwest::Client::builder().timeout(Duration::from_secs(120)).build().unwrap()
}

/// A tiny HTTP receiver for alert webhooks: answers each request with the
/// next status in `statuses` (then 200) and keeps the bodies.
struct Receiver {
    url: String,
    bodies: Arc<Mutex<Vec<String>>>,
}

impl Receiver {
    fn start(statuses: Vec<u16>) -> Receiver {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}/hooks/tumbler", listener.local_addr().unwrap());
        let bodies = Arc::new(Mutex::new(Vec::new()));
        let seen = bodies.clone();
        std::thread::spawn(move || {
            let mut statuses = statuses.into_iter();
            for conn in listener.incoming() {
                let Ok(mut conn) = conn else { return };
                let mut reader = BufReader::new(conn.try_clone().unwrap());
                let mut len = 0usize;
                loop {
                    let mut line = String::new();
                    if reader.read_line(&mut line).unwrap_or(0) == 0 {
                        break;
                    }
                    if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
                        len = v.trim().parse().unwrap_or(0);
                    }
                    if line == "\r\n" {
                        break;
                    }
                }
                let mut body = vec![0; len];
                let _ = reader.read_exact(&mut body);
                seen.lock().unwrap().push(String::from_utf8_lossy(&body).into_owned());
                let status = statuses.next().unwrap_or(200);
                let _ = conn.write_all(
                    format!("HTTP/1.1 {status} X\r\ncontent-length: 0\r\nconnection: close\r\n\r\n").as_bytes(),
                );
            }
        });
        Receiver { url, bodies }
    }

    fn bodies(&self) -> Vec<String> {
        self.bodies.lock().unwrap().clone()
    }

    /// Waits until `n` requests arrived (or panics after `timeout`).
    fn wait_for(&self, n: usize, timeout: Duration) -> Vec<String> {
        let deadline = Instant::now() + timeout;
        loop {
            let bodies = self.bodies();
            if bodies.len() >= n {
                return bodies;
            }
            assert!(Instant::now() < deadline, "only {} of {n} webhook calls arrived: {bodies:?}", bodies.len());
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

// ---------------------------------------------------------------------------
// a strict Prometheus text parser
// ---------------------------------------------------------------------------

#[derive(Debug)]
struct Sample {
    name: String,
    labels: BTreeMap<String, String>,
    value: f64,
}

#[derive(Debug, Default)]
struct Exposition {
    types: HashMap<String, String>,
    helps: HashMap<String, String>,
    samples: Vec<Sample>,
}

fn is_metric_name(s: &str) -> bool {
    let mut chars = s.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphabetic() || c == '_' || c == ':')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
}

fn is_label_name(s: &str) -> bool {
    let mut chars = s.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

fn parse_value(s: &str) -> Result<f64, String> {
    match s {
        "+Inf" => Ok(f64::INFINITY),
        "-Inf" => Ok(f64::NEG_INFINITY),
        "NaN" => Ok(f64::NAN),
        _ => s.parse::<f64>().map_err(|_| format!("bad value {s:?}")),
    }
}

/// Parses `{a="x",b="y"}` (the braces included) into labels; returns the rest.
fn parse_labels(s: &str) -> Result<(BTreeMap<String, String>, &str), String> {
    let mut labels = BTreeMap::new();
    let mut rest = s.strip_prefix('{').ok_or("expected {")?;
    loop {
        if let Some(after) = rest.strip_prefix('}') {
            return Ok((labels, after));
        }
        let eq = rest.find('=').ok_or("label without =")?;
        let name = &rest[..eq];
        if !is_label_name(name) {
            return Err(format!("bad label name {name:?}"));
        }
        rest = rest[eq + 1..].strip_prefix('"').ok_or("label value not quoted")?;
        let mut value = String::new();
        let mut chars = rest.char_indices();
        let end = loop {
            match chars.next().ok_or("unterminated label value")? {
                (i, '"') => break i,
                (_, '\\') => match chars.next().ok_or("dangling escape")?.1 {
                    '\\' => value.push('\\'),
                    '"' => value.push('"'),
                    'n' => value.push('\n'),
                    c => return Err(format!("bad escape \\{c}")),
                },
                (_, '\n') => return Err("newline in label value".into()),
                (_, c) => value.push(c),
            }
        };
        if labels.insert(name.to_string(), value).is_some() {
            return Err(format!("label {name} twice"));
        }
        rest = &rest[end + 1..];
        rest = rest.strip_prefix(',').unwrap_or(rest);
    }
}

/// Parses the text exposition format 0.0.4, strictly: every sample belongs
/// to a family declared with one TYPE line before it, histograms are
/// cumulative and end at `+Inf` equal to `_count`.
fn parse_prometheus(text: &str) -> Result<Exposition, String> {
    let mut e = Exposition::default();
    let mut seen_samples_of: BTreeSet<String> = BTreeSet::new();
    for (n, line) in text.lines().enumerate() {
        let err = |m: String| format!("line {}: {m}: {line:?}", n + 1);
        if line.is_empty() {
            continue;
        }
        if let Some(rest) = line.strip_prefix("# ") {
            let mut parts = rest.splitn(3, ' ');
            let (kw, name, tail) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""), parts.next().unwrap_or(""));
            if !is_metric_name(name) {
                return Err(err(format!("bad metric name {name:?}")));
            }
            match kw {
                "TYPE" => {
                    if !["counter", "gauge", "histogram", "summary", "untyped"].contains(&tail) {
                        return Err(err(format!("bad type {tail:?}")));
                    }
                    if seen_samples_of.contains(name) {
                        return Err(err("TYPE after samples".into()));
                    }
                    if e.types.insert(name.into(), tail.into()).is_some() {
                        return Err(err("second TYPE".into()));
                    }
                }
                "HELP" => {
                    if e.helps.insert(name.into(), tail.into()).is_some() {
                        return Err(err("second HELP".into()));
                    }
                }
                _ => {} // other comments are allowed
            }
            continue;
        }
        if line.starts_with('#') {
            continue;
        }
        let name_end = line.find(['{', ' ']).ok_or_else(|| err("no value".into()))?;
        let name = &line[..name_end];
        if !is_metric_name(name) {
            return Err(err(format!("bad metric name {name:?}")));
        }
        let (labels, rest) = if line[name_end..].starts_with('{') {
            parse_labels(&line[name_end..]).map_err(err)?
        } else {
            (BTreeMap::new(), &line[name_end..])
        };
        let mut fields = rest.strip_prefix(' ').ok_or_else(|| err("no space before value".into()))?.split(' ');
        let value = parse_value(fields.next().unwrap_or("")).map_err(err)?;
        if let Some(ts) = fields.next() {
            ts.parse::<i64>().map_err(|_| err("bad timestamp".into()))?;
        }
        if fields.next().is_some() {
            return Err(err("trailing fields".into()));
        }
        let family = ["_bucket", "_sum", "_count"]
            .iter()
            .find_map(|s| name.strip_suffix(s).filter(|base| e.types.get(*base).is_some_and(|t| t == "histogram")))
            .unwrap_or(name);
        if !e.types.contains_key(family) {
            return Err(err(format!("sample of undeclared family {family}")));
        }
        seen_samples_of.insert(family.to_string());
        e.samples.push(Sample { name: name.into(), labels, value });
    }
    // Histograms: cumulative buckets ending in +Inf == _count.
    for (family, kind) in &e.types {
        if kind != "histogram" {
            continue;
        }
        let mut series: BTreeMap<Vec<(String, String)>, Vec<(f64, f64)>> = BTreeMap::new();
        for s in e.samples.iter().filter(|s| s.name == format!("{family}_bucket")) {
            let le = s.labels.get("le").ok_or(format!("{family}_bucket without le"))?;
            let key: Vec<_> =
                s.labels.iter().filter(|(k, _)| *k != "le").map(|(k, v)| (k.clone(), v.clone())).collect();
            series.entry(key).or_default().push((parse_value(le)?, s.value));
        }
        for (key, buckets) in series {
            if !buckets.windows(2).all(|w| w[0].0 < w[1].0 && w[0].1 <= w[1].1) {
                return Err(format!("{family}{key:?}: buckets not cumulative: {buckets:?}"));
            }
            let last = buckets.last().ok_or("no buckets")?;
            if last.0 != f64::INFINITY {
                return Err(format!("{family}{key:?}: no +Inf bucket"));
            }
            let labels: BTreeMap<String, String> = key.iter().cloned().collect();
            let count = e
                .samples
                .iter()
                .find(|s| s.name == format!("{family}_count") && s.labels == labels)
                .ok_or(format!("{family}{key:?}: no _count"))?;
            if count.value != last.1 {
                return Err(format!("{family}{key:?}: +Inf bucket {} != count {}", last.1, count.value));
            }
        }
    }
    Ok(e)
}

// ---------------------------------------------------------------------------
// the chain and `audit verify`
// ---------------------------------------------------------------------------

#[tokio::test]
async fn audit_verify_finds_every_kind_of_tampering() {
    let mut inst = Instance::start();
    let c = inst.root();
    for i in 0..4 {
        c.create_secret(&format!("app/s{i}"), &random_string(20)).await;
        c.read_value(&format!("app/s{i}")).await;
    }
    c.add_version("app/s0", &random_string(20)).await;
    let refused = inst.client(Some("tmb_not-a-token")).get("/v1/secrets/app/s1:value").await;
    assert_eq!(refused.0, 401);
    inst.stop();

    let records = assert_intact(&inst.data_dir, &inst.key_file);
    // init's root token, 9 requests and the refused one, at least.
    assert!(records >= 11, "{records}");
    let refused_seq: i64 =
        db(&inst.data_dir).query_row("SELECT seq FROM audit WHERE status = 401", [], |r| r.get(0)).unwrap();

    let scratch = tempfile::tempdir().unwrap();
    let tamper = |what: &str, sql: &str, seq: i64| {
        let copy = copy_store(&inst.data_dir, scratch.path());
        db(&copy).execute_batch(sql).unwrap_or_else(|e| panic!("{what}: {e}"));
        assert_broken_at(&copy, &inst.key_file, seq, what);
    };
    tamper("edit a record", "UPDATE audit SET resource = 'app/other' WHERE seq = 5", 5);
    let unrefuse = format!("UPDATE audit SET status = 200, outcome = 'ok' WHERE seq = {refused_seq}");
    tamper("turn a refusal into a success", &unrefuse, refused_seq);
    tamper("delete a record", "DELETE FROM audit WHERE seq = 4", 4);
    tamper(
        "reorder two records",
        "UPDATE audit SET seq = -1 WHERE seq = 3; UPDATE audit SET seq = 3 WHERE seq = 6; \
         UPDATE audit SET seq = 6 WHERE seq = -1;",
        3,
    );
    tamper("delete the last records", &format!("DELETE FROM audit WHERE seq > {}", records - 3), records - 2);
    tamper("delete every record", "DELETE FROM audit", 1);

    // Rewrite record 4 and recompute every later link and the head. With a
    // key that is not the store's, verify finds record 4; the same rewrite
    // with the store's real key passes, so only the key stands in the way.
    let rewrite = |key: &[u8]| {
        let copy = copy_store(&inst.data_dir, scratch.path());
        let conn = db(&copy);
        conn.execute("UPDATE audit SET token_name = 'someone-else' WHERE seq = 4", []).unwrap();
        let rows = audit_rows(&conn);
        let mut prev = match &rows[2]["mac"] {
            rusqlite::types::Value::Blob(b) => b.clone(),
            other => panic!("{other:?}"),
        };
        for row in &rows[3..] {
            let mac = record_mac(key, row, &prev);
            conn.execute(
                "UPDATE audit SET prev_mac = ?1, mac = ?2 WHERE seq = ?3",
                rusqlite::params![prev, mac, row["seq"]],
            )
            .unwrap();
            prev = mac;
        }
        let head = format!("{records}:{}", prev.iter().map(|b| format!("{b:02x}")).collect::<String>());
        conn.execute("UPDATE meta SET value = ?1 WHERE key = 'audit_head'", [head]).unwrap();
        copy
    };
    assert_broken_at(&rewrite(&random_bytes(32)), &inst.key_file, 4, "recomputed with a wrong key");
    assert_eq!(assert_intact(&rewrite(&audit_key(&inst.key_file)), &inst.key_file), records);

    // A master key rotation re-MACs the chain under the new key and records itself.
    let mut cmd = command(["operator", "rotate-master-key"]);
    cmd.arg("--data-dir").arg(&inst.data_dir).arg("--key-file").arg(&inst.key_file);
    run(cmd, None).assert_success();
    assert_eq!(assert_intact(&inst.data_dir, &inst.key_file), records + 1);
    let last = audit_rows(&db(&inst.data_dir)).pop().unwrap();
    assert_eq!(last["action"], rusqlite::types::Value::Text("operator.rotate-master-key".into()));
}

#[tokio::test]
async fn verify_refuses_a_wrong_key_and_runs_beside_a_server() {
    let mut inst = Instance::start();
    inst.root().create_secret("app/x", "v").await;
    // Beside the running server: it only reads, and leaves the journal,
    // whose entries move while it would read them, to the server, even
    // under a stream of reads that fill it.
    let c = inst.root();
    let reads = tokio::spawn(async move {
        for _ in 0..300 {
            c.read_value("app/x").await;
        }
    });
    for _ in 0..3 {
        let out = verify(&inst.data_dir, &inst.key_file);
        out.assert_success();
        assert!(out.json()["journaled"].is_null(), "{out:?}");
        assert!(out.json()["records"].as_i64().unwrap() >= 2, "{out:?}");
    }
    reads.await.unwrap();
    inst.stop();
    let out = verify(&inst.data_dir, &inst.key_file);
    assert_eq!(out.json()["journaled"], 0, "a clean stop folds everything: {out:?}");
    let other = tempfile::tempdir().unwrap();
    let other_key = other.path().join("other.key");
    init(&other.path().join("data"), &other_key);
    let out = verify(&inst.data_dir, &other_key);
    out.assert_failure();
    assert!(out.text_lowercase().contains("does not match"), "{out:?}");
}

// ---------------------------------------------------------------------------
// concurrency and group commit
// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_thousand_concurrent_requests_leave_a_thousand_records_in_one_chain() {
    let mut inst = Instance::start();
    let root = inst.root();
    root.create_secret("load/read", &random_string(24)).await;
    root.put_policy("nothing", json!([{"names": "other/*", "capabilities": ["read"]}])).await;
    let weak = root.create_token("weak", &["nothing"], "1h").await;

    let http = http();
    let base = inst.url().to_string();
    let tasks: Vec<_> = (0..1000)
        .map(|i| {
            let (http, base) = (http.clone(), base.clone());
            let (root_token, weak_token) = (inst.root_token.clone(), weak.token.clone());
            tokio::spawn(async move {
                let id = format!("burst-{i:04}");
                let request = match i % 10 {
                    // 100 creates: mutations, each record in its transaction.
                    0 => http
                        .post(format!("{base}/v1/secrets"))
                        .bearer_auth(&root_token)
                        .json(&json!({"name": format!("load/new{i}"), "value": format!("value-{i}")})),
                    // 100 refused reads (403), group-committed.
                    1 => http.get(format!("{base}/v1/secrets/load/read:value")).bearer_auth(&weak_token),
                    // 800 reads, group-committed.
                    _ => http.get(format!("{base}/v1/secrets/load/read:value")).bearer_auth(&root_token),
                };
                let response = request.header("x-request-id", &id).send().await.expect("request");
                let echoed = response.headers().get("x-request-id").and_then(|v| v.to_str().ok()).map(str::to_owned);
                assert_eq!(echoed.as_deref(), Some(id.as_str()));
                (id, response.status().as_u16())
            })
        })
        .collect();
    let mut statuses = BTreeMap::new();
    for t in tasks {
        let (id, status) = t.await.unwrap();
        statuses.insert(id, status);
    }
    let count = |s: u16| statuses.values().filter(|v| **v == s).count();
    assert_eq!((count(201), count(403), count(200)), (100, 100, 800), "{statuses:?}");

    let records = all_records(&root).await;
    let burst: Vec<&Value> =
        records.iter().filter(|r| r["request_id"].as_str().is_some_and(|id| id.starts_with("burst-"))).collect();
    assert_eq!(burst.len(), 1000);
    let ids: BTreeSet<&str> = burst.iter().map(|r| r["request_id"].as_str().unwrap()).collect();
    assert_eq!(ids.len(), 1000, "one record per request");
    for r in &burst {
        let id = r["request_id"].as_str().unwrap();
        assert_eq!(r["status"].as_u64(), Some(u64::from(statuses[id])), "{r}");
        let (action, outcome) = match statuses[id] {
            201 => ("secret.create", "ok"),
            403 => ("secret.read", "forbidden"),
            _ => ("secret.read", "ok"),
        };
        assert_eq!((r["action"].as_str(), r["outcome"].as_str()), (Some(action), Some(outcome)), "{r}");
        assert!(r["client"].as_str().unwrap().starts_with("127.0.0.1:"), "{r}");
    }
    // Seqs are 1..N with no gap or repeat.
    let seqs: Vec<i64> = records.iter().map(|r| r["seq"].as_i64().unwrap()).collect();
    assert_eq!(seqs, (1..=seqs.len() as i64).collect::<Vec<_>>());

    // Group commit: the 900 group-committed records took fewer transactions.
    let metrics = reqwest::get(format!("{base}/metrics")).await.unwrap().text().await.unwrap();
    let exposition = parse_prometheus(&metrics).unwrap();
    let batches = exposition
        .samples
        .iter()
        .find(|s| s.name == "tumbler_audit_batch_records_count")
        .map(|s| s.value)
        .expect("batch histogram");
    let batched = exposition.samples.iter().find(|s| s.name == "tumbler_audit_batch_records_sum").unwrap().value;
    assert!(batched >= 900.0 && batches < batched, "{batches} batches for {batched} records");

    // One valid chain, checked beside the server and after it stopped.
    let n = assert_intact(&inst.data_dir, &inst.key_file);
    inst.stop();
    assert_eq!(assert_intact(&inst.data_dir, &inst.key_file), n);
}

#[tokio::test]
async fn a_read_answered_before_the_server_is_killed_keeps_its_record() {
    // A read's record is in the journal (the page cache, not yet fsynced)
    // before its body is sent, and folded into the table within
    // milliseconds or at the next start: a killed process loses none.
    let mut inst = Instance::start();
    inst.root().create_secret("app/db", "kept-value").await;
    let http = http();
    let url = format!("{}/v1/secrets/app/db:value", inst.url());
    let ids: Vec<String> = (0..20).map(|i| format!("before-kill-{i:02}")).collect();
    for id in &ids {
        let response =
            http.get(&url).bearer_auth(&inst.root_token).header("x-request-id", id).send().await.expect("read");
        assert_eq!(response.status().as_u16(), 200);
    }
    inst.kill();

    // Before the restart: the table verifies, and what it lacks of the
    // reads is in the journal, which `audit verify` counts.
    let out = verify(&inst.data_dir, &inst.key_file);
    out.assert_success();
    let journaled = out.json()["journaled"].as_i64().expect("journaled");
    let in_table: i64 = db(&inst.data_dir)
        .query_row("SELECT count(*) FROM audit WHERE request_id LIKE 'before-kill-%'", [], |r| r.get(0))
        .unwrap();
    assert_eq!(in_table + journaled, ids.len() as i64, "table {in_table}, journal {journaled}");
    inst.serve();
    inst.stop();

    let conn = db(&inst.data_dir);
    let mut stmt =
        conn.prepare("SELECT request_id, action, status FROM audit WHERE request_id LIKE 'before-kill-%'").unwrap();
    let rows: Vec<(String, String, i64)> =
        stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?))).unwrap().map(Result::unwrap).collect();
    drop(stmt);
    drop(conn);
    let found: BTreeSet<&str> = rows.iter().map(|(id, _, _)| id.as_str()).collect();
    assert_eq!(found, ids.iter().map(String::as_str).collect(), "{rows:?}");
    assert!(rows.iter().all(|(_, action, status)| action == "secret.read" && *status == 200), "{rows:?}");
    assert_intact(&inst.data_dir, &inst.key_file);
}

#[tokio::test]
async fn reads_answered_while_the_table_refuses_records_stay_journaled_through_a_kill() {
    // The audit table starts refusing inserts under a running server. The
    // next read is journaled and answered; its fold then fails, so its
    // record is certainly in the journal, and only there, when the server
    // is killed. The next start folds it into the table.
    let mut inst = Instance::start();
    inst.root().create_secret("app/db", "kept-value").await;
    db(&inst.data_dir)
        .execute_batch("CREATE TRIGGER refuse BEFORE INSERT ON audit BEGIN SELECT RAISE(ABORT, 'audit refused'); END;")
        .unwrap();
    let records_before = assert_intact(&inst.data_dir, &inst.key_file);
    let http = http();
    let url = format!("{}/v1/secrets/app/db:value", inst.url());
    let mut answered = Vec::new();
    let mut refused = false;
    for i in 0..200 {
        let id = format!("while-refused-{i:03}");
        let response =
            http.get(&url).bearer_auth(&inst.root_token).header("x-request-id", &id).send().await.expect("read");
        match response.status().as_u16() {
            200 => answered.push(id),
            503 => {
                // The failed fold stalled the journal: reads now wait for
                // a commit of their own, which the table refuses.
                assert!(!response.text().await.unwrap().contains("kept-value"));
                refused = true;
                break;
            }
            other => panic!("read {id}: status {other}"),
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert!(refused, "reads were still answered after 200 tries: the failed fold did not stall the journal");
    assert!(!answered.is_empty(), "the first read after the table broke is journaled and answered");
    inst.kill();

    let out = verify(&inst.data_dir, &inst.key_file);
    out.assert_success();
    assert_eq!(out.json()["records"], records_before, "the table took nothing: {out:?}");
    assert_eq!(out.json()["journaled"], answered.len() as i64, "every answered read is in the journal: {out:?}");
    let conn = db(&inst.data_dir);
    let in_table: i64 =
        conn.query_row("SELECT count(*) FROM audit WHERE request_id LIKE 'while-refused-%'", [], |r| r.get(0)).unwrap();
    assert_eq!(in_table, 0);
    conn.execute_batch("DROP TRIGGER refuse").unwrap();
    drop(conn);

    inst.serve();
    inst.stop();
    let conn = db(&inst.data_dir);
    let mut stmt = conn
        .prepare("SELECT request_id, action, status FROM audit WHERE request_id LIKE 'while-refused-%' ORDER BY seq")
        .unwrap();
    let rows: Vec<(String, String, i64)> =
        stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?))).unwrap().map(Result::unwrap).collect();
    drop(stmt);
    drop(conn);
    let found: Vec<&str> = rows.iter().map(|(id, _, _)| id.as_str()).collect();
    assert_eq!(found, answered.iter().map(String::as_str).collect::<Vec<_>>(), "in order, once each: {rows:?}");
    assert!(rows.iter().all(|(_, action, status)| action == "secret.read" && *status == 200), "{rows:?}");
    let out = verify(&inst.data_dir, &inst.key_file);
    out.assert_success();
    assert_eq!(out.json()["journaled"], 0, "{out:?}");
    assert_eq!(assert_intact(&inst.data_dir, &inst.key_file), records_before + answered.len() as i64);
}

// ---------------------------------------------------------------------------
// fail closed
// ---------------------------------------------------------------------------

#[tokio::test]
async fn an_unwritable_audit_log_fails_requests_closed_and_raises_an_alert() {
    let receiver = Receiver::start(vec![500]);
    let mut inst = Instance::init();
    let webhook = ["--alert-webhook", receiver.url.as_str()];
    inst.serve_with(webhook);
    let version = inst.root().create_secret("app/db", "before-value").await;
    inst.stop();

    // The audit table refuses inserts: the store cannot take a record.
    db(&inst.data_dir)
        .execute_batch("CREATE TRIGGER refuse BEFORE INSERT ON audit BEGIN SELECT RAISE(ABORT, 'audit refused'); END;")
        .unwrap();
    let head_before: String =
        db(&inst.data_dir).query_row("SELECT value FROM meta WHERE key = 'audit_head'", [], |r| r.get(0)).unwrap();
    inst.serve_with(webhook);
    let c = inst.root();
    let write = c.post("/v1/secrets/app/db:versions", &json!({"value": "after-value"})).await;
    assert_error(&write, 503, "unavailable");
    let create = c.post("/v1/secrets", &json!({"name": "app/new", "value": "new-value"})).await;
    assert_error(&create, 503, "unavailable");
    // A read's body is never sent without its record.
    let read = c.get("/v1/secrets/app/db:value").await;
    assert_error(&read, 503, "unavailable");
    assert!(!read.1.to_string().contains("before-value"), "{read:?}");
    // And the server stays up: health needs no record.
    assert_eq!(c.get("/v1/health").await.0, 200);

    // The webhook hears about it: refused once (500), delivered on the retry.
    let bodies = receiver.wait_for(2, Duration::from_secs(20));
    for body in &bodies {
        let alert: Value = serde_json::from_str(body).unwrap();
        assert_eq!(alert["kind"], "audit_unavailable", "{alert}");
        assert!(!body.contains("before-value") && !body.contains("after-value"), "{body}");
    }
    assert_eq!(
        serde_json::from_str::<Value>(&bodies[0]).unwrap()["id"],
        serde_json::from_str::<Value>(&bodies[1]).unwrap()["id"],
        "a retry repeats the same alert"
    );
    inst.stop();

    // Nothing changed: no new version, no new secret, no record.
    let conn = db(&inst.data_dir);
    let head_after: String =
        conn.query_row("SELECT value FROM meta WHERE key = 'audit_head'", [], |r| r.get(0)).unwrap();
    assert_eq!(head_before, head_after);
    conn.execute_batch("DROP TRIGGER refuse").unwrap();
    drop(conn);
    inst.serve();
    let c = inst.root();
    assert_eq!(c.read_value("app/db").await, "before-value");
    assert_eq!(c.versions("app/db").await.len(), 1);
    assert_eq!(c.versions("app/db").await[0]["version_id"], version.as_str());
    assert_eq!(c.describe("app/new").await.0, 404);
    inst.stop();
    assert_intact(&inst.data_dir, &inst.key_file);
}

#[tokio::test]
async fn an_unwritable_file_sink_fails_requests_closed_too() {
    let mut inst = Instance::start();
    inst.root().create_secret("app/db", "before-value").await;
    inst.stop();
    // The second sink's file is a device that refuses every write (ENOSPC).
    let sink = inst.dir.path().join("audit.log");
    std::os::unix::fs::symlink("/dev/full", &sink).unwrap();
    inst.serve_with(["--audit-file".into(), sink.clone().into_os_string()]);
    let c = inst.root();
    assert_error(&c.post("/v1/secrets/app/db:versions", &json!({"value": "after-value"})).await, 503, "unavailable");
    assert_error(&c.get("/v1/secrets/app/db:value").await, 503, "unavailable");
    inst.stop();
    inst.serve();
    assert_eq!(inst.root().read_value("app/db").await, "before-value");
    assert_eq!(inst.root().versions("app/db").await.len(), 1);
    inst.stop();
    assert_intact(&inst.data_dir, &inst.key_file);
}

// ---------------------------------------------------------------------------
// no secrets in logs, records or metrics; metrics parse
// ---------------------------------------------------------------------------

#[tokio::test]
async fn no_value_or_token_reaches_logs_records_or_metrics() {
    let inst = Instance::init();
    let sink = inst.dir.path().join("audit.log");
    let mut cmd = serve_command(inst.store_args());
    cmd.arg("--audit-file").arg(&sink).args(["--audit-file-max-bytes", "4096", "--log-format", "json"]);
    // Everything tumbler logs, down to trace; dependencies at info.
    cmd.env("TUMBLER_LOG", "tumbler=trace,info");
    let mut server = Server::spawn(cmd).expect("server starts");
    let c = Client::new(server.url(), Some(&inst.root_token));

    // Known values, through every path that carries one.
    let mut values: Vec<String> = Vec::new();
    fn fresh(values: &mut Vec<String>) -> String {
        let v = format!("VAL{}", random_string(24));
        values.push(v.clone());
        v
    }
    for i in 0..5 {
        let name = format!("app/known{i}");
        c.create_secret(&name, &fresh(&mut values)).await;
        c.add_version(&name, &fresh(&mut values)).await;
        c.read_value(&name).await;
        c.read_label(&name, "previous").await;
    }
    let client_token = format!("CT{}", random_string(20));
    let body = json!({"value": fresh(&mut values), "client_token": client_token});
    assert!(matches!(c.post("/v1/secrets/app/known0:versions", &body).await.0, 200 | 201));
    // A conflicting retry (409) and a duplicate create (409) carry values too.
    let conflict = json!({"value": fresh(&mut values), "client_token": client_token});
    assert_eq!(c.post("/v1/secrets/app/known0:versions", &conflict).await.0, 409);
    assert_eq!(c.post("/v1/secrets", &json!({"name": "app/known1", "value": fresh(&mut values)})).await.0, 409);
    // A malformed request holding a value.
    assert_eq!(c.post("/v1/secrets", &json!({"name": "bad name!", "value": fresh(&mut values)})).await.0, 400);
    // Tokens: the root token, a minted one, and a wrong one.
    c.put_policy("reader", json!([{"names": "app/*", "capabilities": ["read"]}])).await;
    let minted = c.create_token("reader-token", &["reader"], "1h").await;
    let reader = c.with_token(Some(&minted.token));
    reader.read_value("app/known2").await;
    let wrong_token = format!("tmb_{}", random_string(43));
    assert_eq!(c.with_token(Some(&wrong_token)).get("/v1/secrets/app/known2:value").await.0, 401);
    let mut tokens = vec![inst.root_token.clone(), minted.token.clone(), wrong_token, client_token];

    // A request id of our choosing shows up in the logs and the record.
    let response = http()
        .get(format!("{}/v1/secrets/app/known3:value", server.url()))
        .bearer_auth(&inst.root_token)
        .header("x-request-id", "trace-me-42")
        .send()
        .await
        .unwrap();
    assert_eq!(response.headers()["x-request-id"], "trace-me-42");
    // A value, like every response, must not be cached on its way.
    assert_eq!(response.headers()["cache-control"], "no-store");
    let refused = http().get(format!("{}/v1/secrets/app/known3:value", server.url())).send().await.unwrap();
    assert_eq!(refused.status(), 401);
    assert_eq!(refused.headers()["cache-control"], "no-store");

    // Scrape /metrics without a token and parse it strictly.
    let scrape = reqwest::get(format!("{}/metrics", server.url())).await.unwrap();
    assert_eq!(scrape.status(), 200);
    assert!(scrape.headers()["content-type"].to_str().unwrap().starts_with("text/plain"));
    let metrics = scrape.text().await.unwrap();
    let exposition = parse_prometheus(&metrics).unwrap_or_else(|e| panic!("{e}\n{metrics}"));
    for (family, kind) in [
        ("tumbler_http_requests_total", "counter"),
        ("tumbler_http_request_duration_seconds", "histogram"),
        ("tumbler_audit_records_total", "counter"),
        ("tumbler_audit_write_failures_total", "counter"),
        ("tumbler_rotations_total", "counter"),
        ("tumbler_rotation_step_duration_seconds", "histogram"),
        ("tumbler_plugin_traps_total", "counter"),
        ("tumbler_plugin_timeouts_total", "counter"),
        ("tumbler_plugin_denied_calls_total", "counter"),
        ("tumbler_leases_active", "gauge"),
        ("tumbler_leases_expired_total", "counter"),
        ("tumbler_leases_revoke_pending", "gauge"),
        ("tumbler_scheduler_queue_depth", "gauge"),
        ("tumbler_scheduler_next_due_timestamp_seconds", "gauge"),
    ] {
        assert_eq!(exposition.types.get(family).map(String::as_str), Some(kind), "{family}");
        assert!(exposition.helps.contains_key(family), "{family} has no HELP");
    }
    let reads = exposition.samples.iter().find(|s| {
        s.name == "tumbler_http_requests_total"
            && s.labels.get("route").map(String::as_str) == Some("/v1/secrets/{*path}")
            && s.labels.get("method").map(String::as_str) == Some("GET")
            && s.labels.get("status").map(String::as_str) == Some("200")
    });
    assert!(reads.is_some_and(|s| s.value >= 10.0), "{metrics}");
    // Route templates, never names: no label value holds a secret name.
    for s in &exposition.samples {
        for v in s.labels.values() {
            assert!(!v.contains("known"), "a secret name in a label: {s:?}");
        }
    }

    let api_records = serde_json::to_string(&all_records(&c).await).unwrap();
    assert!(api_records.contains("trace-me-42"));
    server.stop();
    let logs = format!("{}\n{}", server.stdout(), server.stderr());
    assert!(logs.contains("trace-me-42"), "the request id is in the logs");
    assert!(logs.contains("\"route\":\"/v1/secrets/{*path}\""), "JSON logs carry the route template");

    let table = audit_table_dump(&inst.data_dir);
    let mut sink_text = String::new();
    for (path, bytes) in dir_contents(inst.dir.path()) {
        if path.file_name().and_then(|n| n.to_str()).is_some_and(|n| n.starts_with("audit.log")) {
            sink_text.push_str(&String::from_utf8_lossy(&bytes));
        }
    }
    assert!(inst.dir.path().join("audit.log.1").exists(), "the sink rotated by size");
    assert!(table.contains("secret.read") && sink_text.contains("\"secret.read\""), "records exist");
    assert!(sink_text.contains("trace-me-42"));

    tokens.retain(|t| !t.is_empty());
    for (what, text) in [
        ("logs", &logs),
        ("audit table", &table),
        ("audit file", &sink_text),
        ("GET /v1/audit", &api_records),
        ("/metrics", &metrics),
    ] {
        for v in values.iter().chain(&tokens) {
            assert!(!text.contains(v.as_str()), "{what} contains a secret value or token ({v})");
        }
    }
}
