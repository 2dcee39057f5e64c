//! tumbler against OpenBao's database engine on the same real PostgreSQL
//! (scram-sha-256 password authentication, started by the harness on a
//! loopback port), in the same run: password rotations of existing roles,
//! and dynamic credentials issued, each with 8 concurrent clients.

use crate::bench::{Report, Section, Spread, fixed_count, http_client, size};
use crate::bench_openbao::OpenBao;
use crate::random_string;
use crate::servers::Postgres;
use reqwest::Method;
use serde_json::{Value, json};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Concurrent clients of every figure here.
const CLIENTS: usize = 8;

fn pg_value(pg: &Postgres, user: &str, password: &str) -> String {
    json!({"engine": "postgres", "host": "127.0.0.1", "port": pg.port, "username": user, "password": password,
           "dbname": "postgres"})
    .to_string()
}

/// One figure measured on both sides, run by run.
#[derive(Default)]
struct Pair {
    ours: Vec<f64>,
    peer: Vec<f64>,
}

impl Pair {
    fn row(&self, what: &str, peer_what: &str) -> Vec<String> {
        let ours = Spread::of(&self.ours);
        if self.peer.is_empty() {
            return vec![what.into(), ours.show(1), peer_what.into(), "skipped".into(), "–".into()];
        }
        let peer = Spread::of(&self.peer);
        vec![what.into(), ours.show(1), peer_what.into(), peer.show(1), self.ratio().show(2)]
    }

    /// Run by run, ours over the peer's.
    fn ratio(&self) -> Spread {
        Spread::of(&self.ours.iter().zip(&self.peer).map(|(a, b)| a / b).collect::<Vec<_>>())
    }

    /// Judged, as the read ratio is, by the median of the runs' own
    /// ratios: each run measures both sides seconds apart, so the machine's
    /// drift between runs does not decide it.
    fn target(&self, report: &Report, what: &str) {
        let ours = Spread::of(&self.ours).median;
        if self.peer.is_empty() {
            report.target(what, "≥ OpenBao's", format!("{ours:.1}/s; OpenBao skipped"), None);
        } else {
            let peer = Spread::of(&self.peer).median;
            let ratio = self.ratio();
            let measured = format!("{ours:.1}/s vs {peer:.1}/s; ratio {}", ratio.show(2));
            report.target(what, "≥ OpenBao's", measured, Some(ratio.median >= 1.0));
        }
    }
}

