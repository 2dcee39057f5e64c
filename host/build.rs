//! Builds the built-in rotators (the `plugins/` workspace, for
//! wasm32-wasip2) and embeds them, so the `tumbler` binary carries them and
//! registers them at start without any file beside it.

use std::env;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;

/// Crates in `plugins/` shipped inside the binary, by registered name.
const BUILTINS: &[(&str, &str)] =
    &[("noop", "noop"), ("postgres", "postgres"), ("mysql", "mysql"), ("ssh", "ssh"), ("apikey", "apikey")];
const TARGET: &str = "wasm32-wasip2";

fn main() {
    let manifest = PathBuf::from(env::var("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR"));
    let root = manifest.parent().expect("host/ sits in the workspace root").to_path_buf();
    let plugins = root.join("plugins");
    let present: Vec<(&str, &str)> =
        BUILTINS.iter().copied().filter(|(_, krate)| plugins.join(krate).join("Cargo.toml").exists()).collect();

    for path in ["Cargo.toml", "Cargo.lock", "sdk"] {
        println!("cargo:rerun-if-changed={}", plugins.join(path).display());
    }
    for (_, krate) in &present {
        println!("cargo:rerun-if-changed={}", plugins.join(krate).display());
    }
    println!("cargo:rerun-if-changed={}", root.join("wit").display());

    ensure_target();
    let target_dir = plugins.join("target");
    let mut cmd = Command::new(env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
    cmd.arg("build")
        .arg("--manifest-path")
        .arg(plugins.join("Cargo.toml"))
        .args(["--release", "--target", TARGET])
        .env("CARGO_TARGET_DIR", &target_dir);
    for (_, krate) in &present {
        cmd.args(["-p", krate]);
    }
    // The outer build's flags are for the host target, not for wasm.
    for var in ["RUSTFLAGS", "CARGO_ENCODED_RUSTFLAGS", "CARGO_BUILD_TARGET", "RUSTC_WORKSPACE_WRAPPER"] {
        cmd.env_remove(var);
    }
    let status = cmd.status().expect("running cargo to build the built-in plugins");
    if !status.success() {
        panic!("building the built-in plugins in {} failed (see the output above)", plugins.display());
    }

    let mut code = String::from("&[\n");
    for (name, krate) in &present {
        let wasm = target_dir.join(TARGET).join("release").join(format!("{}.wasm", krate.replace('-', "_")));
        assert!(wasm.exists(), "{} was not built", wasm.display());
        writeln!(code, "    ({name:?}, include_bytes!({:?})),", wasm.display().to_string()).expect("write to String");
    }
    code.push(']');
    let out = PathBuf::from(env::var("OUT_DIR").expect("cargo sets OUT_DIR")).join("builtin_plugins.rs");
    std::fs::write(&out, code).expect("writing builtin_plugins.rs");
}

/// `rustup target add` is idempotent; without the target nothing builds.
fn ensure_target() {
    let sysroot = Command::new(env::var("RUSTC").unwrap_or_else(|_| "rustc".into()))
        .args(["--print", "sysroot"])
        .output()
        .ok()
        .map(|o| PathBuf::from(String::from_utf8_lossy(&o.stdout).trim()));
    let installed = sysroot.is_some_and(|s| Path::new(&s).join("lib/rustlib").join(TARGET).exists());
    if !installed {
        let ok = Command::new("rustup").args(["target", "add", TARGET]).status().is_ok_and(|s| s.success());
        if !ok {
            panic!("the {TARGET} target is missing and `rustup target add {TARGET}` failed; install it and rebuild");
        }
    }
}
