//! `log`: lines into the call's captured output (capped, redacted later).

use crate::plugins::bindings::tumbler::rotator::log::{Host, Level};
use crate::plugins::runtime::PluginState;

impl Host for PluginState {
    async fn log(&mut self, level: Level, message: String) -> wasmtime::Result<()> {
        let prefix = match level {
            Level::Debug => "debug: ",
            Level::Info => "info: ",
            Level::Warn => "warn: ",
            Level::Error => "error: ",
        };
        self.output.line(prefix, &message);
        Ok(())
    }
}
