//! Per-step plugin overhead: instantiate + call of the `noop` rotator's
//! `create` in a fresh store (what every rotation step pays), next to the
//! same work done natively in this process; plus cold compile versus a
//! load from the compiled cache. Run: `cargo bench -p tumbler-tests --bench plugin_step`.

use rand::Rng;
use serde_json::json;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tumbler::plugins::cache::ComponentCache;
use tumbler::plugins::{Runtime, RuntimeLimits, Step};
use tumbler_tests::fixtures::{context, fixture_bytes, input, sha256_hex};
use zeroize::Zeroizing;

const ITERATIONS: usize = 2000;

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() - 1) as f64 * p) as usize]
}

fn report(label: &str, mut samples: Vec<Duration>) -> Duration {
    samples.sort();
    let median = percentile(&samples, 0.5);
    println!(
        "{label:<44} median {:>8.1} µs   p99 {:>8.1} µs   min {:>8.1} µs",
        median.as_secs_f64() * 1e6,
        percentile(&samples, 0.99).as_secs_f64() * 1e6,
        samples[0].as_secs_f64() * 1e6
    );
    median
}

/// The native equivalent of noop's create: 32 random alphanumerics.
fn native_create() -> String {
    const CHARS: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";
    let mut rng = rand::thread_rng();
    (0..32).map(|_| CHARS[rng.gen_range(0..CHARS.len())] as char).collect()
}

fn main() {
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().expect("tokio");
    rt.block_on(async {
        let wasm = Arc::new(fixture_bytes("noop"));
        let sha = sha256_hex(&wasm);
        let dir = tempfile::tempdir().expect("tempdir");
        let new_runtime = || {
            let cache = ComponentCache::new(dir.path().join("cache"), Zeroizing::new([3; 32])).expect("cache");
            Runtime::new(RuntimeLimits::default(), cache).expect("runtime")
        };

        let runtime = new_runtime();
        let t = Instant::now();
        let plugin = runtime.load(&sha, wasm.clone()).await.expect("cold load");
        let cold = t.elapsed();
        assert!(!plugin.from_cache);
        let warm_runtime = new_runtime();
        let t = Instant::now();
        let cached = warm_runtime.load(&sha, wasm.clone()).await.expect("cached load");
        let warm = t.elapsed();
        assert!(cached.from_cache);
        println!(
            "noop load: cold compile {:.1} ms, from the compiled cache {:.1} ms ({:.0}x faster)",
            cold.as_secs_f64() * 1e3,
            warm.as_secs_f64() * 1e3,
            cold.as_secs_f64() / warm.as_secs_f64()
        );

        let mut plugin_samples = Vec::with_capacity(ITERATIONS);
        for _ in 0..ITERATIONS {
            let t = Instant::now();
            let outcome = runtime.run_step(&plugin, Step::Create, input(json!({})), context("noop", json!({}))).await;
            plugin_samples.push(t.elapsed());
            assert!(outcome.result.is_ok());
        }
        let mut native_samples = Vec::with_capacity(ITERATIONS);
        for _ in 0..ITERATIONS {
            let t = Instant::now();
            std::hint::black_box(native_create());
            native_samples.push(t.elapsed());
        }
        let step = report("noop create (instantiate + call, fresh store)", plugin_samples);
        let native = report("the same work natively", native_samples);
        println!(
            "per-step plugin overhead (median): {:.1} µs (target <= 100 µs)",
            (step.saturating_sub(native)).as_secs_f64() * 1e6
        );
    });
}
