//! wrk (Debian's package), the load generator of the read path: written in
//! C with an event loop per thread, it costs the server under test far less
//! CPU than an async Rust client would on a 2-core machine, and it loads
//! every target (tumbler, bare axum, OpenBao) the same way.

use std::process::Command;

/// One wrk run: requests per second and latency percentiles.
#[derive(Clone, Copy, Debug)]
pub struct WrkRun {
    pub rps: f64,
    pub p50_ms: f64,
    pub p99_ms: f64,
}

/// Why wrk cannot be used here, if it cannot.
pub fn missing() -> Option<String> {
    crate::bench::on_path("wrk").is_none().then(|| "wrk is not installed (apt-get install wrk)".to_string())
}

/// `wrk --latency` against `url` with `connections` open connections for
/// `seconds`, sending `headers`. Panics if any response was not 2xx or a
/// socket failed: a figure made of errors is no figure.
pub fn run(url: &str, headers: &[(&str, &str)], connections: u32, seconds: u32) -> WrkRun {
    let mut cmd = Command::new("wrk");
    // At most one thread per core, and wrk needs a connection per thread.
    let threads = connections.min(2).to_string();
    cmd.args(["--latency", "-t", &threads, "-c", &connections.to_string(), "-d", &format!("{seconds}s")]);
    for (name, value) in headers {
        cmd.args(["-H", &format!("{name}: {value}")]);
    }
    let out = cmd.arg(url).output().expect("run wrk (apt-get install wrk)");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "wrk failed: {}\n{text}", String::from_utf8_lossy(&out.stderr));
    assert!(!text.contains("Non-2xx"), "errors under load against {url}:\n{text}");
    assert!(!text.contains("Socket errors"), "socket errors under load against {url}:\n{text}");
    parse(&text).unwrap_or_else(|| panic!("cannot read wrk's output:\n{text}"))
}

fn parse(text: &str) -> Option<WrkRun> {
    let field = |prefix: &str| -> Option<f64> {
        let line = text.lines().map(str::trim_start).find(|l| l.starts_with(prefix))?;
        parse_value(line[prefix.len()..].split_whitespace().next()?)
    };
    Some(WrkRun { rps: field("Requests/sec:")?, p50_ms: field("50%")?, p99_ms: field("99%")? })
}

/// wrk prints `812.00us`, `1.20ms`, `2.01s`, `1.50m` or a plain number;
/// durations come back in milliseconds.
fn parse_value(v: &str) -> Option<f64> {
    let (num, scale) = if let Some(n) = v.strip_suffix("us") {
        (n, 0.001)
    } else if let Some(n) = v.strip_suffix("ms") {
        (n, 1.0)
    } else if let Some(n) = v.strip_suffix('s') {
        (n, 1000.0)
    } else if let Some(n) = v.strip_suffix('m') {
        (n, 60_000.0)
    } else {
        (v, 1.0)
    };
    Some(num.parse::<f64>().ok()? * scale)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_wrk_output() {
        let text = "Running 5s test @ http://127.0.0.1:1/x\n  2 threads and 32 connections\n\
                    Thread Stats   Avg      Stdev     Max   +/- Stdev\n    Latency   812.00us  1.2ms  20ms  90%\n\
                    Latency Distribution\n     50%  512.00us\n     75%    1.00ms\n     90%    2.00ms\n\
                    99%    7.42ms\n\
                    247075 requests in 5.00s, 40.0MB read\nRequests/sec:  49415.00\nTransfer/sec:      8.00MB\n";
        let run = parse(text).unwrap();
        assert_eq!(run.rps, 49415.0);
        assert!((run.p50_ms - 0.512).abs() < 1e-9);
        assert_eq!(run.p99_ms, 7.42);
        assert!((parse_value("2.01s").unwrap() - 2010.0).abs() < 1e-9);
    }
}
