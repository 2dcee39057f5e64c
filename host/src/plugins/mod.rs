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

/// Host bindings for world `dynamic-rotator`: the same imports (mapped onto
/// [`bindings`], so one linker serves both worlds) plus the `dynamic` export.
/// A plugin is dynamic when its component also satisfies this world.
pub mod dynamic_bindings {
    wasmtime::component::bindgen!({
        world: "dynamic-rotator",
        path: "../wit",
        imports: { default: async | trappable },
        exports: { default: async },
        with: {
            "tumbler:rotator/types": super::bindings::tumbler::rotator::types,
            "tumbler:rotator/log": super::bindings::tumbler::rotator::log,
            "tumbler:rotator/secrets": super::bindings::tumbler::rotator::secrets,
            "tumbler:rotator/sql": super::bindings::tumbler::rotator::sql,
            "tumbler:rotator/ssh": super::bindings::tumbler::rotator::ssh,
            "tumbler:rotator/http": super::bindings::tumbler::rotator::http,
            "tumbler:rotator/crypto": super::bindings::tumbler::rotator::crypto,
        },
    });
}