/// The PostgreSQL section: skipped, with the reason, when PostgreSQL
/// cannot be started here.
pub async fn postgres(report: &Report) {
    let title = "PostgreSQL: rotations and dynamic credentials, tumbler vs OpenBao (harness client, 8 clients)";
    let pg = match tokio::task::spawn_blocking(Postgres::start).await {
        Ok(pg) => Arc::new(pg),
        Err(e) => {
            let why = e.try_into_panic().map(|p| crate::bench::panic_message(&*p)).unwrap_or_default();
            let mut section = Section::new(title, &[]);
            section.note(format!("Skipped: PostgreSQL did not start ({why}); scripts/bench.sh installs it."));
            report.section(section);
            report.target("postgres rotations/s", "≥ OpenBao's", "skipped", None);
            report.target("dynamic credentials issued/s", "≥ OpenBao's", "skipped", None);
            return;
        }
    };
    let runs = size(3, 2);
    let rotations_per_client = size(10, 2);
    let issues_per_client = size(25, 5);

    // Roles the rotations change: one per client and kind of rotation.
    let pg_setup = pg.clone();
    let initial = random_string(24);
    let initial_sql = initial.clone();
    tokio::task::spawn_blocking(move || {
        for i in 0..CLIENTS {
            for side in ["t", "s", "o"] {
                pg_setup.psql(&format!("CREATE ROLE bench_{side}{i} LOGIN PASSWORD '{initial_sql}'"));
            }
        }
    })
    .await
    .expect("create PostgreSQL roles");

    let instance = crate::bench_http::start_instance().await;
    let root = instance.root();
    root.create_secret("db/admin", &pg_value(&pg, &pg.superuser, &pg.password)).await;
    // db/t*: the admin sets the password (OpenBao's static roles do the
    // same); db/s*: the role sets its own (AWS's single-user template).
    for i in 0..CLIENTS {
        for (side, params, grants) in [
            (
                "t",
                json!({"tls": "disable", "admin_secret": "db/admin"}),
                json!({"sql": [pg.addr()], "secrets": ["db/admin"]}),
            ),
            ("s", json!({"tls": "disable"}), json!({"sql": [pg.addr()]})),
        ] {
            let name = format!("db/{side}{i}");
            root.create_secret(&name, &pg_value(&pg, &format!("bench_{side}{i}"), &initial)).await;
            let config = json!({"plugin": "postgres", "schedule": "rate(30 days)", "params": params, "grants": grants});
            let reply = root.put(&format!("/v1/secrets/{name}:rotation"), &config).await;
            assert_eq!(reply.0, 200, "rotation config of {name}: {reply:?}");
        }
    }
    let role = json!({"plugin": "postgres", "admin_secret": "db/admin",
                      "params": {"host": "127.0.0.1", "port": pg.port, "tls": "disable"},
                      "grants": {"sql": [pg.addr()]}, "default_ttl": "1h", "max_ttl": "2h", "max_leases": 1_000_000});
    let reply = root.put("/v1/roles/bench", &role).await;
    assert_eq!(reply.0, 200, "dynamic role: {reply:?}");
    root.put_policy("bench-issuer", json!([{"names": "sys/roles/bench", "capabilities": ["read"]}])).await;

    let bao = match OpenBao::start().await {
        Ok(bao) => {
            setup_openbao(&bao, &pg).await;
            Some(Arc::new(bao))
        }
        Err(why) => {
            eprintln!("OpenBao skipped: {why}");
            None
        }
    };

    // One of each first, outside the clock: connections, caches, JIT.
    for side in ["t", "s"] {
        tumbler_rotate(&http_client(), instance.url(), &instance.root_token, &format!("db/{side}0")).await;
    }
    let warm_token = root.create_token("bench-warm", &["bench-issuer"], "2h").await.token;
    tumbler_issue(&http_client(), instance.url(), &warm_token).await;
    if let Some(bao) = &bao {
        bao.must(Method::POST, "/v1/database/rotate-role/bench_o0", None).await;
        bao.must(Method::GET, "/v1/database/creds/bench", None).await;
    }

    let (mut rotations, mut own_rotations, mut issues) = (Pair::default(), Pair::default(), Pair::default());
    let (mut records, mut own_records) = (Vec::new(), Vec::new());
    for run in 0..runs {
        for (side, pair, records) in [("t", &mut rotations, &mut records), ("s", &mut own_rotations, &mut own_records)]
        {
            let (http, url, token) = (http_client(), instance.url().to_string(), instance.root_token.clone());
            let durations = Arc::new(std::sync::Mutex::new(Vec::new()));
            let sink = durations.clone();
            let load = fixed_count(CLIENTS, rotations_per_client, move |client| {
                let (http, url, token, sink) = (http.clone(), url.clone(), token.clone(), sink.clone());
                async move {
                    let record = tumbler_rotate(&http, &url, &token, &format!("db/{side}{client}")).await;
                    sink.lock().unwrap().push(record);
                }
            })
            .await;
            pair.ours.push(load.per_second());
            records.extend(durations.lock().unwrap().drain(..));
        }

        if let Some(bao) = &bao {
            let bao = bao.clone();
            let load = fixed_count(CLIENTS, rotations_per_client, move |client| {
                let bao = bao.clone();
                async move {
                    bao.must(Method::POST, &format!("/v1/database/rotate-role/bench_o{client}"), None).await;
                }
            })
            .await;
            rotations.peer.push(load.per_second());
            own_rotations.peer.push(load.per_second());
        }

        // A token per client and run: a token may hold 100 leases at once
        // (`--lease-token-quota`, shipped default).
        let mut tokens = Vec::new();
        for c in 0..CLIENTS {
            tokens.push(root.create_token(&format!("bench-{run}-{c}"), &["bench-issuer"], "2h").await.token);
        }
        let (http, url, tokens) = (http_client(), instance.url().to_string(), Arc::new(tokens));
        let load = fixed_count(CLIENTS, issues_per_client, move |client| {
            let (http, url, tokens) = (http.clone(), url.clone(), tokens.clone());
            async move { tumbler_issue(&http, &url, &tokens[client]).await }
        })
        .await;
        issues.ours.push(load.per_second());

        if let Some(bao) = &bao {
            let bao = bao.clone();
            let load = fixed_count(CLIENTS, issues_per_client, move |_| {
                let bao = bao.clone();
                async move {
                    let creds = bao.must(Method::GET, "/v1/database/creds/bench", None).await;
                    assert!(creds["data"]["username"].is_string(), "creds without a username: {creds}");
                }
            })
            .await;
            issues.peer.push(load.per_second());
        }
    }

    // After the clock: each rotated password is the one PostgreSQL takes.
    let mut current = Vec::new();
    for i in 0..CLIENTS {
        for side in ["t", "s"] {
            let value: Value =
                serde_json::from_str(&root.read_value(&format!("db/{side}{i}")).await).expect("JSON value");
            current.push((format!("bench_{side}{i}"), value["password"].as_str().expect("password").to_string()));
        }
    }
    let pg_check = pg.clone();
    let verified = tokio::task::spawn_blocking(move || {
        current.iter().all(|(user, password)| pg_check.psql_as(user, password, "postgres", "SELECT 1").success())
    })
    .await
    .expect("verify passwords");
    assert!(verified, "a rotated password does not log in to PostgreSQL");

    let mut section =
        Section::new(title, &["figure", "tumbler /s", "OpenBao figure", "OpenBao /s", "tumbler / OpenBao"]);
    section.row(rotations.row(
        "`postgres` rotation, the admin sets the password (`POST NAME:rotate`, then wait for it to end)",
        "static role `POST /v1/database/rotate-role/NAME`",
    ));
    section.row(
        own_rotations
            .row("`postgres` rotation, the role sets its own (AWS's single-user template)", "the same OpenBao runs"),
    );
    section.row(issues.row("dynamic credential (`POST /v1/roles/NAME:issue`)", "`GET /v1/database/creds/ROLE`"));
    let total_rotations = rotations.ours.len() * CLIENTS * rotations_per_client;
    let (rotation_spread, steps) = rotation_times(&records);
    let (own_spread, own_steps) = rotation_times(&own_records);
    section.note(format!(
        "Each figure: the median of {runs} runs (min–max); per run, {CLIENTS} concurrent clients each do \
         {rotations_per_client} rotations of a PostgreSQL role of their own, then {issues_per_client} issues from \
         one role, tumbler and OpenBao alternating. Load: the harness's own async client (reqwest), because each \
         call is a sequence (tumbler's `:rotate` answers 202, then `GET /v1/rotations/ID?wait=60s` answers when \
         the rotation has ended) or needs a token per client, which wrk cannot do."
    ));
    section.note(format!(
        "A tumbler rotation is the full single-user `postgres` rotation: create, set (`ALTER ROLE … PASSWORD` with \
         a SCRAM verifier: as the admin, on the server's pooled admin session, when the rotation names \
         `admin_secret`, as OpenBao's static role does; else as the role itself, which logs in with its current \
         password), test (a new connection **logs in with the new password** and runs `SELECT 1`), finish; every \
         step audited, at most {concurrency} rotations at a time (`--rotation-concurrency`, shipped default). One \
         rotation, from the request to the end of finish (waiting for a slot included), median (min–max) over \
         {total_rotations} of each kind: admin sets {:.0} ms ({:.0}–{:.0}), per step {steps}; the role sets its own \
         {:.0} ms ({:.0}–{:.0}), per step {own_steps}. After the runs the harness logged in to PostgreSQL with each \
         secret's current password: all {} worked. OpenBao's `rotate-role` sets the new password with its pooled \
         superuser connection and does not log in with it.",
        rotation_spread.median,
        rotation_spread.min,
        rotation_spread.max,
        own_spread.median,
        own_spread.min,
        own_spread.max,
        2 * CLIENTS,
        concurrency = tumbler::rotation::Settings::default().concurrency,
    ));
    section.note(
        "Issue: tumbler creates a role (`CREATE ROLE … VALID UNTIL`) through the `postgres` plugin with the admin \
         secret, records an audited lease (1 h TTL), and answers 201; OpenBao's dynamic role runs `CREATE ROLE \
         \"{{name}}\" WITH LOGIN PASSWORD '{{password}}' VALID UNTIL '{{expiration}}';` (1 h TTL) and records \
         its lease in memory (`-dev`).",
    );
    section.note(
        "PostgreSQL: the test harness's server (tests/src/servers.rs: scram-sha-256 for every TCP login, \
         `fsync=off`), one server for both.",
    );
    if bao.is_none() {
        section.note(format!(
            "OpenBao: skipped ({}).",
            crate::bench_openbao::binary().err().unwrap_or_else(|| "it did not start".into())
        ));
    }
    report.section(section);
    rotations.target(report, "postgres rotations/s (8 clients; the admin sets, as OpenBao's static role)");
    issues.target(report, "dynamic credentials issued/s (8 clients)");
    drop(instance);
    drop(bao);
    drop(pg);
}

