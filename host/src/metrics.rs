//! Prometheus metrics, rendered as text at `GET /metrics`. Every metric the
//! server has is declared in [`Metrics`] with its help text, so the list
//! below is the documentation. Label values come from code or operator
//! configuration (route templates, plugin names, step names, outcomes),
//! never from request input such as a secret name: unbounded label values
//! would blow up the scraper, and this keeps names out of metrics entirely.

use std::fmt::Write as _;
use std::sync::{LazyLock, Mutex};

/// Request latencies: 1 ms to 10 s.
const HTTP_BUCKETS: &[f64] = &[0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0];
/// Rotation step durations: plugins talk to databases and hosts, so 10 ms to 5 min.
const STEP_BUCKETS: &[f64] = &[0.01, 0.05, 0.1, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0];
/// Records per group commit.
const BATCH_BUCKETS: &[f64] = &[1.0, 2.0, 5.0, 10.0, 20.0, 50.0, 100.0, 200.0, 512.0, 1000.0, 2000.0, 5000.0];

pub struct Metrics {
    pub http_requests: Counter,
    pub http_duration: Histogram,
    pub audit_records: Counter,
    pub audit_failures: Counter,
    pub audit_batch_records: Histogram,
    pub alerts: Counter,
    // Declared now, incremented by the rotation engine, the plugin runtime,
    // leases and the scheduler as they land.
    pub rotations: Counter,
    pub rotation_step_duration: Histogram,
    pub plugin_traps: Counter,
    pub plugin_timeouts: Counter,
    pub plugin_denied_calls: Counter,
    pub leases_active: Gauge,
    pub leases_expired: Counter,
    pub leases_revoke_pending: Gauge,
    pub scheduler_queue_depth: Gauge,
    pub scheduler_next_due: Gauge,
    build_info: Gauge,
}

impl Metrics {
    fn new() -> Metrics {
        let m = Metrics {
            http_requests: Counter::new(
                "tumbler_http_requests_total",
                "API requests by route template, method and status.",
                &["route", "method", "status"],
            ),
            http_duration: Histogram::new(
                "tumbler_http_request_duration_seconds",
                "API request latency by route template and method, audit record included.",
                &["route", "method"],
                HTTP_BUCKETS,
            ),
            audit_records: Counter::new("tumbler_audit_records_total", "Audit records appended.", &[]),
            audit_failures: Counter::new(
                "tumbler_audit_write_failures_total",
                "Failed audit writes; each failed the request or event it recorded (503).",
                &[],
            ),
            audit_batch_records: Histogram::new(
                "tumbler_audit_batch_records",
                "Records per audit commit: a group commit or a fold of the journal.",
                &[],
                BATCH_BUCKETS,
            ),
            alerts: Counter::new(
                "tumbler_alerts_total",
                "Alerts raised, by kind and delivery outcome (delivered, failed, not_configured).",
                &["kind", "outcome"],
            ),
            rotations: Counter::new(
                "tumbler_rotations_total",
                "Finished rotations by plugin and outcome (succeeded, failed).",
                &["plugin", "outcome"],
            ),
            rotation_step_duration: Histogram::new(
                "tumbler_rotation_step_duration_seconds",
                "Duration of rotation steps (create, set, test, finish) by plugin.",
                &["plugin", "step"],
                STEP_BUCKETS,
            ),
            plugin_traps: Counter::new("tumbler_plugin_traps_total", "Plugin calls that trapped.", &["plugin"]),
            plugin_timeouts: Counter::new(
                "tumbler_plugin_timeouts_total",
                "Plugin calls stopped at their deadline.",
                &["plugin"],
            ),
            plugin_denied_calls: Counter::new(
                "tumbler_plugin_denied_calls_total",
                "Capability calls refused because no grant allowed them, by plugin and capability.",
                &["plugin", "capability"],
            ),
            leases_active: Gauge::new("tumbler_leases_active", "Leases currently active.", &[]),
            leases_expired: Counter::new("tumbler_leases_expired_total", "Leases that reached their end.", &[]),
            leases_revoke_pending: Gauge::new(
                "tumbler_leases_revoke_pending",
                "Leases whose revocation at the target failed and is being retried.",
                &[],
            ),
            scheduler_queue_depth: Gauge::new(
                "tumbler_scheduler_queue_depth",
                "Rotations due and waiting for a free slot.",
                &[],
            ),
            scheduler_next_due: Gauge::new(
                "tumbler_scheduler_next_due_timestamp_seconds",
                "Unix time of the next scheduled rotation (0 when none is scheduled).",
                &[],
            ),
            build_info: Gauge::new("tumbler_build_info", "Always 1; the version is a label.", &["version"]),
        };
        // Series without labels exist from the start, so a dashboard shows 0, not "no data".
        for counter in [&m.audit_records, &m.audit_failures, &m.leases_expired] {
            counter.add(&[], 0);
        }
        for gauge in [&m.leases_active, &m.leases_revoke_pending, &m.scheduler_queue_depth, &m.scheduler_next_due] {
            gauge.add(&[], 0.0);
        }
        m.build_info.set(&[env!("CARGO_PKG_VERSION")], 1.0);
        m
    }

