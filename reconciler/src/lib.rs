//! Hadron: a git-driven reconciler for AI-agent change requests.
//!
//! The flow is readable from the modules: `source` (git) → `model` (parse and
//! validate) → `plan` → `execute` (store, workers, forge) → `status` (write back).
#![forbid(unsafe_code)]

pub mod cli;
pub mod model;
pub mod plan;
pub mod schema;
pub mod source;
pub mod status;
pub mod store;
pub mod time;
pub mod workers;
pub mod gates;
