//! Plugin fixtures (real components built from `plugins/`) and an
//! in-process plugin runtime for tests that exercise the sandbox directly.

use serde_json::Value;
use sha2::{Digest, Sha256};
use std::path::PathBuf;
use std::sync::{Arc, OnceLock};
use tumbler::plugins::bindings::tumbler::rotator::types::StepInput;
use tumbler::plugins::cache::ComponentCache;
use tumbler::plugins::capabilities::GrantsSpec;
use tumbler::plugins::{CallContext, LoadedPlugin, Runtime, RuntimeLimits};
use zeroize::Zeroizing;

use crate::workspace_root;

/// Builds the `plugins/` workspace once per test process (a no-op when it
/// is up to date) and returns the path of `NAME.wasm`.
pub fn fixture_path(name: &str) -> PathBuf {
    static BUILT: OnceLock<()> = OnceLock::new();
    let root = workspace_root();
    BUILT.get_or_init(|| {
        let status = crate::cargo()
            .args(["build", "--release", "--target", "wasm32-wasip2", "--manifest-path"])
            .arg(root.join("plugins/Cargo.toml"))
            .env_remove("CARGO_TARGET_DIR")
            .status()
            .expect("run cargo to build the plugins");
        assert!(status.success(), "building the plugins workspace failed");
    });
    let path = root.join("plugins/target/wasm32-wasip2/release").join(format!("{}.wasm", name.replace('-', "_")));
    assert!(path.exists(), "fixture {} was not built", path.display());
    path
}

pub fn fixture_bytes(name: &str) -> Vec<u8> {
    std::fs::read(fixture_path(name)).expect("read fixture")
}

pub fn sha256_hex(bytes: &[u8]) -> String {
    Sha256::digest(bytes).iter().map(|b| format!("{b:02x}")).collect()
}

/// A runtime with the given limits and a throwaway compiled cache.
pub struct TestRuntime {
    pub runtime: Arc<Runtime>,
    _cache_dir: tempfile::TempDir,
}

impl TestRuntime {
    pub fn new(limits: RuntimeLimits) -> TestRuntime {
        let dir = tempfile::tempdir().expect("tempdir");
        let cache = ComponentCache::new(dir.path().join("cache"), Zeroizing::new([9; 32])).expect("cache dir");
        TestRuntime { runtime: Runtime::new(limits, cache).expect("runtime"), _cache_dir: dir }
    }

    pub async fn load(&self, fixture: &str) -> LoadedPlugin {
        let wasm = fixture_bytes(fixture);
        let sha = sha256_hex(&wasm);
        self.runtime.load(&sha, Arc::new(wasm)).await.unwrap_or_else(|e| panic!("load {fixture}: {e}"))
    }
}

/// A step input with these params and no versions.
pub fn input(params: Value) -> StepInput {
    StepInput {
        secret_name: "test/secret".into(),
        params: params.to_string(),
        current: None,
        pending: None,
        previous: None,
        fell_off: None,
        emergency: false,
        older: Vec::new(),
    }
}

/// A call context with grants in API form, e.g. `{"http": ["http://127.0.0.1:8080/ok"]}`.
pub fn context(plugin: &str, grants: Value) -> CallContext {
    let spec: GrantsSpec = serde_json::from_value(grants).expect("grants JSON");
    CallContext {
        plugin: plugin.into(),
        grants: Arc::new(spec.parse().unwrap_or_else(|e| panic!("grants: {e}"))),
        ..CallContext::default()
    }
}