    /// The Prometheus text exposition (format 0.0.4) of every metric.
    pub fn render(&self) -> String {
        let mut out = String::new();
        self.http_requests.render(&mut out);
        self.http_duration.render(&mut out);
        self.audit_records.render(&mut out);
        self.audit_failures.render(&mut out);
        self.audit_batch_records.render(&mut out);
        self.alerts.render(&mut out);
        self.rotations.render(&mut out);
        self.rotation_step_duration.render(&mut out);
        self.plugin_traps.render(&mut out);
        self.plugin_timeouts.render(&mut out);
        self.plugin_denied_calls.render(&mut out);
        self.leases_active.render(&mut out);
        self.leases_expired.render(&mut out);
        self.leases_revoke_pending.render(&mut out);
        self.scheduler_queue_depth.render(&mut out);
        self.scheduler_next_due.render(&mut out);
        self.build_info.render(&mut out);
        out
    }
}

/// The process's metrics.
pub fn metrics() -> &'static Metrics {
    static METRICS: LazyLock<Metrics> = LazyLock::new(Metrics::new);
    &METRICS
}

/// Name, help and label names of one metric family.
struct Family {
    name: &'static str,
    help: &'static str,
    labels: &'static [&'static str],
}

impl Family {
    /// The label values, as many as the family has labels: a wrong count is
    /// a bug in the caller; padded or cut rather than a panic on a request path.
    fn values<'a>(&self, values: &'a [&'a str]) -> impl Iterator<Item = &'a str> + Clone {
        debug_assert_eq!(values.len(), self.labels.len(), "labels of {}", self.name);
        (0..self.labels.len()).map(|i| values.get(i).copied().unwrap_or(""))
    }

    fn header(&self, out: &mut String, kind: &str) {
        let _ = writeln!(out, "# HELP {} {}", self.name, self.help.replace('\\', "\\\\").replace('\n', "\\n"));
        let _ = writeln!(out, "# TYPE {} {kind}", self.name);
    }

    /// `{a="x",b="y"}` plus an optional extra pair (a histogram's `le`).
    fn label_set(&self, values: &[String], extra: Option<(&str, &str)>) -> String {
        let pairs: Vec<(&str, &str)> =
            self.labels.iter().copied().zip(values.iter().map(String::as_str)).chain(extra).collect();
        if pairs.is_empty() {
            return String::new();
        }
        let body: Vec<String> = pairs.iter().map(|(k, v)| format!("{k}=\"{}\"", escape_label(v))).collect();
        format!("{{{}}}", body.join(","))
    }
}

fn escape_label(v: &str) -> String {
    v.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n")
}

fn number(v: f64) -> String {
    if v.is_nan() {
        "NaN".into()
    } else if v.is_infinite() {
        if v > 0.0 { "+Inf".into() } else { "-Inf".into() }
    } else {
        format!("{v}")
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// A family's series by label values. Every API request updates two of
/// them, so a series that exists is found without allocating; a family
/// has few (label values come from code), so a scan finds it.
struct Series<V> {
    values: Mutex<Vec<(Vec<String>, V)>>,
}

impl<V: Clone> Series<V> {
    fn new() -> Self {
        Series { values: Mutex::new(Vec::new()) }
    }

    /// Applies `f` to the series of `labels`, made with `init` if new.
    fn update(&self, family: &Family, labels: &[&str], init: impl FnOnce() -> V, f: impl FnOnce(&mut V)) {
        let wanted = family.values(labels);
        let mut values = lock(&self.values);
        let found = values.iter().position(|(key, _)| key.iter().map(String::as_str).eq(wanted.clone()));
        let at = found.unwrap_or_else(|| {
            values.push((wanted.map(str::to_owned).collect(), init()));
            values.len() - 1
        });
        f(&mut values[at].1);
    }

    /// Every series, ordered by label values.
    fn sorted(&self) -> Vec<(Vec<String>, V)> {
        let mut all = lock(&self.values).clone();
        all.sort_by(|a, b| a.0.cmp(&b.0));
        all
    }
}

pub struct Counter {
    family: Family,
    values: Series<u64>,
}

impl Counter {
    fn new(name: &'static str, help: &'static str, labels: &'static [&'static str]) -> Self {
        Counter { family: Family { name, help, labels }, values: Series::new() }
    }

    pub fn inc(&self, labels: &[&str]) {
        self.add(labels, 1);
    }

    pub fn add(&self, labels: &[&str], n: u64) {
        self.values.update(&self.family, labels, || 0, |v| *v += n);
    }

    fn render(&self, out: &mut String) {
        self.family.header(out, "counter");
        for (key, v) in self.values.sorted() {
            let _ = writeln!(out, "{}{} {v}", self.family.name, self.family.label_set(&key, None));
        }
    }
}

pub struct Gauge {
    family: Family,
    values: Series<f64>,
}

impl Gauge {
    fn new(name: &'static str, help: &'static str, labels: &'static [&'static str]) -> Self {
        Gauge { family: Family { name, help, labels }, values: Series::new() }
    }

    pub fn set(&self, labels: &[&str], v: f64) {
        self.values.update(&self.family, labels, || v, |old| *old = v);
    }

    pub fn add(&self, labels: &[&str], d: f64) {
        self.values.update(&self.family, labels, || 0.0, |v| *v += d);
    }

    fn render(&self, out: &mut String) {
        self.family.header(out, "gauge");
        for (key, v) in self.values.sorted() {
            let _ = writeln!(out, "{}{} {}", self.family.name, self.family.label_set(&key, None), number(v));
        }
    }
}

pub struct Histogram {
    family: Family,
    buckets: &'static [f64],
    values: Series<Observed>,
}

#[derive(Clone)]
struct Observed {
    /// Per-bucket (not cumulative) counts; the last slot is +Inf.
    counts: Vec<u64>,
    sum: f64,
}

impl Histogram {
    fn new(name: &'static str, help: &'static str, labels: &'static [&'static str], buckets: &'static [f64]) -> Self {
        Histogram { family: Family { name, help, labels }, buckets, values: Series::new() }
    }

