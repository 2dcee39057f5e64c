//! Dynamic secrets and break glass through the real binary, against a real
//! PostgreSQL with password authentication and a real MariaDB, each started
//! by the test on loopback ports of its own: what a user checks is whether
//! an issued credential logs in, and when it stops doing so.

use serde_json::{Value, json};
use std::collections::BTreeSet;
use std::time::{Duration, Instant};
use tumbler_tests::servers::{Mariadb, Postgres};
use tumbler_tests::{Client, Instance, assert_error, error_message, secret_path};

/// Fast retries, and room for the 200-lease test.
const SERVE_ARGS: &[&str] = &[
    "--lease-retry-base",
    "200ms",
    "--lease-retry-max",
    "1s",
    "--lease-token-quota",
    "1000",
    "--rotation-retry-base",
    "200ms",
    "--rotation-retry-max",
    "1s",
];

fn serve() -> Instance {
    let mut instance = Instance::init();
    instance.serve_with(SERVE_ARGS);
    instance
}

fn pg_secret(pg: &Postgres, username: &str, password: &str) -> String {
    json!({"engine": "postgres", "host": "127.0.0.1", "port": pg.port, "username": username,
           "password": password, "dbname": "postgres"})
    .to_string()
}

fn pg_logs_in(pg: &Postgres, user: &str, password: &str) -> bool {
    pg.psql_as(user, password, "postgres", "SELECT 1").success()
}

fn pg_role_exists(pg: &Postgres, user: &str) -> bool {
    pg.psql(&format!("SELECT count(*) FROM pg_roles WHERE rolname = '{}'", user.replace('\'', "''"))) == "1"
}

/// A role on `pg` logging in as the superuser held in `db/admin`.
async fn pg_role(root: &Client, pg: &Postgres, name: &str, extra: Value) -> (u16, Value) {
    let mut body = json!({
        "plugin": "postgres", "admin_secret": "db/admin",
        "params": {"host": "127.0.0.1", "port": pg.port, "tls": "disable"},
        "grants": {"sql": [pg.addr()]},
    });
    for (k, v) in extra.as_object().unwrap() {
        body[k] = v.clone();
    }
    root.put(&format!("/v1/roles/{name}"), &body).await
}

async fn issue(client: &Client, role: &str, ttl: Option<&str>) -> Value {
    let body = match ttl {
        Some(t) => json!({"ttl": t}),
        None => json!({}),
    };
    let reply = client.post(&format!("/v1/roles/{role}:issue"), &body).await;
    assert_eq!(reply.0, 201, "issue from {role}: {reply:?}");
    reply.1
}

fn user_of(issued: &Value) -> (&str, &str) {
    (issued["credential"]["username"].as_str().expect("username"), issued["credential"]["password"].as_str().unwrap())
}

async fn lease(client: &Client, id: &str) -> Value {
    let (status, list) = client.get("/v1/leases").await;
    assert_eq!(status, 200, "{list}");
    list["leases"].as_array().unwrap().iter().find(|l| l["lease_id"] == id).cloned().unwrap_or(Value::Null)
}

