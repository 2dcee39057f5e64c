//! A loopback HTTP server the test steers, for rotation tests: each path
//! answers 200 unless told otherwise (closed: 503 until opened; or N
//! failures with a chosen status before 200). It counts hits per path and
//! keeps the bodies POSTed to it (an alert webhook's deliveries).
//!
//! With the `test-gate` plugin a closed path holds a rotation inside that
//! step; with `test-flaky` each answer decides one step attempt.

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{Method, StatusCode, Uri};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

#[derive(Clone, Copy, Debug)]
enum Rule {
    Closed,
    /// This many answers with `status`, then 200.
    Fail {
        left: u32,
        status: u16,
    },
}

#[derive(Default)]
struct Inner {
    rules: HashMap<String, Rule>,
    hits: HashMap<String, usize>,
    hit_times: HashMap<String, Vec<Instant>>,
    posts: Vec<(String, String)>,
}

#[derive(Clone, Default)]
pub struct Control(Arc<Mutex<Inner>>);

pub struct Gate {
    pub addr: SocketAddr,
    pub control: Control,
    task: tokio::task::JoinHandle<()>,
}

impl Gate {
    /// Starts on 127.0.0.1 on a free port, on the current tokio runtime.
    pub async fn start() -> Gate {
        let control = Control::default();
        let app = Router::new().fallback(handle).with_state(control.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Gate { addr, control, task }
    }

    /// `http://127.0.0.1:PORT{path}`.
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// The grant that lets a plugin reach this server.
    pub fn grant(&self) -> String {
        format!("http://{}/", self.addr)
    }

    fn with<T>(&self, f: impl FnOnce(&mut Inner) -> T) -> T {
        f(&mut self.control.0.lock().expect("gate lock"))
    }

    /// 503 on `path` until [`Gate::open`].
    pub fn close(&self, path: &str) {
        self.with(|i| i.rules.insert(path.to_owned(), Rule::Closed));
    }

    pub fn open(&self, path: &str) {
        self.with(|i| i.rules.remove(path));
    }

    /// Answer `status` the next `times` requests on `path`, then 200.
    pub fn fail(&self, path: &str, times: u32, status: u16) {
        self.with(|i| i.rules.insert(path.to_owned(), Rule::Fail { left: times, status }));
    }

    pub fn hits(&self, path: &str) -> usize {
        self.with(|i| i.hits.get(path).copied().unwrap_or(0))
    }

    /// When each request on `path` arrived.
    pub fn hit_times(&self, path: &str) -> Vec<Instant> {
        self.with(|i| i.hit_times.get(path).cloned().unwrap_or_default())
    }

    /// Paths hit so far.
    pub fn paths_hit(&self) -> Vec<String> {
        self.with(|i| i.hits.keys().cloned().collect())
    }

    /// Bodies POSTed to `path`.
    pub fn posts(&self, path: &str) -> Vec<String> {
        self.with(|i| i.posts.iter().filter(|(p, _)| p == path).map(|(_, b)| b.clone()).collect())
    }

    /// Waits until `path` has been hit at least `n` times.
    pub async fn wait_for_hits(&self, path: &str, n: usize, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        while self.hits(path) < n {
            assert!(Instant::now() < deadline, "{path} was hit {} times, not {n}, within {timeout:?}", self.hits(path));
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

impl Drop for Gate {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn handle(State(control): State<Control>, method: Method, uri: Uri, body: Bytes) -> StatusCode {
    let path = uri.path().to_owned();
    let mut inner = control.0.lock().expect("gate lock");
    *inner.hits.entry(path.clone()).or_default() += 1;
    inner.hit_times.entry(path.clone()).or_default().push(Instant::now());
    if method == Method::POST {
        inner.posts.push((path.clone(), String::from_utf8_lossy(&body).into_owned()));
    }
    match inner.rules.get_mut(&path) {
        None => StatusCode::OK,
        Some(Rule::Closed) => StatusCode::SERVICE_UNAVAILABLE,
        Some(Rule::Fail { left, status }) => {
            if *left == 0 {
                return StatusCode::OK;
            }
            *left -= 1;
            StatusCode::from_u16(*status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR)
        }
    }
}