    pub fn observe(&self, labels: &[&str], v: f64) {
        let slot = self.buckets.iter().position(|b| v <= *b).unwrap_or(self.buckets.len());
        let init = || Observed { counts: vec![0; self.buckets.len() + 1], sum: 0.0 };
        self.values.update(&self.family, labels, init, |o| {
            o.counts[slot] += 1;
            o.sum += v;
        });
    }

    fn render(&self, out: &mut String) {
        self.family.header(out, "histogram");
        let name = self.family.name;
        for (key, o) in self.values.sorted() {
            let mut cumulative = 0;
            let bounds = self.buckets.iter().map(|b| number(*b)).chain(std::iter::once("+Inf".to_owned()));
            for (bound, count) in bounds.zip(&o.counts) {
                cumulative += count;
                let labels = self.family.label_set(&key, Some(("le", &bound)));
                let _ = writeln!(out, "{name}_bucket{labels} {cumulative}");
            }
            let labels = self.family.label_set(&key, None);
            let _ = writeln!(out, "{name}_sum{labels} {}", number(o.sum));
            let _ = writeln!(out, "{name}_count{labels} {cumulative}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_series_is_kept_once_per_label_values_and_rendered_in_order() {
        let m = Metrics::new();
        for route in ["/v1/tokens", "/v1/health", "/v1/tokens", "/v1/audit"] {
            m.http_requests.inc(&[route, "GET", "200"]);
        }
        let text = m.render();
        let lines: Vec<&str> = text.lines().filter(|l| l.starts_with("tumbler_http_requests_total{")).collect();
        assert_eq!(
            lines,
            [
                r#"tumbler_http_requests_total{route="/v1/audit",method="GET",status="200"} 1"#,
                r#"tumbler_http_requests_total{route="/v1/health",method="GET",status="200"} 1"#,
                r#"tumbler_http_requests_total{route="/v1/tokens",method="GET",status="200"} 2"#,
            ]
        );
        m.leases_active.set(&[], 3.0);
        m.leases_active.add(&[], -1.0);
        assert!(m.render().contains("tumbler_leases_active 2\n"));
    }

    #[test]
    fn renders_prometheus_text() {
        let m = Metrics::new();
        m.http_requests.inc(&["/v1/secrets/{*path}", "GET", "200"]);
        m.http_requests.inc(&["/v1/secrets/{*path}", "GET", "200"]);
        m.http_duration.observe(&["/v1/secrets", "POST"], 0.003);
        m.http_duration.observe(&["/v1/secrets", "POST"], 20.0);
        m.alerts.inc(&["a\"b\\c\nd", "delivered"]);
        let text = m.render();
        assert!(text.contains("# TYPE tumbler_http_requests_total counter\n"), "{text}");
        assert!(
            text.contains(
                "tumbler_http_requests_total{route=\"/v1/secrets/{*path}\",method=\"GET\",status=\"200\"} 2\n"
            )
        );
        assert!(text.contains(
            "tumbler_http_request_duration_seconds_bucket{route=\"/v1/secrets\",method=\"POST\",le=\"0.0025\"} 0\n"
        ));
        assert!(text.contains(
            "tumbler_http_request_duration_seconds_bucket{route=\"/v1/secrets\",method=\"POST\",le=\"0.005\"} 1\n"
        ));
        assert!(text.contains(
            "tumbler_http_request_duration_seconds_bucket{route=\"/v1/secrets\",method=\"POST\",le=\"+Inf\"} 2\n"
        ));
        assert!(
            text.contains("tumbler_http_request_duration_seconds_count{route=\"/v1/secrets\",method=\"POST\"} 2\n")
        );
        assert!(text.contains(r#"kind="a\"b\\c\nd""#), "{text}");
        assert!(text.contains("tumbler_leases_active 0\n"));
        assert!(text.contains("# TYPE tumbler_rotations_total counter\n"));
        assert!(text.contains("tumbler_build_info{version=\""));
    }
}