/// Polls `f` every 100 ms until it holds; panics with `what` after `limit`.
async fn eventually(limit: Duration, what: &str, mut f: impl AsyncFnMut() -> bool) -> Duration {
    let started = Instant::now();
    loop {
        if f().await {
            return started.elapsed();
        }
        assert!(started.elapsed() < limit, "{what}: not within {limit:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn millis(rfc3339: &Value) -> i64 {
    let t = humantime::parse_rfc3339(rfc3339.as_str().expect("a time")).expect("RFC 3339");
    t.duration_since(std::time::UNIX_EPOCH).unwrap().as_millis() as i64
}

fn now_millis() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis() as i64
}

#[tokio::test(flavor = "multi_thread")]
async fn postgres_leases_log_in_expire_renew_up_to_the_max_and_revoke() {
    let pg = Postgres::start();
    let instance = serve();
    let root = instance.root();
    root.create_secret("db/admin", &pg_secret(&pg, &pg.superuser, &pg.password)).await;

    // Bad roles are refused with the reason and store nothing.
    let quoted = json!({"params": {"host": "127.0.0.1", "port": pg.port, "tls": "disable",
        "creation_statements": ["CREATE ROLE {{name}} LOGIN PASSWORD '{{password}}'"]}});
    let (status, body) = pg_role(&root, &pg, "bad", quoted).await;
    assert_eq!(status, 400, "{body}");
    assert!(body["error"]["message"].as_str().unwrap().contains("inside quotes"), "{body}");
    let (status, body) = pg_role(&root, &pg, "bad", json!({"plugin": "noop"})).await;
    assert_eq!(status, 400, "{body}");
    assert!(body["error"]["message"].as_str().unwrap().contains("dynamic"), "{body}");
    let (status, body) = pg_role(&root, &pg, "bad", json!({"default_ttl": "2h", "max_ttl": "1h"})).await;
    assert_eq!(status, 400, "{body}");
    assert_eq!(root.get("/v1/roles/bad").await.0, 404, "a refused role is not stored");

    let (status, body) = pg_role(&root, &pg, "app", json!({"default_ttl": "3s", "max_ttl": "15s"})).await;
    assert_eq!(status, 200, "{body}");

    // Issued: it logs in, as a role PostgreSQL itself expires.
    let first = issue(&root, "app", None).await;
    let (user, password) = user_of(&first);
    assert!(user.starts_with("v_app_"), "{user}");
    assert!(pg_logs_in(&pg, user, password), "an issued credential logs in");
    let valid_until = pg.psql(&format!("SELECT rolvaliduntil IS NOT NULL FROM pg_roles WHERE rolname = '{user}'"));
    assert_eq!(valid_until, "t", "the role carries VALID UNTIL");
    let listed = lease(&root, first["lease_id"].as_str().unwrap()).await;
    assert_eq!(listed["state"], "active");
    assert!(!listed.to_string().contains(password), "lease listings never hold the credential");

    // After its TTL it cannot log in, and the sweeper drops the role within 5 s.
    let expires = millis(&first["expires_at"]);
    tokio::time::sleep(Duration::from_millis((expires - now_millis()).max(0) as u64)).await;
    let took =
        eventually(Duration::from_secs(5), "the expired role is dropped", async || !pg_role_exists(&pg, user)).await;
    eprintln!("expiry to revocation at the target: {took:?}");
    assert!(!pg_logs_in(&pg, user, password), "after its TTL the credential is refused");
    let revoked = lease(&root, first["lease_id"].as_str().unwrap()).await;
    assert_eq!(revoked["state"], "revoked", "{revoked}");
    assert_eq!(revoked["revoke_reason"], "expired", "{revoked}");

    // Renew extends it (at the target too) and stops at the max TTL.
    let second = issue(&root, "app", Some("4s")).await;
    let (user, password) = user_of(&second);
    let id = second["lease_id"].as_str().unwrap();
    let (status, renewed) = root.post(&format!("/v1/leases/{id}:renew"), &json!({"ttl": "9s"})).await;
    assert_eq!(status, 200, "{renewed}");
    assert!(millis(&renewed["expires_at"]) > millis(&second["expires_at"]) + 3_000, "{renewed}");
    tokio::time::sleep(Duration::from_millis((millis(&second["expires_at"]) - now_millis() + 1_000).max(0) as u64))
        .await;
    assert!(pg_logs_in(&pg, user, password), "a renewed lease outlives its first end");
    let (status, at_max) = root.post(&format!("/v1/leases/{id}:renew"), &json!({"ttl": "1h"})).await;
    assert_eq!(status, 200, "{at_max}");
    assert_eq!(at_max["expires_at"], second["max_expires_at"], "renew stops at the max TTL");
    let (status, body) = root.post(&format!("/v1/leases/{id}:renew"), &json!({"ttl": "1h"})).await;
    assert_eq!(status, 409, "{body}");
    assert!(body["error"]["message"].as_str().unwrap().contains("max TTL"), "{body}");

    // Revoke now: refused at once, the role is gone. A body with fields
    // is refused first, and revokes nothing.
    let reply = root.post(&format!("/v1/leases/{id}:revoke"), &json!({"reason": "x"})).await;
    assert_error(&reply, 400, "invalid_request");
    assert!(error_message(&reply.1).contains("POST :revoke takes no request body"), "{reply:?}");
    assert!(pg_logs_in(&pg, user, password), "a refused revoke leaves the credential working");
    let (status, body) = root.post(&format!("/v1/leases/{id}:revoke"), &json!({})).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["state"], "revoked", "{body}");
    assert!(!pg_logs_in(&pg, user, password), "after revoke the credential is refused");
    assert!(!pg_role_exists(&pg, user));

    // A role with open leases cannot be deleted; revoke-all empties it.
    let third = issue(&root, "app", Some("1m")).await;
    let (status, body) = root.delete("/v1/roles/app").await;
    assert_eq!(status, 409, "{body}");
    let reply = root.post("/v1/roles/app:revoke-all", &json!({"force": true})).await;
    assert_error(&reply, 400, "invalid_request");
    assert!(error_message(&reply.1).contains("POST :revoke-all takes no request body"), "{reply:?}");
    let (status, body) = root.post("/v1/roles/app:revoke-all", &json!({})).await;
    assert_eq!((status, body["revoking"].clone()), (202, json!(1)), "{body}");
    let third_user = user_of(&third).0.to_owned();
    eventually(Duration::from_secs(5), "revoke-all drops the role", async || !pg_role_exists(&pg, &third_user)).await;
    eventually(Duration::from_secs(5), "the lease is revoked", async || {
        lease(&root, third["lease_id"].as_str().unwrap()).await["state"] == "revoked"
    })
    .await;
    assert_eq!(root.delete("/v1/roles/app").await.0, 200);
    assert!(!pg.log().contains(password), "no issued password reaches the server log");
}

