//! tumbler: a self-hosted secrets manager that keeps secrets encrypted in
//! SQLite and rotates them with sandboxed WebAssembly plugins.

pub mod alerts;
pub mod api;
pub mod audit;
pub mod auth;
pub mod cli;
pub mod crypto;
pub mod error;
pub mod keyfile;
pub mod leases;
pub mod metrics;
pub mod model;
pub mod operator;
pub mod plugins;
pub mod rotation;
pub mod server;
pub mod store;
