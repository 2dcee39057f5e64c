//! The benchmarks that drive tumbler's library in-process rather than the
//! binary over HTTP: filling a store with many secrets (through the HTTP
//! API a million creates would take most of an hour, while the store's own
//! calls write the very same rows), the `noop` rotation throughput through
//! the real engine, and the plugin runtime's per-step cost.

use crate::fixtures::{context, fixture_bytes, input, sha256_hex};
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
use tumbler::plugins::{Runtime, RuntimeLimits, Step, builtin};
use tumbler::rotation::config::{self, ConfigRequest, RotationConfig};
use tumbler::rotation::{Engine, Settings};
use tumbler::store::Store;
use tumbler::store::secrets::{self, NewSecret};
use zeroize::Zeroizing;

/// Opens the store of an initialised (not served) data dir with the key
/// `tumbler init` wrote, as the server would.
pub fn open_store(data_dir: &Path, key_file: &Path) -> Store {
    let text = Zeroizing::new(std::fs::read_to_string(key_file).expect("read the key file"));
    let master = MasterKey::parse(&text).expect("a master key file");
    Store::open(data_dir, master).expect("open the store")
}

/// A plugin registry with the built-ins, its compiled cache in `cache_dir`.
pub async fn registry(store: &Store, cache_dir: &Path) -> Arc<Registry> {
    let cache = ComponentCache::new(cache_dir.to_path_buf(), Zeroizing::new([7; 32])).expect("cache dir");
    let runtime = Runtime::new(RuntimeLimits::default(), cache).expect("plugin runtime");
    Registry::start(store.clone(), runtime, builtin::BUILTINS).await.expect("registry")
}

/// A `noop` rotation config on `schedule`, as `PUT NAME:rotation` would store it.
pub async fn noop_config(registry: &Registry, schedule: &str) -> Arc<RotationConfig> {
    let request: ConfigRequest =
        serde_json::from_value(json!({"plugin": "noop", "schedule": schedule})).expect("config JSON");
    Arc::new(request.parse(registry, 5).await.expect("noop config"))
}

/// The name of the `i`th secret [`populate`] makes under `prefix`: zero
/// padded, so names sort in creation order and the last page is known.
pub fn numbered(prefix: &str, i: usize) -> String {
    format!("{prefix}{i:07}")
}

