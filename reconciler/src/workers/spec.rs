//! What a worker is asked to do (`run.json`) and what it reports back
//! (`result.json`). Both drivers (local processes, Kubernetes Jobs) run the
//! same `hadron worker --run <run.json>` entrypoint with these files.

use serde::{Deserialize, Serialize};

use crate::model::kinds::{OutputFormat, Pricing, Resources};

pub use crate::ids::{Installation, worker_name};

/// Where an environment variable's value comes from.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum EnvSource {
    /// A literal, non-secret value from the agent file.
    Value(String),
    /// The name of an environment variable of the Hadron process (locally)
    /// or a Secret key (Kubernetes) holding the value; never the value.
    Secret {
        /// Secret / variable name.
        name: String,
        /// Key in the Secret (Kubernetes only).
        key: Option<String>,
    },
}

/// One result of an earlier stage, for the prompt.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PreviousStage {
    /// Stage name.
    pub name: String,
    /// Repo URL as written in the request.
    pub repo: String,
    /// What the agent said.
    pub summary: String,
}

/// `run.json`: everything a worker needs, resolved by the reconciler.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RunSpec {
    /// Deterministic worker name (see [`worker_name`]).
    pub worker: String,
    /// The installation the worker belongs to ([`Installation`]): a driver
    /// starts, reports, cancels and prunes its own installation's workers
    /// only. Empty in run specs written before installations existed (no
    /// driver takes those as its own).
    #[serde(default)]
    pub installation: String,
    /// Request name.
    pub request: String,
    /// Spec generation of the request.
    pub generation: String,
    /// Stage name.
    pub stage: String,
    /// Attempt number, from 1.
    pub attempt: u32,
    /// Repo URL as written in the request (for display and status).
    pub repo: String,
    /// Resolved clone URL or absolute path (relative URLs already resolved).
    pub clone_url: String,
    /// Base branch the work starts from when `work_branch` does not exist yet.
    pub base_branch: String,
    /// The branch the worker commits to and pushes: `hadron/<request>`.
    pub work_branch: String,
    /// Request title.
    pub title: String,
    /// Request description.
    pub description: String,
    /// Handlebars prompt template, already chosen (stage > agent > shipped default).
    pub prompt_template: String,
    /// Results of the stages before this one, for the prompt.
    #[serde(default)]
    pub previous_stages: Vec<PreviousStage>,
    /// Agent command: argument list, each element a handlebars template.
    pub command: Vec<String>,
    /// Model name for `{{model}}`.
    #[serde(default)]
    pub model: Option<String>,
    /// Agent environment.
    #[serde(default)]
    pub env: Vec<(String, EnvSource)>,
    /// Whether a run that changes nothing fails.
    pub require_change: bool,
    /// Token prices, for cost when the agent reports tokens but no cost.
    #[serde(default)]
    pub pricing: Option<Pricing>,
    /// Wall-time limit for the agent, in seconds.
    #[serde(default)]
    pub wall_time_secs: Option<u64>,
    /// Author and committer of the worker's commit: (name, email).
    pub git_author: (String, String),
    /// The agent's container image (Kubernetes driver; the local driver ignores it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<String>,
    /// The agent's resources (Kubernetes driver; the local driver ignores them).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<Resources>,
    /// What the agent may reach on the network (default: nothing).
    #[serde(default)]
    pub network: WorkerNetwork,
    /// Whether the agent must run confined (the local driver's sandbox);
    /// when it must and cannot, the worker does not run the agent.
    #[serde(default)]
    pub sandbox: SandboxMode,
    /// Most bytes the workspace (and the agent's private `/tmp`) may hold;
    /// the worker applies its default (1 GiB) when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_workspace_bytes: Option<u64>,
    /// How the worker reads the agent's usage, summary and failure.
    #[serde(default)]
    pub output: OutputFormat,
    /// Tokens the request may still spend (`maxTokens` less what its
    /// attempts used): a streaming CLI is stopped when it uses more.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_tokens: Option<u64>,
    /// USD the request may still spend (`maxCostUSD` less what its
    /// attempts cost): a streaming CLI is stopped when it spends more.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_cost_usd: Option<f64>,
    /// What an approver asked to change, when this attempt is a revision
    /// (Markdown, with who asked): the prompt's `{{feedback}}`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub feedback: Option<String>,
    /// The agent's `spec.resume.command`, when it has one: run instead of
    /// `command` when `resume_session` is set, with `{{sessionId}}`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resume_command: Option<Vec<String>>,
    /// The session of the failed attempt before this one that this attempt
    /// continues (the planner sets it for a retry of an agent with
    /// `resume`); checked again by the worker before it reaches the argv.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resume_session: Option<String>,
    /// A home for the agent that persists across the attempts of one stage
    /// on one repo, where the CLI keeps its sessions: set by the local
    /// driver for an agent with `resume` (shown as the agent's `HOME`);
    /// absent elsewhere (a fresh home per attempt).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agent_home: Option<String>,
}

