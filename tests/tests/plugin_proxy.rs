//! Plugins never go through a proxy from the server's environment. This is
//! its own test binary: the proxy variables are process-wide.

use serde_json::json;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use tumbler::plugins::{RuntimeLimits, Step};
use tumbler_tests::fixtures::{TestRuntime, context, input};
use tumbler_tests::http_target::HttpTarget;

#[tokio::test]
async fn https_proxy_in_the_environment_is_ignored() {
    let proxy = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let proxy_url = format!("http://{}", proxy.local_addr().unwrap());
    let connections = Arc::new(AtomicUsize::new(0));
    let counted = connections.clone();
    tokio::spawn(async move {
        while let Ok((_sock, _)) = proxy.accept().await {
            counted.fetch_add(1, Ordering::SeqCst);
        }
    });
    // SAFETY: this test binary has no other test and sets these before any
    // client is built.
    for var in ["HTTPS_PROXY", "HTTP_PROXY", "ALL_PROXY", "https_proxy", "http_proxy", "all_proxy"] {
        unsafe { std::env::set_var(var, &proxy_url) };
    }
    let target = HttpTarget::start().await;
    let rt = TestRuntime::new(RuntimeLimits::default());
    let plugin = rt.load("test-probe").await;
    let outcome = rt
        .runtime
        .run_step(
            &plugin,
            Step::Set,
            input(json!({"call": "http", "url": target.url("/ok")})),
            context("test-probe", json!({"http": [target.url("/ok")]})),
        )
        .await;
    assert!(outcome.result.is_ok(), "{:?}", outcome.result.as_ref().err());
    assert_eq!(target.hits.get("/ok"), 1, "the request went straight to the target");
    assert_eq!(connections.load(Ordering::SeqCst), 0, "the proxy saw no connection");
}
