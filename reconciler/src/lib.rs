//! Hadron: a git-driven reconciler for AI-agent change requests.
//!
//! The flow of a pass is described once, in [`reconcile`], in the order the
//! code runs it. The layers, from the bottom: shared domain modules (`ids`,
//! `attempt`, `time`, `redact`), the pure `model` and `plan`; the I/O layers
//! `git`, `source`, `store`, `workers`, `gates`, `forge`, `status`,
//! `telemetry`; the loop (`reconcile`); the HTTP `server`, which depends on
//! the loop's inputs and outputs and on nothing that depends on it; and the
//! composition root `up`. `tests/tests/layers.rs` keeps it so.
#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod attempt;
pub mod backoff;
pub mod cli;
pub mod fault;
pub mod forge;
pub mod gates;
pub mod git;
pub mod ids;
pub mod leader;
pub mod model;
pub mod plan;
pub mod reconcile;
pub mod redact;
pub mod schema;
pub mod seed;
pub mod server;
pub mod source;
pub mod status;
pub mod store;
pub mod telemetry;
pub mod time;
pub mod up;
pub mod workers;
