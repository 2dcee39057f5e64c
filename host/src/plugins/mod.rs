//! The WebAssembly rotator runtime: one shared engine, components compiled
//! once and cached, every call in a fresh store with a memory limit, an
//! epoch deadline and a wall-clock timeout, and WASI with nothing granted.
//! Plugins reach the world only through `capabilities/`.

pub mod builtin;
pub mod cache;
pub mod capabilities;
pub mod output;
pub mod registry;
pub mod runtime;

pub use runtime::{CallContext, LoadedPlugin, PluginError, PluginErrorKind, Runtime, RuntimeLimits, Step, StepOutcome};

/// Host bindings for `wit/rotator.wit`.
pub mod bindings {
    wasmtime::component::bindgen!({
        world: "rotator",
        path: "../wit",
        imports: { default: async | trappable },
        exports: { default: async },
        with: {
            "tumbler:rotator/sql.connection": super::capabilities::sql::Connection,
        },
    });
}
