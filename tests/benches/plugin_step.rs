//! Per-step plugin overhead: instantiate + call of the `noop` rotator's
//! `create` in a fresh store (what every rotation step pays), next to the
//! same work done natively in this process; plus cold compile versus a
//! load from the compiled cache (see `tumbler_tests::bench_store`).
//! Run: `cargo bench -p tumbler-tests --bench plugin_step`.

use tumbler_tests::bench::{ms, us};
use tumbler_tests::bench_store::{plugin_load, plugin_step};

const ITERATIONS: usize = 2000;

fn main() {
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().expect("tokio");
    rt.block_on(async {
        let (cold, cached) = plugin_load().await;
        println!(
            "noop load: cold compile {:.1} ms, from the compiled cache {:.1} ms ({:.0}x faster)",
            ms(cold),
            ms(cached),
            cold.as_secs_f64() / cached.as_secs_f64()
        );
        let run = plugin_step(ITERATIONS).await;
        for (label, timing) in
            [("noop create (instantiate + call, fresh store)", run.plugin), ("the same work natively", run.native)]
        {
            println!("{label:<44} median {:>8.1} µs   p99 {:>8.1} µs", us(timing.median), us(timing.p99));
        }
        println!("per-step plugin overhead (median): {:.1} µs (target <= 100 µs)", us(run.overhead()));
    });
}
