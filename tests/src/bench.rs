//! What the benchmarks share: a figure as the median of several runs with
//! its min and max, the harness's own load loops (N concurrent tasks over
//! one reqwest client), process sampling from `/proc`, and the report that
//! `cargo bench --bench harness` prints and writes to `target/bench/report.md`.
//!
//! The machine is shared and noisy, so every figure keeps its spread and
//! sits next to a baseline or a peer measured in the same run.

use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// `TUMBLER_BENCH_QUICK=1`: shrink every size for a smoke run (minutes, not
/// tens of minutes); the figures it prints are not the ones to quote.
pub fn quick() -> bool {
    std::env::var("TUMBLER_BENCH_QUICK").is_ok_and(|v| !v.is_empty() && v != "0")
}

/// `full`, or `small` in a quick run.
pub fn size<T>(full: T, small: T) -> T {
    if quick() { small } else { full }
}

/// A count from the environment, else `default`.
pub fn env_count(var: &str, default: usize) -> usize {
    std::env::var(var).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

// ---------------------------------------------------------------------------
// Figures
// ---------------------------------------------------------------------------

/// The median of several runs of one figure, with the extremes: the spread
/// says how much a single run on this machine can be trusted.
#[derive(Clone, Copy, Debug)]
pub struct Spread {
    pub median: f64,
    pub min: f64,
    pub max: f64,
    pub runs: usize,
}

impl Spread {
    /// Panics on no values: a figure without a run is a bug in the harness.
    pub fn of(values: &[f64]) -> Spread {
        assert!(!values.is_empty(), "a figure needs at least one run");
        let mut sorted = values.to_vec();
        sorted.sort_by(f64::total_cmp);
        Spread { median: median_sorted(&sorted), min: sorted[0], max: sorted[sorted.len() - 1], runs: sorted.len() }
    }

    /// `median (min–max)` with `decimals` places; just the value for one run.
    pub fn show(&self, decimals: usize) -> String {
        if self.runs == 1 {
            format!("{:.*}", decimals, self.median)
        } else {
            format!("{:.*} ({:.*}–{:.*})", decimals, self.median, decimals, self.min, decimals, self.max)
        }
    }
}

fn median_sorted(sorted: &[f64]) -> f64 {
    let n = sorted.len();
    if !n.is_multiple_of(2) { sorted[n / 2] } else { (sorted[n / 2 - 1] + sorted[n / 2]) / 2.0 }
}

/// The value at quantile `q` (0..=1) of sorted samples (nearest rank).
pub fn quantile(sorted: &[Duration], q: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let rank = ((sorted.len() as f64 * q).ceil() as usize).clamp(1, sorted.len());
    sorted[rank - 1]
}

/// `1234567` as `1,234,567`, for counts in titles and notes.
pub fn thousands(n: usize) -> String {
    let digits = n.to_string();
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

pub fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

pub fn us(d: Duration) -> f64 {
    d.as_secs_f64() * 1e6
}

// ---------------------------------------------------------------------------
// The harness's own load generator
// ---------------------------------------------------------------------------

/// One load run: how many operations finished, in how long, and each one's
/// latency (sorted).
pub struct Load {
    pub ops: usize,
    pub elapsed: Duration,
    pub latencies: Vec<Duration>,
}

impl Load {
    pub fn per_second(&self) -> f64 {
        self.ops as f64 / self.elapsed.as_secs_f64()
    }

    pub fn p50(&self) -> Duration {
        quantile(&self.latencies, 0.5)
    }

    pub fn p99(&self) -> Duration {
        quantile(&self.latencies, 0.99)
    }
}

/// `clients` tasks, each awaiting `op(client)` `per_client` times in a
/// loop: a closed loop like a real client pool, so the rate is what the
/// server sustains, not what was offered. `op` panics on a wrong answer.
pub async fn fixed_count<F, Fut>(clients: usize, per_client: usize, op: F) -> Load
where
    F: Fn(usize) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = ()> + Send + 'static,
{
    run_load(clients, op, move |done, _| done < per_client).await
}

/// `clients` tasks looping on `op(client)` until `duration` has passed.
pub async fn for_duration<F, Fut>(clients: usize, duration: Duration, op: F) -> Load
where
    F: Fn(usize) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = ()> + Send + 'static,
{
    run_load(clients, op, move |_, started: Instant| started.elapsed() < duration).await
}

async fn run_load<F, Fut>(clients: usize, op: F, go_on: impl Fn(usize, Instant) -> bool + Copy + Send + 'static) -> Load
where
    F: Fn(usize) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = ()> + Send + 'static,
{
    let op = Arc::new(op);
    let started = Instant::now();
    let tasks: Vec<_> = (0..clients)
        .map(|client| {
            let op = op.clone();
            tokio::spawn(async move {
                let mut latencies = Vec::new();
                while go_on(latencies.len(), started) {
                    let t = Instant::now();
                    op(client).await;
                    latencies.push(t.elapsed());
                }
                latencies
            })
        })
        .collect();
    let mut latencies = Vec::new();
    for task in tasks {
        match task.await {
            Ok(mine) => latencies.extend(mine),
            Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
            Err(e) => panic!("load task ended: {e}"),
        }
    }
    let elapsed = started.elapsed();
    latencies.sort();
    Load { ops: latencies.len(), elapsed, latencies }
}

/// An HTTP client for the load loops: keep-alive, a pool large enough for
/// every task, and a timeout so a stuck server fails the figure instead of
/// hanging the harness.
pub fn http_client() -> reqwest::Client {
    reqwest::Client::builder()
        .pool_max_idle_per_host(256)
        .timeout(Duration::from_secs(120))
        .build()
        .expect("build HTTP client")
}

// ---------------------------------------------------------------------------
// Processes and files
// ---------------------------------------------------------------------------

/// CPU time (user + system) `pid` has used, in seconds.
pub fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the command name (which may hold spaces) start after ')'.
    let fields: Vec<&str> =
        stat.rsplit_once(')').map(|(_, rest)| rest.split_whitespace().collect()).unwrap_or_default();
    let ticks = |i: usize| fields.get(i).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
    (ticks(11) + ticks(12)) as f64 / clock_ticks()
}

fn clock_ticks() -> f64 {
    // SAFETY: sysconf has no preconditions.
    let t = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if t > 0 { t as f64 } else { 100.0 }
}

/// Resident set size of `pid`, in MiB.
pub fn rss_mib(pid: u32) -> f64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let kib: f64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0.0);
    kib / 1024.0
}

