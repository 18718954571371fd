//! Hadron: a git-driven reconciler for AI-agent change requests.
//!
//! The flow is readable from the modules: `source` (git) → `model` (parse and
//! validate) → `plan` → `reconcile` (observe, execute: store, workers,
//! gates) → `status` (write back). `up` is the embedded default.
#![forbid(unsafe_code)]

pub mod attempt;
pub mod cli;
pub mod forge;
pub mod gates;
pub mod git;
pub mod ids;
pub mod model;
pub mod plan;
pub mod redact;
pub mod reconcile;
pub mod schema;
pub mod server;
pub mod source;
pub mod status;
pub mod store;
pub mod telemetry;
pub mod time;
pub mod up;
pub mod workers;