/// OpenBao's database engine on `pg`: the connection, a static role per
/// client on the `bench_o*` roles, and a dynamic role `bench`.
async fn setup_openbao(bao: &OpenBao, pg: &Postgres) {
    bao.must(Method::POST, "/v1/sys/mounts/database", Some(&json!({"type": "database"}))).await;
    let url = format!("postgresql://{{{{username}}}}:{{{{password}}}}@127.0.0.1:{}/postgres?sslmode=disable", pg.port);
    let config = json!({"plugin_name": "postgresql-database-plugin", "connection_url": url,
                        "username": pg.superuser, "password": pg.password, "allowed_roles": "*"});
    bao.must(Method::POST, "/v1/database/config/pg", Some(&config)).await;
    for i in 0..CLIENTS {
        let role = json!({"db_name": "pg", "username": format!("bench_o{i}"), "rotation_period": "24h"});
        bao.must(Method::POST, &format!("/v1/database/static-roles/bench_o{i}"), Some(&role)).await;
    }
    let role = json!({"db_name": "pg", "default_ttl": "1h", "max_ttl": "2h", "creation_statements": [
        "CREATE ROLE \"{{name}}\" WITH LOGIN PASSWORD '{{password}}' VALID UNTIL '{{expiration}}';"]});
    bao.must(Method::POST, "/v1/database/roles/bench", Some(&role)).await;
}

