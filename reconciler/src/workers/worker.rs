//! [`Worker`]: the state of one worker run, shared by its steps (the
//! orchestration in `entry.rs`, git in `workspace.rs`, templates in
//! `template.rs`, the agent process in `agent.rs`).

use std::path::PathBuf;
use std::sync::Arc;

use super::agent_env::AgentEnv;
use super::log::Log;
use super::spec::RunSpec;
use super::usage::Usage;

/// One worker run: its spec, folders, log, the agent's environment and the
/// usage the agent reported.
pub(super) struct Worker<'a> {
    pub(super) spec: &'a RunSpec,
    pub(super) run_dir: PathBuf,
    pub(super) workspace: PathBuf,
    pub(super) log: Arc<Log>,
    pub(super) env: AgentEnv,
    pub(super) usage: Option<Usage>,
    /// Why the agent ran unconfined, when it did.
    pub(super) unconfined: Option<String>,
}