#[tokio::test(flavor = "multi_thread")]
async fn quotas_authorization_and_token_revocation() {
    let pg = Postgres::start();
    let instance = serve();
    let root = instance.root();
    root.create_secret("db/admin", &pg_secret(&pg, &pg.superuser, &pg.password)).await;
    let (status, body) = pg_role(&root, &pg, "small", json!({"max_leases": 2, "default_ttl": "10m"})).await;
    assert_eq!(status, 200, "{body}");

    // Only holders of `read` on sys/roles/NAME may issue; a lease belongs to its token.
    root.put_policy("issuer", json!([{"names": "sys/roles/small", "capabilities": ["read"]}])).await;
    root.put_policy("elsewhere", json!([{"names": "sys/roles/other", "capabilities": ["read", "admin"]}])).await;
    let alice = root.create_token("alice", &["issuer"], "1h").await;
    let bob = root.create_token("bob", &["issuer"], "1h").await;
    let alice_id = alice.id.clone();
    let nobody = root.create_token("nobody", &["elsewhere"], "1h").await;
    let (alice, bob, nobody) =
        (root.with_token(Some(&alice.token)), root.with_token(Some(&bob.token)), root.with_token(Some(&nobody.token)));
    assert_eq!(nobody.post("/v1/roles/small:issue", &json!({})).await.0, 403);
    let a = issue(&alice, "small", None).await;
    let a_id = a["lease_id"].as_str().unwrap();
    let (status, body) = bob.post(&format!("/v1/leases/{a_id}:revoke"), &json!({})).await;
    assert_eq!(status, 403, "another token's lease: {body}");
    // Alice's lease ends no later than her token.
    assert!(millis(&a["max_expires_at"]) <= now_millis() + 3_600_000 + 1_000, "{a}");

    // The role's quota counts every open lease.
    issue(&bob, "small", None).await;
    let (status, body) = alice.post("/v1/roles/small:issue", &json!({})).await;
    assert_eq!(status, 409, "{body}");
    assert!(body["error"]["message"].as_str().unwrap().contains("max_leases"), "{body}");

    // Revoking alice's token revokes her lease at the target.
    assert_eq!(root.delete(&format!("/v1/tokens/{alice_id}")).await.0, 200);
    let a_user = user_of(&a).0.to_owned();
    eventually(Duration::from_secs(5), "the revoked token's lease is revoked", async || !pg_role_exists(&pg, &a_user))
        .await;
    assert_eq!(lease(&root, a_id).await["revoke_reason"], "token revoked");

    // The same through the CLI.
    let (port, grant) = (format!("port={}", pg.port), format!("sql:{}", pg.addr()));
    let put = instance.cli(
        [
            "role",
            "put",
            "cli",
            "--plugin",
            "postgres",
            "--admin-secret",
            "db/admin",
            "--param",
            "host=127.0.0.1",
            "--param",
            &port,
            "--param",
            "tls=disable",
            "--grant",
            &grant,
            "--default-ttl",
            "1m",
            "--output",
            "json",
        ],
        None,
    );
    assert_eq!(put.assert_success().json()["default_ttl"], "1m");
    let issued = instance.cli(["role", "issue", "cli", "--ttl", "30s", "--output", "json"], None);
    let issued = issued.assert_success().json();
    let (user, password) = user_of(&issued);
    assert!(pg_logs_in(&pg, user, password), "a credential issued by the CLI logs in");
    let id = issued["lease_id"].as_str().unwrap();
    let revoked = instance.cli(["lease", "revoke", id, "--output", "json"], None);
    assert_eq!(revoked.assert_success().json()["state"], "revoked");
    let listed = instance.cli(["lease", "ls", "--role", "cli", "--output", "json"], None);
    assert_eq!(listed.assert_success().json()["leases"][0]["state"], "revoked");
    assert!(!pg_logs_in(&pg, user, password));
}

