//! The agent's environment: the worker's variables passed through, literal
//! values, and secrets resolved from the worker's own environment.

use std::ffi::OsString;

use super::error::WorkerError;
use super::spec::{EnvSource, RunSpec};

/// Environment variables of the worker passed through to the agent besides
/// [`crate::git::PROCESS_ENV`] (its shell and terminal); the rest of the
/// worker's environment (which may hold other secrets) is not.
pub const AGENT_EXTRA_ENV: &[&str] = &["SHELL", "TERM"];

/// Every variable of the worker passed through to the agent.
pub fn passthrough_env() -> impl Iterator<Item = &'static str> {
    crate::git::PROCESS_ENV.iter().chain(AGENT_EXTRA_ENV).copied()
}

/// The agent's own environment variables.
pub(super) type AgentEnv = Vec<(String, OsString)>;

/// Resolves the agent's environment: literal values as they are, secrets
/// from the worker's own environment. Returns the variables and the secret
/// values (for redaction).
pub(super) fn resolve_env(spec: &RunSpec) -> Result<(AgentEnv, Vec<String>), WorkerError> {
    let mut env = Vec::new();
    let mut secrets = Vec::new();
    for (name, source) in &spec.env {
        match source {
            EnvSource::Value(v) => env.push((name.clone(), OsString::from(v))),
            EnvSource::Secret { name: secret, .. } => match std::env::var_os(secret) {
                Some(value) if !value.is_empty() => {
                    secrets.push(value.to_string_lossy().into_owned());
                    env.push((name.clone(), value));
                }
                _ => return Err(WorkerError::SecretMissing { variable: name.clone(), secret: secret.clone() }),
            },
        }
    }
    Ok((env, secrets))
}