/// The spread of whole rotations and the median of each step, from
/// rotation records.
fn rotation_times(records: &[Value]) -> (Spread, String) {
    let whole: Vec<f64> = records.iter().map(|r| r["duration_ms"].as_f64().unwrap_or(0.0)).collect();
    let steps = ["create", "set", "test", "finish"]
        .iter()
        .filter_map(|step| {
            let times: Vec<f64> = records
                .iter()
                .flat_map(|r| r["attempts"].as_array().cloned().unwrap_or_default())
                .filter(|a| a["step"] == *step)
                .filter_map(|a| a["duration_ms"].as_f64())
                .collect();
            (!times.is_empty()).then(|| format!("{step} {:.0} ms", Spread::of(&times).median))
        })
        .collect::<Vec<_>>()
        .join(", ");
    (Spread::of(&whole), steps)
}

/// Rotates `secret` and waits for the rotation to end; panics unless it
/// succeeded. Returns its record (steps with their durations).
async fn tumbler_rotate(http: &reqwest::Client, url: &str, token: &str, secret: &str) -> Value {
    let reply = http.post(format!("{url}/v1/secrets/{secret}:rotate")).bearer_auth(token).json(&json!({}));
    let reply = reply.send().await.expect("rotate");
    assert_eq!(reply.status(), 202, "rotate: {:?}", reply.text().await);
    let started: Value = reply.json().await.expect("rotate reply");
    let id = started["rotation_id"].as_str().expect("rotation_id").to_string();
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        // Answered when the rotation ends (or after 60 s, still running).
        let record: Value = http
            .get(format!("{url}/v1/rotations/{id}?wait=60s"))
            .bearer_auth(token)
            .send()
            .await
            .expect("rotation record")
            .json()
            .await
            .expect("rotation record JSON");
        if record["status"] != "running" {
            assert_eq!(record["status"], "succeeded", "rotation failed: {record:#}");
            return record;
        }
        assert!(Instant::now() < deadline, "rotation {id} still running after 2 minutes: {record:#}");
    }
}

/// Issues one credential from role `bench`; panics unless it was issued.
async fn tumbler_issue(http: &reqwest::Client, url: &str, token: &str) {
    let reply = http.post(format!("{url}/v1/roles/bench:issue")).bearer_auth(token).json(&json!({}));
    let reply = reply.send().await.expect("issue");
    let status = reply.status();
    let body: Value = reply.json().await.unwrap_or(Value::Null);
    assert_eq!(status, 201, "issue: {body}");
    assert!(body["credential"]["username"].is_string(), "issued without a username: {body}");
}
