//! The benchmark harness: every figure of BENCHMARKS.md in one run, each
//! next to its baseline or peer measured in the same run, printed as it
//! comes and written to `target/bench/report.md`.
//!
//!     scripts/bench.sh                 # installs what is missing, then:
//!     cargo bench -p tumbler-tests --bench harness
//!
//! `TUMBLER_BENCH_QUICK=1` shrinks every size for a smoke run;
//! `TUMBLER_BENCH_ONLY=read,write,rotation,postgres,scale` runs some sections.
//! A section that fails is reported as failed and the others still run; a
//! peer that cannot be installed is reported as skipped.

use std::future::Future;
use std::pin::Pin;
use std::time::Instant;
use tumbler_tests::bench::{Report, Section, Spread, ms, panic_message, quick, size, thousands, us};
use tumbler_tests::{bench_http, bench_pg, bench_scale, bench_store, workspace_root};

type SectionFn = fn(Report) -> Pin<Box<dyn Future<Output = ()> + Send>>;

/// The sections in the order they run: the read path first, on the
/// quietest machine; the scale step last, as it fills the disk.
const SECTIONS: &[(&str, SectionFn)] = &[
    ("read", |r| Box::pin(async move { bench_http::read_path(&r).await })),
    ("write", |r| Box::pin(async move { bench_http::write_path(&r).await })),
    ("rotation", |r| Box::pin(async move { rotation(&r).await })),
    ("postgres", |r| Box::pin(async move { bench_pg::postgres(&r).await })),
    ("scale", |r| {
        Box::pin(async move {
            bench_scale::million(&r).await;
            bench_scale::idle(&r).await;
        })
    }),
];

fn main() {
    // SAFETY: set before any thread starts; read by the harness only.
    unsafe { std::env::set_var("TUMBLER_TEST_RELEASE", "1") };
    // Build (or find) the release binary before any clock starts.
    tumbler_tests::tumbler_bin();
    let started = Instant::now();
    let only: Option<Vec<String>> =
        std::env::var("TUMBLER_BENCH_ONLY").ok().map(|v| v.split(',').map(|s| s.trim().to_string()).collect());
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().expect("tokio runtime");
    let report = Report::default();
    report.preamble(machine());
    if quick() {
        report
            .preamble("**Quick run** (`TUMBLER_BENCH_QUICK=1`): sizes shrunk for a smoke test; not figures to quote.");
    }
    let load_before = load_average();
    for (name, section) in SECTIONS {
        if only.as_ref().is_some_and(|only| !only.iter().any(|o| o == name)) {
            continue;
        }
        let t = Instant::now();
        eprintln!("==> {name}");
        let outcome = runtime.block_on(runtime.spawn(section(report.clone())));
        if let Err(e) = outcome {
            let why = if e.is_panic() { panic_message(&*e.into_panic()) } else { e.to_string() };
            let mut failed = Section::new(&format!("{name}: failed"), &[]);
            failed.note(format!("This section failed and its figures are missing: {why}"));
            report.section(failed);
        }
        eprintln!("==> {name} took {:.0?}", t.elapsed());
    }
    report.preamble(format!(
        "Load average (1 min) before the run {load_before}, after {}: other work on the machine shows here. \
         The whole run took {:.1} min.",
        load_average(),
        started.elapsed().as_secs_f64() / 60.0
    ));
    let path = std::env::var_os("CARGO_TARGET_DIR")
        .map(|d| workspace_root().join(d))
        .unwrap_or_else(|| workspace_root().join("target"))
        .join("bench/report.md");
    report.write(&path).expect("write the report");
    println!("\n{}", report.markdown());
    println!("report written to {}", path.display());
}

