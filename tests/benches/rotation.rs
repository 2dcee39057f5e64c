//! Rotation benchmark (not a test): run with
//!
//!     cargo bench -p tumbler-tests --bench rotation
//!
//! 1. Throughput: 10,000 secrets rotated by the built-in `noop` plugin, all
//!    due at once, through the real engine (store, audit records, plugin
//!    runtime, scheduler) with the default concurrency limit of 4; prints
//!    full rotations per second.
//! 2. Idle: 100,000 secrets scheduled 30 days out; a child process opens the
//!    store and runs the engine (scheduler included) and the parent reads
//!    its CPU time and RSS from /proc over 20 seconds.
//!
//! `TUMBLER_BENCH_SECRETS` and `TUMBLER_BENCH_IDLE_SECRETS` change the
//! counts, `TUMBLER_BENCH_CONCURRENCY` the concurrency limit(s) of the
//! throughput run (a comma-separated list; default `4`, the server's default).

use serde_json::json;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tumbler::alerts::Alerts;
use tumbler::audit::AuditLog;
use tumbler::crypto::MasterKey;
use tumbler::leases::Leases;
use tumbler::model::{SecretName, SecretValue};
use tumbler::plugins::cache::ComponentCache;
use tumbler::plugins::registry::Registry;
use tumbler::plugins::{Runtime, RuntimeLimits, builtin};
use tumbler::rotation::config::{self, ConfigRequest};
use tumbler::rotation::{Engine, Settings};
use tumbler::store::Store;
use tumbler::store::secrets::{self, NewSecret, Tags};
use zeroize::Zeroizing;

const CHILD: &str = "TUMBLER_BENCH_IDLE_CHILD";

fn main() {
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().expect("tokio runtime");
    if let Ok(spec) = std::env::var(CHILD) {
        runtime.block_on(idle_child(&spec));
        return;
    }
    let count = env_count("TUMBLER_BENCH_SECRETS", 10_000);
    let idle = env_count("TUMBLER_BENCH_IDLE_SECRETS", 100_000);
    let limits: Vec<usize> = std::env::var("TUMBLER_BENCH_CONCURRENCY")
        .ok()
        .map(|v| v.split(',').filter_map(|n| n.trim().parse().ok()).collect())
        .unwrap_or_else(|| vec![4]);
    runtime.block_on(async {
        for concurrency in limits {
            throughput(count, concurrency).await;
        }
        idle_parent(idle).await;
    });
}