#[tokio::test(flavor = "multi_thread")]
async fn two_hundred_leases_expiring_together_are_all_revoked_within_ten_seconds() {
    let pg = Postgres::start_with(&["max_connections=200"]);
    let instance = serve();
    let root = instance.root();
    root.create_secret("db/admin", &pg_secret(&pg, &pg.superuser, &pg.password)).await;
    let (status, body) = pg_role(&root, &pg, "many", json!({"default_ttl": "40s", "max_leases": 500})).await;
    assert_eq!(status, 200, "{body}");

    let started = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    let per_task = 25;
    for _ in 0..8 {
        let root = root.clone();
        tasks.spawn(async move {
            let mut out = Vec::new();
            for _ in 0..per_task {
                out.push(issue(&root, "many", None).await);
            }
            out
        });
    }
    let mut leases = Vec::new();
    while let Some(batch) = tasks.join_next().await {
        leases.extend(batch.unwrap());
    }
    let issuing = started.elapsed();
    assert_eq!(leases.len(), 200);
    eprintln!(
        "issued 200 PostgreSQL leases with 8 clients in {issuing:?}: {:.1} issues/s",
        200.0 / issuing.as_secs_f64()
    );
    let users: Vec<String> = leases.iter().map(|l| user_of(l).0.to_owned()).collect();
    let count = |pg: &Postgres| -> usize {
        pg.psql("SELECT count(*) FROM pg_roles WHERE rolname LIKE 'v\\_many\\_%'").parse().unwrap()
    };
    assert_eq!(count(&pg), 200);
    let last_expiry = leases.iter().map(|l| millis(&l["expires_at"])).max().unwrap();
    let first_expiry = leases.iter().map(|l| millis(&l["expires_at"])).min().unwrap();
    assert!(last_expiry - first_expiry < 40_000, "issued well within one TTL");
    tokio::time::sleep(Duration::from_millis((last_expiry - now_millis()).max(0) as u64)).await;
    let took = eventually(Duration::from_secs(10), "all 200 expired roles dropped", async || count(&pg) == 0).await;
    eprintln!("200 leases revoked at the target {took:?} after the last expiry");
    for u in users.iter().take(3) {
        assert!(!pg_role_exists(&pg, u));
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn leases_outlive_a_killed_server_and_a_down_target_is_revoked_once_back() {
    let mut pg = Postgres::start();
    let mut instance = serve();
    let root = instance.root();
    root.create_secret("db/admin", &pg_secret(&pg, &pg.superuser, &pg.password)).await;
    assert_eq!(pg_role(&root, &pg, "app", json!({"default_ttl": "4s"})).await.0, 200);
    let mut issued = Vec::new();
    for _ in 0..3 {
        issued.push(issue(&root, "app", None).await);
    }
    instance.kill();
    // Down past their expiry; the target expires the logins by itself.
    tokio::time::sleep(Duration::from_secs(5)).await;
    for l in &issued {
        let (user, password) = user_of(l);
        assert!(!pg_logs_in(&pg, user, password), "VALID UNTIL refuses an expired lease while tumbler is down");
    }
    instance.serve_with(SERVE_ARGS);
    let root = instance.root();
    for l in &issued {
        let user = user_of(l).0.to_owned();
        eventually(Duration::from_secs(5), "a lease that expired while down is revoked after restart", async || {
            !pg_role_exists(&pg, &user)
        })
        .await;
    }

    // The target is down when the lease ends: revoke_pending, retried, done once back.
    let l = issue(&root, "app", Some("5s")).await;
    let (user, id) = (user_of(&l).0.to_owned(), l["lease_id"].as_str().unwrap().to_owned());
    pg.stop();
    eventually(Duration::from_secs(20), "a failed revocation is recorded and retried", async || {
        let now = lease(&root, &id).await;
        now["state"] == "revoke_pending" && now["revoke_attempts"].as_u64().unwrap_or(0) >= 2
    })
    .await;
    pg.restart();
    eventually(Duration::from_secs(10), "revoked once the target is back", async || {
        lease(&root, &id).await["state"] == "revoked"
    })
    .await;
    assert!(!pg_role_exists(&pg, &user));
}

#[tokio::test(flavor = "multi_thread")]
async fn mariadb_leases_log_in_and_are_dropped_on_revoke_and_expiry() {
    let db = Mariadb::start();
    let instance = serve();
    let root = instance.root();
    let admin = json!({"engine": "mariadb", "host": "127.0.0.1", "port": db.port, "username": db.superuser,
                       "password": db.password});
    root.create_secret("db/admin", &admin.to_string()).await;
    let body = json!({"plugin": "mysql", "admin_secret": "db/admin", "default_ttl": "3s",
        "params": {"host": "127.0.0.1", "port": db.port, "tls": "disable"}, "grants": {"sql": [db.addr()]}});
    let (status, reply) = root.put("/v1/roles/my", &body).await;
    assert_eq!(status, 200, "{reply}");
    let exists = |user: &str| db.sql(&format!("SELECT count(*) FROM mysql.user WHERE user = '{user}'")) != "0";

    let revoked = issue(&root, "my", Some("1m")).await;
    let (user, password) = user_of(&revoked);
    assert!(user.len() <= 32, "{user}");
    assert!(db.sql_as(user, password, "SELECT 1").success(), "an issued MariaDB credential logs in");
    let id = revoked["lease_id"].as_str().unwrap();
    assert_eq!(root.post(&format!("/v1/leases/{id}:revoke"), &json!({})).await.1["state"], "revoked");
    assert!(!db.sql_as(user, password, "SELECT 1").success(), "after revoke it is refused");
    assert!(!exists(user));

    let expiring = issue(&root, "my", None).await;
    let (user, password) = user_of(&expiring);
    assert!(db.sql_as(user, password, "SELECT 1").success());
    tokio::time::sleep(Duration::from_millis((millis(&expiring["expires_at"]) - now_millis()).max(0) as u64)).await;
    eventually(Duration::from_secs(5), "the expired MariaDB user is dropped", async || !exists(user)).await;
    assert!(!db.sql_as(user, password, "SELECT 1").success(), "after its TTL it is refused");
}

#[tokio::test(flavor = "multi_thread")]
async fn break_glass_leaves_only_the_new_credential_and_revokes_leases_of_the_secret() {
    let pg = Postgres::start();
    let instance = serve();
    let root = instance.root();
    pg.psql("CREATE ROLE report LOGIN PASSWORD 'initial pw'; CREATE ROLE report_clone LOGIN PASSWORD 'clone pw'");
    root.create_secret("db/admin", &pg_secret(&pg, &pg.superuser, &pg.password)).await;
    root.create_secret("db/report", &pg_secret(&pg, "report", "initial pw")).await;
    let config = json!({"plugin": "postgres", "schedule": "rate(30 days)",
        "params": {"tls": "disable", "strategy": "alternating-users", "admin_secret": "db/admin"},
        "grants": {"sql": [pg.addr()], "secrets": ["db/admin"]}});
    let reply = root.put(&format!("{}:rotation", secret_path("db/report")), &config).await;
    assert_eq!(reply.0, 200, "{reply:?}");
    // Two ordinary rotations: both users have a password tumbler holds.
    for _ in 0..2 {
        let r = root.post(&format!("{}:rotate", secret_path("db/report")), &json!({})).await;
        assert_eq!(r.0, 202, "{r:?}");
        wait_rotation(&root, r.1["rotation_id"].as_str().unwrap()).await;
    }
    let versions = root.versions("db/report").await;
    let values: Vec<Value> = {
        let mut out = Vec::new();
        for v in &versions {
            let (s, body) = root.read_version("db/report", v["version_id"].as_str().unwrap()).await;
            assert_eq!(s, 200);
            out.push(serde_json::from_str(body["value"].as_str().unwrap()).unwrap());
        }
        out
    };
    let current: Value = serde_json::from_str(&root.read_value("db/report").await).unwrap();
    let previous = values.iter().find(|v| v["username"] != current["username"]).expect("the other user").clone();
    assert!(pg_logs_in(&pg, previous["username"].as_str().unwrap(), previous["password"].as_str().unwrap()));

    // Break glass on db/report (leases of an admin secret's roles: below).
    let (status, started) =
        root.post(&format!("{}:revoke", secret_path("db/report")), &json!({"reason": "leaked in a ticket"})).await;
    assert_eq!(status, 202, "{started}");
    let id = started["rotation_id"].as_str().unwrap().to_owned();
    // A second call while it runs joins it.
    let (status, again) = root.post(&format!("{}:revoke", secret_path("db/report")), &json!({"reason": "again"})).await;
    assert_eq!(status, 202, "{again}");
    if again["already_running"] == json!(true) {
        assert_eq!(again["rotation_id"], json!(id), "a second break glass joins the first");
    }
    let record = wait_rotation(&root, &id).await;
    assert_eq!(record["status"], "succeeded", "{record:#}");
    assert_eq!(record["trigger"], "break_glass");
    let new: Value = serde_json::from_str(&root.read_value("db/report").await).unwrap();
    assert!(pg_logs_in(&pg, new["username"].as_str().unwrap(), new["password"].as_str().unwrap()));
    for old in values.iter() {
        assert!(
            !pg_logs_in(&pg, old["username"].as_str().unwrap(), old["password"].as_str().unwrap()),
            "after a break glass no older credential works ({})",
            old["username"]
        );
    }
    // The reason is in the audit log.
    let (_, audit) = root.get_query("/v1/audit", &[("limit", "1000")]).await;
    let text = audit.to_string();
    assert!(
        text.contains("secret.break_glass") && text.contains("leaked in a ticket"),
        "the audit record has the reason"
    );
    // The schedule restarts from now: next due about 30 days out.
    let (_, config) = root.get(&format!("{}:rotation", secret_path("db/report"))).await;
    let next = millis(&config["next_due"]);
    assert!((next - now_millis() - 30 * 86_400_000).abs() < 600_000, "{config}");

    // Break glass on an admin secret revokes the leases issued with it.
    assert_eq!(pg_role(&root, &pg, "app", json!({"default_ttl": "10m"})).await.0, 200);
    let l = issue(&root, "app", None).await;
    let lease_user = user_of(&l).0.to_owned();
    // The issue's admin session is kept idle for the next one (logged in
    // with the admin password the break glass below invalidates).
    let admin_sessions = |password: &str| {
        let out = pg.psql_as(
            &pg.superuser,
            password,
            "postgres",
            &format!(
                "SELECT pid FROM pg_stat_activity WHERE usename = '{}' AND backend_type = 'client backend' \
                 AND pid <> pg_backend_pid() ORDER BY pid",
                pg.superuser
            ),
        );
        out.stdout.split_whitespace().map(str::to_owned).collect::<BTreeSet<String>>()
    };
    let before = admin_sessions(&pg.password);
    assert!(!before.is_empty(), "the lease's admin session is kept for reuse");
    let admin_config = json!({"plugin": "postgres", "schedule": "rate(30 days)", "params": {"tls": "disable"},
        "grants": {"sql": [pg.addr()]}});
    assert_eq!(root.put(&format!("{}:rotation", secret_path("db/admin")), &admin_config).await.0, 200);
    let (status, started) =
        root.post(&format!("{}:revoke", secret_path("db/admin")), &json!({"reason": "admin leaked"})).await;
    assert_eq!(status, 202, "{started}");
    wait_rotation(&root, started["rotation_id"].as_str().unwrap()).await;
    let admin: Value = serde_json::from_str(&root.read_value("db/admin").await).unwrap();
    // Sessions logged in with the old admin password are closed when the
    // break glass ends, not when their idle time (30 s) runs out.
    let new_password = admin["password"].as_str().unwrap().to_owned();
    eventually(Duration::from_secs(10), "the old admin sessions are closed", async || {
        admin_sessions(&new_password).is_disjoint(&before)
    })
    .await;
    eventually(Duration::from_secs(15), "the admin secret's leases are revoked", async || {
        lease(&root, l["lease_id"].as_str().unwrap()).await["state"] == "revoked"
    })
    .await;
    assert!(!pg_logs_in(&pg, &pg.superuser, &pg.password), "the old admin password is refused");
    assert!(pg_logs_in(&pg, &pg.superuser, admin["password"].as_str().unwrap()));
    let exists = pg.psql_as(
        &pg.superuser,
        admin["password"].as_str().unwrap(),
        "postgres",
        &format!("SELECT count(*) FROM pg_roles WHERE rolname = '{lease_user}'"),
    );
    assert_eq!(exists.stdout.trim(), "0", "the lease's role is dropped");
}

async fn wait_rotation(root: &Client, id: &str) -> Value {
    let started = Instant::now();
    loop {
        let (status, record) = root.get(&format!("/v1/rotations/{id}")).await;
        assert_eq!(status, 200, "{record}");
        if record["status"] != "running" {
            return record;
        }
        assert!(started.elapsed() < Duration::from_secs(120), "rotation {id} still running");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
