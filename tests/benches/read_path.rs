//! Read path alone: `GET /v1/secrets/NAME:value` on a release tumbler (auth,
//! audit and every check on, the shipped defaults) against a bare axum
//! handler returning a body of the same size and OpenBao's KV v2 read, all
//! loaded by wrk in the same run (see `tumbler_tests::bench_http`). The
//! harness (`--bench harness`) runs this among the rest.
//! Run: `cargo bench -p tumbler-tests --bench read_path`.

use tumbler_tests::bench::Report;
use tumbler_tests::bench_http;

fn main() {
    // SAFETY: set before any thread starts; read by the harness only.
    unsafe { std::env::set_var("TUMBLER_TEST_RELEASE", "1") };
    tumbler_tests::tumbler_bin();
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().expect("tokio runtime");
    runtime.block_on(bench_http::read_path(&Report::default()));
}