fn env_count(var: &str, default: usize) -> usize {
    std::env::var(var).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

async fn registry(store: &Store, dir: &Path) -> Arc<Registry> {
    let cache = ComponentCache::new(dir.join("plugin-cache"), Zeroizing::new([7; 32])).expect("cache dir");
    let runtime = Runtime::new(RuntimeLimits::default(), cache).expect("plugin runtime");
    Registry::start(store.clone(), runtime, builtin::BUILTINS).await.expect("registry")
}

/// Creates `n` secrets, each with a `noop` rotation config on `schedule`.
async fn populate(store: &Store, registry: &Registry, n: usize, schedule: &str) {
    let started = Instant::now();
    let request = || -> ConfigRequest {
        serde_json::from_value(json!({"plugin": "noop", "schedule": schedule})).expect("config JSON")
    };
    let config = Arc::new(request().parse(registry, 5).await.expect("config"));
    for batch in 0..n.div_ceil(5_000) {
        let config = config.clone();
        store
            .write(move |tx, keys| {
                for i in batch * 5_000..((batch + 1) * 5_000).min(n) {
                    let name = SecretName::parse(&format!("bench/s{i:06}"))?;
                    let value =
                        SecretValue::parse(Zeroizing::new(format!(r#"{{"username":"u{i}","password":"p{i}"}}"#)))?;
                    let new = NewSecret {
                        name: name.clone(),
                        value,
                        description: String::new(),
                        tags: Tags::new(),
                        client_token: None,
                    };
                    secrets::create(tx, keys, new)?;
                    config::put(tx, &name, &config)?;
                }
                Ok(())
            })
            .await
            .expect("populate");
    }
    println!("  created {n} secrets with rotation configs in {:.1?}", started.elapsed());
}

async fn count(store: &Store, status: &'static str) -> i64 {
    store
        .read(move |c, _| Ok(c.query_row("SELECT count(*) FROM rotations WHERE status = ?1", [status], |r| r.get(0))?))
        .await
        .expect("count")
}

async fn throughput(n: usize, concurrency: usize) {
    println!("throughput: {n} secrets due at once, plugin noop, concurrency {concurrency}");
    let dir = tempfile::tempdir().expect("tempdir");
    let store = Store::create(dir.path(), MasterKey::generate()).expect("store");
    let registry = registry(&store, dir.path()).await;
    populate(&store, &registry, n, "rate(30 days)").await;
    store
        .write(|tx, _| Ok(tx.execute("UPDATE rotation_configs SET next_slot = 0, next_due = 0", [])?))
        .await
        .expect("make due");
    let audit = AuditLog::start(store.clone(), None, Alerts::default());
    let started = Instant::now();
    let settings = Settings { concurrency, ..Settings::default() };
    let leases =
        Leases::start(store.clone(), audit.clone(), registry.clone(), Default::default()).await.expect("leases");
    let _engine =
        Engine::start(store.clone(), audit, registry, leases, Alerts::default(), settings).await.expect("engine");
    let calls_before = plugin_calls();
    loop {
        tokio::time::sleep(Duration::from_millis(250)).await;
        let done = count(&store, "succeeded").await + count(&store, "failed").await;
        if done as usize >= n {
            break;
        }
    }
    let elapsed = started.elapsed();
    let failed = count(&store, "failed").await;
    println!(
        "  {n} full rotations (create, set, test, finish) in {elapsed:.2?}: {:.0} rotations/s ({failed} failed)",
        n as f64 / elapsed.as_secs_f64()
    );
    // Where the time goes: the plugin calls (the engine's own histogram)
    // against the whole rotation, start to end.
    let (calls, seconds) = plugin_calls();
    let (calls, seconds) = (calls - calls_before.0, seconds - calls_before.1);
    let rotation_ms: f64 = store
        .read(|c, _| Ok(c.query_row("SELECT avg(finished_at - created_at) FROM rotations", [], |r| r.get(0))?))
        .await
        .expect("average");
    println!(
        "  per plugin step call: {:.2} ms ({calls} calls); per rotation, start to end: {rotation_ms:.1} ms",
        1000.0 * seconds / calls.max(1.0)
    );
}

/// Plugin step calls so far and their total seconds (the engine's histogram).
fn plugin_calls() -> (f64, f64) {
    let text = tumbler::metrics::metrics().render();
    let sum_of = |series: &str| -> f64 {
        text.lines()
            .filter(|l| l.starts_with(series) && l.contains(r#"plugin="noop""#))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum()
    };
    (sum_of("tumbler_rotation_step_duration_seconds_count"), sum_of("tumbler_rotation_step_duration_seconds_sum"))
}

async fn idle_parent(n: usize) {
    println!("idle: {n} secrets scheduled 30 days out");
    let dir = tempfile::tempdir().expect("tempdir");
    let master = MasterKey::generate();
    let encoded = master.encode();
    {
        let store = Store::create(dir.path(), master).expect("store");
        let registry = registry(&store, dir.path()).await;
        populate(&store, &registry, n, "rate(30 days)").await;
    }
    let exe = std::env::current_exe().expect("current exe");
    let mut child = std::process::Command::new(exe)
        .env(CHILD, format!("{}\n{}", dir.path().display(), encoded.as_str()))
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("spawn idle child");
    // The child prints a line once its engine runs.
    let mut line = String::new();
    std::io::BufRead::read_line(&mut std::io::BufReader::new(child.stdout.take().expect("stdout")), &mut line)
        .expect("child ready");
    let pid = child.id();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let (cpu0, wall0) = (cpu_ticks(pid), Instant::now());
    tokio::time::sleep(Duration::from_secs(20)).await;
    let (cpu1, wall) = (cpu_ticks(pid), wall0.elapsed());
    let rss = rss_kib(pid);
    let _ = child.kill();
    let _ = child.wait();
    let ticks = clock_ticks();
    let cpu = (cpu1 - cpu0) as f64 / ticks;
    println!(
        "  engine process idle over {wall:.1?}: CPU {cpu:.2} s ({:.3}% of one core), RSS {:.1} MiB",
        100.0 * cpu / wall.as_secs_f64(),
        rss as f64 / 1024.0
    );
}

async fn idle_child(spec: &str) {
    let (dir, key) = spec.split_once('\n').expect("child spec");
    let master = MasterKey::parse(key).expect("master key");
    let store = Store::open(Path::new(dir), master).expect("open store");
    let registry = registry(&store, Path::new(dir)).await;
    let audit = AuditLog::start(store.clone(), None, Alerts::default());
    let leases =
        Leases::start(store.clone(), audit.clone(), registry.clone(), Default::default()).await.expect("leases");
    let _engine =
        Engine::start(store, audit, registry, leases, Alerts::default(), Settings::default()).await.expect("engine");
    println!("ready");
    std::future::pending::<()>().await;
}

/// utime + stime of `pid`, in clock ticks.
fn cpu_ticks(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("proc stat");
    // Fields after the command name (which may hold spaces) start after ')'.
    let fields: Vec<&str> = stat.rsplit_once(')').expect("stat format").1.split_whitespace().collect();
    fields[11].parse::<u64>().unwrap_or(0) + fields[12].parse::<u64>().unwrap_or(0)
}

fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("proc status");
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

fn clock_ticks() -> f64 {
    // SAFETY: sysconf has no preconditions.
    let t = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if t > 0 { t as f64 } else { 100.0 }
}