/// Bytes the regular files under `dir` take on disk (allocated blocks, so
/// sparse files count for what they really use).
pub fn disk_usage(dir: &Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    let mut total = 0;
    let mut pending = vec![dir.to_path_buf()];
    while let Some(dir) = pending.pop() {
        for entry in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
            let Ok(meta) = entry.metadata() else { continue };
            if meta.is_dir() {
                pending.push(entry.path());
            } else {
                total += meta.blocks() * 512;
            }
        }
    }
    total
}

/// An executable called `name` on `PATH`.
pub fn on_path(name: &str) -> Option<PathBuf> {
    std::env::var_os("PATH")
        .into_iter()
        .flat_map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .map(|dir| dir.join(name))
        .find(|p| p.is_file())
}

// ---------------------------------------------------------------------------
// The report
// ---------------------------------------------------------------------------

/// One table of the report, with the sentences a reader needs to trust it
/// (what was measured, by what, and any caveat).
#[derive(Clone, Debug, Default)]
pub struct Section {
    pub title: String,
    pub notes: Vec<String>,
    pub header: Vec<String>,
    pub rows: Vec<Vec<String>>,
}

impl Section {
    pub fn new(title: &str, header: &[&str]) -> Section {
        Section { title: title.into(), header: header.iter().map(|h| h.to_string()).collect(), ..Section::default() }
    }

    pub fn note(&mut self, text: impl Into<String>) -> &mut Self {
        self.notes.push(text.into());
        self
    }

    pub fn row(&mut self, cells: Vec<String>) -> &mut Self {
        self.rows.push(cells);
        self
    }