/// What machine this ran on, from `/proc` and the checkout.
fn machine() -> String {
    let cores = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0);
    let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    let mem_gib = meminfo
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        .map(|kib| kib / (1024.0 * 1024.0))
        .unwrap_or(0.0);
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = cpuinfo
        .lines()
        .find_map(|l| l.strip_prefix("model name").and_then(|r| r.split_once(':')).map(|(_, m)| m.trim().to_string()))
        .unwrap_or_else(|| "unknown CPU".into());
    let git = |args: &[&str]| {
        std::process::Command::new("git")
            .args(args)
            .current_dir(workspace_root())
            .output()
            .ok()
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
            .unwrap_or_default()
    };
    let commit = git(&["rev-parse", "--short", "HEAD"]);
    let dirty = !git(&["status", "--porcelain", "--", "host", "plugins", "wit"]).is_empty();
    format!(
        "Machine: {cores} cores ({model}), {mem_gib:.0} GiB, Linux {}. Build: release profile, commit {commit}{}. \
         Every figure with the shipped defaults: auth, audit and revocation checks on.",
        std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default().trim(),
        if dirty { " with uncommitted changes in host/, plugins/ or wit/" } else { "" }
    )
}

fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|l| l.split_whitespace().next().map(str::to_string))
        .unwrap_or_else(|| "?".into())
}

/// Rotation in-process: `noop` throughput through the real engine, the
/// plugin runtime's per-step overhead, and cold compile versus cached load.
async fn rotation(report: &Report) {
    let runs = size(3, 2);
    let secrets = size(10_000, 1_000);
    let mut throughput = Vec::new();
    let (mut step_ms, mut rotation_ms, mut failed) = (Vec::new(), Vec::new(), 0);
    for _ in 0..runs {
        let run = bench_store::noop_throughput(secrets, tumbler::rotation::Settings::default().concurrency).await;
        throughput.push(run.rotations_per_second);
        step_ms.push(run.step_ms);
        rotation_ms.push(run.rotation_ms);
        failed += run.failed;
    }
    let iterations = size(2000, 300);
    let (mut overhead, mut plugin, mut plugin_p99, mut native) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for _ in 0..runs {
        let run = bench_store::plugin_step(iterations).await;
        overhead.push(us(run.overhead()));
        plugin.push(us(run.plugin.median));
        plugin_p99.push(us(run.plugin.p99));
        native.push(us(run.native.median));
    }
    let (mut cold, mut cached) = (Vec::new(), Vec::new());
    for _ in 0..runs {
        let (c, w) = bench_store::plugin_load().await;
        cold.push(ms(c));
        cached.push(ms(w));
    }
    let throughput = Spread::of(&throughput);
    let overhead = Spread::of(&overhead);
    let mut section = Section::new("Rotation and plugins (in-process)", &["figure", "value", "how"]);
    section.row(vec![
        "full `noop` rotations/s".into(),
        format!("{}/s", throughput.show(0)),
        format!(
            "{} secrets due at once, concurrency {} (the server's default); {failed} failed; \
             per step call {} ms, per rotation start to end {} ms",
            thousands(secrets),
            tumbler::rotation::Settings::default().concurrency,
            Spread::of(&step_ms).show(2),
            Spread::of(&rotation_ms).show(1)
        ),
    ]);
    section.row(vec![
        "per-step plugin overhead".into(),
        format!("{} µs", overhead.show(1)),
        format!(
            "median of {iterations} `noop` creates (instantiate in a fresh store + call: {} µs, p99 {} µs) \
             minus the same work natively ({} µs)",
            Spread::of(&plugin).show(1),
            Spread::of(&plugin_p99).show(1),
            Spread::of(&native).show(1)
        ),
    ]);
    section.row(vec![
        "load `noop`: cold compile".into(),
        format!("{} ms", Spread::of(&cold).show(1)),
        "Cranelift, empty cache".into(),
    ]);
    section.row(vec![
        "load `noop`: from the compiled cache".into(),
        format!("{} ms", Spread::of(&cached).show(2)),
        "MAC checked, deserialised".into(),
    ]);
    section.note(format!(
        "Each figure: the median of {runs} runs (min–max). The engine runs in the harness's process on a real \
         store in a temp dir: the same code `tumbler serve` runs (store with `synchronous=FULL`, audit records, \
         plugin runtime, scheduler), without HTTP in front, since 10,000 rotation configs are set up through the \
         store directly."
    ));
    report.section(section);
    report.target(
        "`noop` rotations/s (10,000 secrets)",
        "≥ 300/s",
        format!("{}/s", throughput.show(0)),
        Some(throughput.median >= 300.0),
    );
    report.target(
        "per-step plugin overhead (median)",
        "≤ 100 µs",
        format!("{} µs", overhead.show(1)),
        Some(overhead.median <= 100.0),
    );
}