/// What an agent may reach on the network.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum WorkerNetwork {
    /// No network at all (loopback of its own only). The default.
    #[default]
    None,
    /// Only these `host:port` pairs (a host is a DNS name, an IPv4 address
    /// or a CIDR such as `10.0.0.0/8`; checked by the model).
    Allow(Vec<String>),
    /// The host's network, unrestricted: the explicit, visible opt-out.
    Host,
}

impl WorkerNetwork {
    /// The allowed `(host, port)` pairs; empty for `None` and `Host`.
    pub fn endpoints(&self) -> Vec<(&str, u16)> {
        match self {
            WorkerNetwork::Allow(list) => list
                .iter()
                .filter_map(|e| {
                    let (host, port) = e.rsplit_once(':')?;
                    Some((host, port.parse().ok()?))
                })
                .collect(),
            WorkerNetwork::None | WorkerNetwork::Host => Vec::new(),
        }
    }
}

/// Whether a worker's agent must be confined.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum SandboxMode {
    /// Confined where the machine can (the default); otherwise the run is
    /// marked unconfined.
    #[default]
    Preferred,
    /// Confined or not run at all.
    Required,
}

/// Which run a worker is: what a driver can tell of a worker it finds
/// (from `run.json` locally, from a Job's labels on Kubernetes), enough to
/// adopt it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunIdentity {
    /// Worker name.
    pub worker: String,
    /// Request name.
    pub request: String,
    /// Spec generation.
    pub generation: String,
    /// Stage name.
    pub stage: String,
    /// Repo URL as written in the request.
    pub repo: String,
    /// Attempt number.
    pub attempt: u32,
}

impl RunSpec {
    /// Which run this is.
    pub fn identity(&self) -> RunIdentity {
        RunIdentity {
            worker: self.worker.clone(),
            request: self.request.clone(),
            generation: self.generation.clone(),
            stage: self.stage.clone(),
            repo: self.repo.clone(),
            attempt: self.attempt,
        }
    }
}

/// How a run ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Outcome {
    /// The agent ran and its change (if any) was pushed.
    Succeeded,
    /// It did not; `reason` says why.
    Failed,
}

/// `result.json`: what the worker reports.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RunResult {
    /// Worker name, echoed.
    pub worker: String,
    /// Succeeded or Failed.
    pub outcome: Outcome,
    /// Stable CamelCase reason: `Completed`, `AgentExitNonZero`, `WallTimeExceeded`,
    /// `NoChange`, `CloneFailed`, `PushFailed`, `TemplateFailed`, `SecretMissing`, …
    pub reason: String,
    /// Human-readable detail.
    pub message: String,
    /// Commit pushed to `work_branch`, when there was one.
    #[serde(default)]
    pub pushed_commit: Option<String>,
    /// Input tokens the agent reported.
    #[serde(default)]
    pub tokens_in: u64,
    /// Output tokens the agent reported.
    #[serde(default)]
    pub tokens_out: u64,
    /// Cost in USD: the agent's own figure, else tokens × prices.
    #[serde(default)]
    pub cost_usd: f64,
    /// What the agent said it did.
    #[serde(default)]
    pub summary: String,
    /// Path of the log file (local driver) or log reference.
    #[serde(default)]
    pub log_path: String,
    /// Start and finish, RFC 3339 UTC.
    pub started_at: String,
    /// Finish time, RFC 3339 UTC.
    pub finished_at: String,
    /// Why the agent ran unconfined (no sandbox), when it did.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unconfined: Option<String>,
    /// The agent CLI's session id (Claude's `session_id`, Codex's
    /// `thread_id`, OpenCode's `sessionID`, Gemini's `session_id`), when it
    /// printed one that passes [`is_session_id`](crate::ids::is_session_id).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub session_id: Option<String>,
}

