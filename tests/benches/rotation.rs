//! Rotation benchmark (not a test): run with
//!
//!     cargo bench -p tumbler-tests --bench rotation
//!
//! 1. Throughput: 10,000 secrets rotated by the built-in `noop` plugin, all
//!    due at once, through the real engine (store, audit records, plugin
//!    runtime, scheduler) with the server's default concurrency limit (4); prints
//!    full rotations per second (see `tumbler_tests::bench_store`).
//! 2. Idle: 100,000 secrets scheduled 30 days out; a child process opens the
//!    store and runs the engine (scheduler included, no HTTP) and the parent
//!    reads its CPU time and RSS from /proc over 20 seconds. The harness
//!    (`--bench harness`) measures the same on the real server.
//!
//! `TUMBLER_BENCH_SECRETS` and `TUMBLER_BENCH_IDLE_SECRETS` change the
//! counts, `TUMBLER_BENCH_CONCURRENCY` the concurrency limit(s) of the
//! throughput run (a comma-separated list; default `4`, the server's default).

use std::path::Path;
use std::time::{Duration, Instant};
use tumbler::alerts::Alerts;
use tumbler::audit::AuditLog;
use tumbler::crypto::MasterKey;
use tumbler::leases::Leases;
use tumbler::rotation::{Engine, Settings};
use tumbler::store::Store;
use tumbler_tests::bench::{cpu_seconds, env_count, rss_mib};
use tumbler_tests::bench_store::{noop_config, noop_throughput, populate, registry};

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
        .unwrap_or_else(|| vec![tumbler::rotation::Settings::default().concurrency]);
    runtime.block_on(async {
        for concurrency in limits {
            println!("throughput: {count} secrets due at once, plugin noop, concurrency {concurrency}");
            let run = noop_throughput(count, concurrency).await;
            println!(
                "  {:.0} full rotations/s (create, set, test, finish; {} failed); per plugin step call {:.2} ms, \
                 per rotation start to end {:.1} ms",
                run.rotations_per_second, run.failed, run.step_ms, run.rotation_ms
            );
        }
        idle_parent(idle).await;
    });
}

async fn idle_parent(n: usize) {
    println!("idle: {n} secrets scheduled 30 days out");
    let dir = tempfile::tempdir().expect("tempdir");
    let master = MasterKey::generate();
    let encoded = master.encode();
    {
        let store = Store::create(dir.path(), master).expect("store");
        let registry = registry(&store, &dir.path().join("plugin-cache")).await;
        let config = noop_config(&registry, "rate(30 days)").await;
        let took = populate(&store, "bench/s", n, Some(config)).await;
        println!("  created {n} secrets with rotation configs in {took:.1?}");
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
    let (cpu0, wall0) = (cpu_seconds(pid), Instant::now());
    tokio::time::sleep(Duration::from_secs(20)).await;
    let (cpu, wall) = (cpu_seconds(pid) - cpu0, wall0.elapsed());
    let rss = rss_mib(pid);
    let _ = child.kill();
    let _ = child.wait();
    println!(
        "  engine process idle over {wall:.1?}: CPU {cpu:.2} s ({:.3}% of one core), RSS {rss:.1} MiB",
        100.0 * cpu / wall.as_secs_f64()
    );
}

async fn idle_child(spec: &str) {
    let (dir, key) = spec.split_once('\n').expect("child spec");
    let master = MasterKey::parse(key).expect("master key");
    let store = Store::open(Path::new(dir), master).expect("open store");
    let registry = registry(&store, &Path::new(dir).join("plugin-cache")).await;
    let audit = AuditLog::start(store.clone(), None, Alerts::default()).expect("audit log");
    let leases =
        Leases::start(store.clone(), audit.clone(), registry.clone(), Default::default()).await.expect("leases");
    let _engine =
        Engine::start(store, audit, registry, leases, Alerts::default(), Settings::default()).await.expect("engine");
    println!("ready");
    std::future::pending::<()>().await;
}