    fn markdown(&self) -> String {
        let mut out = format!("### {}\n\n", self.title);
        if !self.header.is_empty() && !self.rows.is_empty() {
            out.push_str(&format!("| {} |\n", self.header.join(" | ")));
            out.push_str(&format!("|{}\n", "---|".repeat(self.header.len())));
            for row in &self.rows {
                out.push_str(&format!("| {} |\n", row.join(" | ")));
            }
            out.push('\n');
        }
        for note in &self.notes {
            out.push_str(note);
            out.push_str("\n\n");
        }
        out
    }
}

/// One of the targets, the figure measured for it, and whether it
/// was met (`None`: not measured, e.g. a peer was skipped).
#[derive(Clone, Debug)]
pub struct Target {
    pub what: String,
    pub goal: String,
    pub measured: String,
    pub met: Option<bool>,
}

/// The whole run: sections in the order they ran, the targets, and lines
/// quoted verbatim (such as `read ratio: X.XX`). Shared by the sections,
/// each adding to it as it finishes, so a section that fails keeps what
/// the others measured.
#[derive(Clone, Default)]
pub struct Report(Arc<Mutex<ReportInner>>);

#[derive(Default)]
struct ReportInner {
    preamble: Vec<String>,
    sections: Vec<Section>,
    targets: Vec<Target>,
    lines: Vec<String>,
}

impl Report {
    pub fn preamble(&self, text: impl Into<String>) {
        self.0.lock().unwrap().preamble.push(text.into());
    }

    /// Adds a finished table and prints it at once, so a long run shows
    /// progress.
    pub fn section(&self, section: Section) {
        println!("\n{}", section.markdown());
        self.0.lock().unwrap().sections.push(section);
    }

    pub fn target(&self, what: &str, goal: &str, measured: impl Into<String>, met: Option<bool>) {
        let target = Target { what: what.into(), goal: goal.into(), measured: measured.into(), met };
        self.0.lock().unwrap().targets.push(target);
    }

    /// A line printed and reported exactly as given.
    pub fn line(&self, text: impl Into<String>) {
        let text = text.into();
        println!("{text}");
        self.0.lock().unwrap().lines.push(text);
    }

    pub fn markdown(&self) -> String {
        let inner = self.0.lock().unwrap();
        let mut out = String::from("## tumbler benchmark report\n\n");
        for p in &inner.preamble {
            out.push_str(p);
            out.push_str("\n\n");
        }
        for section in &inner.sections {
            out.push_str(&section.markdown());
        }
        if !inner.targets.is_empty() {
            out.push_str("### Targets\n\n| what | target | measured | met |\n|---|---|---|---|\n");
            for t in &inner.targets {
                let met = match t.met {
                    Some(true) => "yes",
                    Some(false) => "**no**",
                    None => "not measured",
                };
                out.push_str(&format!("| {} | {} | {} | {met} |\n", t.what, t.goal, t.measured));
            }
            out.push('\n');
        }
        for line in &inner.lines {
            out.push_str(line);
            out.push_str("\n\n");
        }
        out
    }

    /// Writes the report to `path`, creating its directory.
    pub fn write(&self, path: &Path) -> std::io::Result<()> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        std::fs::write(path, self.markdown())
    }
}

/// The text of a panic payload, for reporting a section that failed.
pub fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    if let Some(s) = payload.downcast_ref::<&str>() {
        s.to_string()
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s.clone()
    } else {
        "a panic without a message".into()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spreads_and_quantiles() {
        let s = Spread::of(&[3.0, 1.0, 2.0]);
        assert_eq!((s.median, s.min, s.max), (2.0, 1.0, 3.0));
        assert_eq!(Spread::of(&[1.0, 2.0, 3.0, 10.0]).median, 2.5);
        assert_eq!(Spread::of(&[5.0]).show(1), "5.0");
        let sorted: Vec<Duration> = (1..=100).map(Duration::from_millis).collect();
        assert_eq!(quantile(&sorted, 0.5), Duration::from_millis(50));
        assert_eq!(quantile(&sorted, 0.99), Duration::from_millis(99));
        assert_eq!(
            (thousands(1_000_000), thousands(999), thousands(1000)),
            ("1,000,000".into(), "999".into(), "1,000".into())
        );
    }
}