impl RunResult {
    /// Refuses a usage report outside sane bounds: the result becomes a
    /// failure with reason `InvalidUsageReport`, and the figures are not
    /// kept (they would overflow the sums or not fit the store).
    pub fn refuse_insane_usage(&mut self) {
        if let Err(e) = super::usage::check(self.tokens_in, self.tokens_out, self.cost_usd) {
            self.refuse_usage(&e);
        }
    }
}

/// A run spec for tests.
#[cfg(test)]
pub(crate) fn sample() -> RunSpec {
    RunSpec {
        worker: worker_name(&Installation::default(), "fix", "0011223344556677", "implement", "../app.git", 1),
        installation: Installation::default().to_string(),
        request: "fix".into(),
        generation: "0011223344556677".into(),
        stage: "implement".into(),
        attempt: 1,
        repo: "../app.git".into(),
        clone_url: "/srv/git/app.git".into(),
        base_branch: "main".into(),
        work_branch: "hadron/fix".into(),
        title: "Fix it".into(),
        description: String::new(),
        prompt_template: crate::reconcile::execute::DEFAULT_PROMPT.into(),
        previous_stages: vec![],
        command: vec!["agent".into(), "{{promptFile}}".into()],
        model: None,
        env: vec![],
        require_change: true,
        pricing: None,
        wall_time_secs: None,
        git_author: ("Hadron".into(), "hadron@example.com".into()),
        image: None,
        resources: None,
        network: WorkerNetwork::None,
        sandbox: SandboxMode::Preferred,
        max_workspace_bytes: None,
        output: OutputFormat::Report,
        max_tokens: None,
        max_cost_usd: None,
        feedback: None,
        resume_command: None,
        resume_session: None,
        agent_home: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn worker_names_are_deterministic_labels() {
        let i = Installation::default();
        let a = worker_name(&i, "add-greeting", "0011223344556677", "implement", "../demo-app.git", 1);
        assert_eq!(a, worker_name(&i, "add-greeting", "0011223344556677", "implement", "../demo-app.git", 1));
        assert!(a.starts_with("hadron-add-greeting-implement-1-"), "{a}");
        assert!(crate::ids::is_dns_label(&a));
        assert_ne!(a, worker_name(&i, "add-greeting", "0011223344556677", "implement", "../demo-docs.git", 1));
        assert_ne!(a, worker_name(&i, "add-greeting", "ffff223344556677", "implement", "../demo-app.git", 1));
        let long = worker_name(&i, &"r".repeat(63), "g", &"s".repeat(63), "u", 12);
        assert!(long.len() <= 63 && crate::ids::is_dns_label(&long), "{long}");
    }

    #[test]
    fn long_multibyte_names_are_cut_on_a_character_boundary() {
        let name = worker_name(&Installation::default(), &"é".repeat(40), "g", "s", "u", 1);
        assert!(name.len() <= 63, "{name}");
        assert!(name.starts_with("hadron-éé") && name.contains("é-1-"), "{name}");
    }

    #[test]
    fn a_run_spec_written_before_installations_belongs_to_none() {
        let mut json = serde_json::to_value(sample()).expect("json");
        assert_eq!(json["installation"], "default", "the run spec records its installation");
        json.as_object_mut().expect("an object").remove("installation");
        let old: RunSpec = serde_json::from_value(json).expect("an older run spec still parses");
        assert_eq!(old.installation, "", "no driver takes it as its own");
    }
}
