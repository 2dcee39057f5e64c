//! A small HTTP server on a loopback port for plugin tests: it counts hits
//! per path, answers `/…/redirect` with a 302 to `/other`, and anything
//! else with 200 and the path.

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, Uri, header};
use axum::response::IntoResponse;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

#[derive(Clone, Default)]
pub struct Hits(Arc<Mutex<HashMap<String, usize>>>);

impl Hits {
    pub fn get(&self, path: &str) -> usize {
        self.0.lock().expect("hits lock").get(path).copied().unwrap_or(0)
    }

    pub fn total(&self) -> usize {
        self.0.lock().expect("hits lock").values().sum()
    }
}

pub struct HttpTarget {
    pub addr: SocketAddr,
    pub hits: Hits,
    task: tokio::task::JoinHandle<()>,
}

impl HttpTarget {
    /// Starts on 127.0.0.1 on a free port, on the current tokio runtime.
    pub async fn start() -> HttpTarget {
        let hits = Hits::default();
        let app = Router::new().fallback(handle).with_state(hits.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        HttpTarget { addr, hits, task }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }
}

impl Drop for HttpTarget {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn handle(State(hits): State<Hits>, uri: Uri) -> impl IntoResponse {
    let path = uri.path().to_owned();
    *hits.0.lock().expect("hits lock").entry(path.clone()).or_default() += 1;
    if path.ends_with("/redirect") {
        return (StatusCode::FOUND, [(header::LOCATION, "/other".to_owned())], String::new());
    }
    (StatusCode::OK, [(header::CONTENT_TYPE, "text/plain".to_owned())], path)
}