/// Creates `n` secrets named [`numbered`]`(prefix, i)`, each with a small
/// JSON value (and `config` as its rotation config, if given), through the
/// store's own create, in transactions of 10,000. Returns how long it took.
pub async fn populate(store: &Store, prefix: &str, n: usize, config: Option<Arc<RotationConfig>>) -> Duration {
    const BATCH: usize = 10_000;
    let started = Instant::now();
    for batch in 0..n.div_ceil(BATCH) {
        let (config, prefix) = (config.clone(), prefix.to_string());
        store
            .write(move |tx, keys| {
                for i in batch * BATCH..((batch + 1) * BATCH).min(n) {
                    let name = SecretName::parse(&numbered(&prefix, i))?;
                    let value =
                        SecretValue::parse(Zeroizing::new(format!(r#"{{"username":"u{i}","password":"p{i}"}}"#)))?;
                    let new = NewSecret::new(name.clone(), value);
                    secrets::create(tx, keys, new)?;
                    if let Some(config) = &config {
                        config::put(tx, &name, config)?;
                    }
                }
                Ok(())
            })
            .await
            .expect("populate the store");
    }
    started.elapsed()
}

/// One run of [`noop_throughput`].
#[derive(Clone, Copy, Debug)]
pub struct NoopRun {
    pub rotations_per_second: f64,
    pub failed: i64,
    /// Mean wall time of one plugin step call (the engine's histogram).
    pub step_ms: f64,
    /// Mean time of one rotation, from its start to the end of `finish`.
    pub rotation_ms: f64,
}

/// `n` secrets with `noop` rotation configs, all made due at once, rotated
/// by the real engine (store, audit records, plugin runtime, scheduler)
/// with at most `concurrency` rotations at a time; the clock runs from the
/// engine's start to the last rotation's end.
pub async fn noop_throughput(n: usize, concurrency: usize) -> NoopRun {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = Store::create(dir.path(), MasterKey::generate()).expect("store");
    let registry = registry(&store, &dir.path().join("plugin-cache")).await;
    let config = noop_config(&registry, "rate(30 days)").await;
    populate(&store, "bench/s", n, Some(config)).await;
    store
        .write(|tx, _| Ok(tx.execute("UPDATE rotation_configs SET next_slot = 0, next_due = 0", [])?))
        .await
        .expect("make every rotation due");
    let audit = AuditLog::start(store.clone(), None, Alerts::default()).expect("audit log");
    let calls_before = plugin_calls();
    let started = Instant::now();
    let settings = Settings { concurrency, ..Settings::default() };
    let leases =
        Leases::start(store.clone(), audit.clone(), registry.clone(), Default::default()).await.expect("leases");
    let _engine =
        Engine::start(store.clone(), audit, registry, leases, Alerts::default(), settings).await.expect("engine");
    loop {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let done = rotations(&store, "succeeded").await + rotations(&store, "failed").await;
        if done as usize >= n {
            break;
        }
    }
    let elapsed = started.elapsed();
    let (calls, seconds) = plugin_calls();
    let (calls, seconds) = (calls - calls_before.0, seconds - calls_before.1);
    let rotation_ms: f64 = store
        .read(|c, _| Ok(c.query_row("SELECT avg(finished_at - created_at) FROM rotations", [], |r| r.get(0))?))
        .await
        .expect("average rotation time");
    NoopRun {
        rotations_per_second: n as f64 / elapsed.as_secs_f64(),
        failed: rotations(&store, "failed").await,
        step_ms: 1000.0 * seconds / calls.max(1.0),
        rotation_ms,
    }
}

async fn rotations(store: &Store, status: &'static str) -> i64 {
    store
        .read(move |c, _| Ok(c.query_row("SELECT count(*) FROM rotations WHERE status = ?1", [status], |r| r.get(0))?))
        .await
        .expect("count rotations")
}

/// `noop` plugin step calls so far in this process, and their total
/// seconds (the engine's own histogram).
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

/// Median and p99 of a set of timings.
#[derive(Clone, Copy, Debug)]
pub struct Timing {
    pub median: Duration,
    pub p99: Duration,
}

impl Timing {
    fn of(mut samples: Vec<Duration>) -> Timing {
        samples.sort();
        Timing { median: crate::bench::quantile(&samples, 0.5), p99: crate::bench::quantile(&samples, 0.99) }
    }
}

/// One run of [`plugin_step`].
#[derive(Clone, Copy, Debug)]
pub struct StepRun {
    /// `noop`'s create: instantiate in a fresh store and call, what every
    /// rotation step pays.
    pub plugin: Timing,
    /// The same work (32 random alphanumerics) done natively.
    pub native: Timing,
}

impl StepRun {
    /// What the sandbox adds to a step: median plugin minus median native.
    pub fn overhead(&self) -> Duration {
        self.plugin.median.saturating_sub(self.native.median)
    }
}

/// `iterations` calls of `noop`'s create through the plugin runtime, and
/// as many of the native equivalent, in this process.
pub async fn plugin_step(iterations: usize) -> StepRun {
    let wasm = Arc::new(fixture_bytes("noop"));
    let sha = sha256_hex(&wasm);
    let dir = tempfile::tempdir().expect("tempdir");
    let cache = ComponentCache::new(dir.path().join("cache"), Zeroizing::new([3; 32])).expect("cache");
    let runtime = Runtime::new(RuntimeLimits::default(), cache).expect("runtime");
    let plugin = runtime.load(&sha, wasm).await.expect("load noop");
    let mut plugin_samples = Vec::with_capacity(iterations);
    for _ in 0..iterations {
        let t = Instant::now();
        let outcome = runtime.run_step(&plugin, Step::Create, input(json!({})), context("noop", json!({}))).await;
        plugin_samples.push(t.elapsed());
        assert!(outcome.result.is_ok(), "noop create failed");
    }
    let mut native_samples = Vec::with_capacity(iterations);
    for _ in 0..iterations {
        let t = Instant::now();
        std::hint::black_box(native_create());
        native_samples.push(t.elapsed());
    }
    StepRun { plugin: Timing::of(plugin_samples), native: Timing::of(native_samples) }
}

/// The native equivalent of noop's create: 32 random alphanumerics from
/// the kernel's CSPRNG (one `getrandom` call, as the host's `OsRng` makes).
fn native_create() -> String {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";
    let mut bytes = [0u8; 32];
    // SAFETY: getrandom writes at most `len` bytes into the buffer given.
    let n = unsafe { libc::getrandom(bytes.as_mut_ptr().cast(), bytes.len(), 0) };
    assert_eq!(n, bytes.len() as isize, "getrandom");
    bytes.iter().map(|b| ALPHABET[*b as usize % ALPHABET.len()] as char).collect()
}

/// Loading `noop`: compiling it from the `.wasm` (an empty cache), then
/// loading the compiled form from the MAC'd cache in a new runtime.
pub async fn plugin_load() -> (Duration, Duration) {
    let wasm = Arc::new(fixture_bytes("noop"));
    let sha = sha256_hex(&wasm);
    let dir = tempfile::tempdir().expect("tempdir");
    let new_runtime = || {
        let cache = ComponentCache::new(dir.path().join("cache"), Zeroizing::new([3; 32])).expect("cache");
        Runtime::new(RuntimeLimits::default(), cache).expect("runtime")
    };
    let t = Instant::now();
    let cold = new_runtime().load(&sha, wasm.clone()).await.expect("cold load");
    let cold_time = t.elapsed();
    assert!(!cold.from_cache, "an empty cache cannot serve a load");
    let t = Instant::now();
    let cached = new_runtime().load(&sha, wasm).await.expect("cached load");
    let cached_time = t.elapsed();
    assert!(cached.from_cache, "the second load comes from the cache");
    (cold_time, cached_time)
}
