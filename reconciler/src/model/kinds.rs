//! The kinds of a control repo, as serde types.
//!
//! Every file has the Kubernetes shape `apiVersion` / `kind` / `metadata` /
//! `spec` (or `status` for [`RequestStatus`]). Field doc comments become the
//! descriptions of the JSON Schemas in `schemas/`, so they are written for the
//! person editing the YAML.

use std::collections::BTreeMap;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::duration::DurationSpec;

/// The only API version this release reads and writes.
pub const API_VERSION: &str = "hadron.dev/v1alpha1";

/// Standard object metadata, as in Kubernetes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Metadata {
    /// Name of the object: a DNS-1123 label (lower-case letters, digits and
    /// `-`, at most 63 characters, starting and ending with a letter or
    /// digit). It must equal the file name without `.yaml`.
    pub name: String,
    /// Free-form labels, for people and tools. Hadron does not interpret them.
    #[serde(default, skip_serializing_if = "StringMap::is_empty")]
    #[schemars(with = "BTreeMap<String, String>")]
    pub labels: StringMap,
    /// Free-form annotations, for people and tools. Hadron does not interpret them.
    #[serde(default, skip_serializing_if = "StringMap::is_empty")]
    #[schemars(with = "BTreeMap<String, String>")]
    pub annotations: StringMap,
}

/// A map of strings (labels, annotations) kept as one sorted slice: read
/// and written as a YAML mapping, like a `BTreeMap`, but without a B-tree
/// node of about 500 bytes for a single pair (10,000 requests with one
/// label each held 5 MB of nodes).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StringMap(Box<[(String, String)]>);

impl StringMap {
    /// Whether there is no pair.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The value of `key`.
    pub fn get(&self, key: &str) -> Option<&str> {
        self.0.binary_search_by(|(k, _)| k.as_str().cmp(key)).ok().map(|i| self.0[i].1.as_str())
    }

    /// The pairs, sorted by key.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &str)> {
        self.0.iter().map(|(k, v)| (k.as_str(), v.as_str()))
    }
}

impl From<BTreeMap<String, String>> for StringMap {
    fn from(map: BTreeMap<String, String>) -> Self {
        StringMap(map.into_iter().collect())
    }
}

impl Serialize for StringMap {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_map(self.0.iter().map(|(k, v)| (k, v)))
    }
}

impl<'de> Deserialize<'de> for StringMap {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        BTreeMap::<String, String>::deserialize(deserializer).map(StringMap::from)
    }
}

/// `hadron.yaml` at the root of the control repo: defaults for every request,
/// the approver policy and global limits.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[schemars(title = "Settings")]
pub struct Settings {
    /// Always `hadron.dev/v1alpha1`.
    pub api_version: String,
    /// Always `Settings`.
    pub kind: String,
    /// Object metadata.
    pub metadata: Metadata,
    /// What the settings ask for.
    pub spec: SettingsSpec,
}

/// Spec of [`Settings`].
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SettingsSpec {
    /// Defaults applied to every ChangeRequest that does not set the field itself.
    #[serde(default)]
    pub defaults: RequestDefaults,
    /// Who may approve at an `approval` gate. The requester (author of the
    /// commit that added the request) may never approve their own request.
    #[serde(default)]
    pub approvers: ApproverPolicy,
    /// Global limits on concurrent work.
    #[serde(default)]
    pub limits: Limits,
    /// How often to fetch the control repo when no webhook or file-system
    /// event arrives, as a duration such as `60s` or `5m`. Default `60s`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub poll_interval: Option<DurationSpec>,
    /// How workers run their agents.
    #[serde(default)]
    pub workers: WorkerSettings,
}

/// How workers run their agents.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct WorkerSettings {
    /// `preferred` (the default): the local driver confines every agent in
    /// a sandbox where the machine can, and marks the others `unconfined`.
    /// `required`: an agent that cannot be confined does not run, and its
    /// request says why.
    #[serde(default)]
    pub sandbox: SandboxPolicy,
}

/// Whether agents must be confined.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub enum SandboxPolicy {
    /// Confined where the machine can; otherwise run and marked `unconfined`.
    #[default]
    Preferred,
    /// Confined, or not run at all.
    Required,
}

/// Defaults for requests; each field can be overridden per request.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RequestDefaults {
    /// Agent used when a request names none (name of a file in `agents/`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agent: Option<String>,
    /// Stages used when a request lists none.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub stages: Vec<Stage>,
    /// Budget used when a request sets none (fields are merged one by one).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub budget: Option<Budget>,
    /// How many times a failed worker is started in all (first run included)
    /// before the request fails. Default 3.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_attempts: Option<u32>,
}

/// Who may approve requests at `approval` gates.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ApproverPolicy {
    /// User names (as on the forge, or the git committer name locally) allowed to approve.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub users: Vec<String>,
    /// Forge teams allowed to approve, as `org/team`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub teams: Vec<String>,
}

/// Global concurrency limits.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Limits {
    /// Most workers running at once across all requests. Default 4.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_concurrent_workers: Option<u32>,
}

/// An agent: how a worker runs a coding agent in a target repo checkout.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[schemars(title = "Agent")]
pub struct Agent {
    /// Always `hadron.dev/v1alpha1`.
    pub api_version: String,
    /// Always `Agent`.
    pub kind: String,
    /// Object metadata; the name is what requests refer to in `spec.agent`.
    pub metadata: Metadata,
    /// What the agent runs.
    pub spec: AgentSpec,
}

/// Spec of [`Agent`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct AgentSpec {
    /// The command to run, as an argument list (no shell). Each element is a
    /// handlebars template with `{{promptFile}}`, `{{workspace}}`,
    /// `{{request}}`, `{{stage}}`, `{{repo}}` and `{{model}}` available. The
    /// prompt itself never appears on the command line: it is in the file
    /// `{{promptFile}}`, on standard input and in `HADRON_PROMPT_FILE`.
    pub command: Vec<String>,
    /// Container image for the Kubernetes driver. The local driver ignores it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<String>,
    /// Model name passed to the command template as `{{model}}`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model: Option<String>,
    /// Prompt templates per stage name (handlebars), overriding the
    /// templates shipped in `templates/`. Variables: `request`, `title`,
    /// `description`, `stage`, `repo`, `branch`, `previousStages`.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub prompts: BTreeMap<String, String>,
    /// Environment of the agent process. Secrets are references only.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub env: Vec<EnvVar>,
    /// Resources requested for the worker (Kubernetes driver).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<Resources>,
    /// Most workers of this agent running at once. Default: no limit beyond
    /// the global one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub concurrency: Option<u32>,
    /// Token prices used to compute cost when the agent does not report it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pricing: Option<Pricing>,
    /// Whether a stage that changes no file counts as failed. Default true.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub require_change: Option<bool>,
    /// What the agent may reach on the network. Absent or `none`: nothing
    /// (its own loopback only). `allow: ["api.anthropic.com:443"]`: only
    /// these `host:port` pairs (a DNS name, an IPv4 address or a CIDR),
    /// through a proxy locally and a NetworkPolicy on Kubernetes. `host`:
    /// the host's network, unrestricted (the explicit opt-out).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub network: Option<AgentNetwork>,
    /// How the worker reads what the agent spent and said: `report` (the
    /// default: `$HADRON_REPORT_FILE`, else the last JSON object on standard
    /// output), or the output of a known CLI: `claude` (`--output-format
    /// json` or `stream-json`), `codex` (`exec --json`), `opencode` (`run
    /// --format json`), `gemini` (`--output-format json`) or `aider` (its
    /// `Tokens: … Cost: …` lines). See docs/agent-clis.md.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub output: Option<OutputFormat>,
    /// How the agent continues the session of its failed attempt: when a
    /// stage's attempt fails after the CLI printed a session id, the retry
    /// runs `resume.command` (with `{{sessionId}}`) instead of `command`.
    /// Local driver only: there the CLI's home persists across a stage's
    /// attempts; the Kubernetes driver ignores it. See docs/agent-clis.md.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resume: Option<AgentResume>,
}

/// `spec.resume` of an [`Agent`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct AgentResume {
    /// The command that continues a session, used instead of `command` for
    /// a retry: an argument list of handlebars templates with the variables
    /// of `command` and `{{sessionId}}` (the failed attempt's session id),
    /// e.g. `[claude, -p, --resume, "{{sessionId}}", --output-format, json]`.
    pub command: Vec<String>,
}

/// How an agent's output is read (`spec.output`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub enum OutputFormat {
    /// `$HADRON_REPORT_FILE` (`tokensIn`, `tokensOut`, `costUSD`,
    /// `summary`), else the last JSON object on standard output.
    #[default]
    Report,
    /// Claude Code `-p --output-format json` (or `stream-json --verbose`).
    Claude,
    /// Codex CLI `codex exec --json`.
    Codex,
    /// OpenCode `opencode run --format json`.
    Opencode,
    /// Gemini CLI `gemini --output-format json`.
    Gemini,
    /// aider `--message-file … --yes-always`: its `Tokens: … Cost: …` lines.
    Aider,
}

impl OutputFormat {
    /// The word written in the agent file.
    pub fn as_str(self) -> &'static str {
        match self {
            OutputFormat::Report => "report",
            OutputFormat::Claude => "claude",
            OutputFormat::Codex => "codex",
            OutputFormat::Opencode => "opencode",
            OutputFormat::Gemini => "gemini",
            OutputFormat::Aider => "aider",
        }
    }
}

/// What an agent may reach on the network: `none`, `host`, or `allow: [...]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(untagged)]
pub enum AgentNetwork {
    /// `none` (no network) or `host` (the host's network, unrestricted).
    Mode(NetworkMode),
    /// Only the listed `host:port` pairs.
    Allow(NetworkAllow),
}

/// `none` or `host`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub enum NetworkMode {
    /// No network: the agent's own loopback only.
    None,
    /// The host's network, unrestricted: the explicit, visible opt-out.
    Host,
}

/// `allow: [...]`: the only `host:port` pairs the agent may reach.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct NetworkAllow {
    /// `host:port` pairs, e.g. `api.anthropic.com:443`; a host is a DNS
    /// name, an IPv4 address or a CIDR such as `10.0.0.0/8`.
    pub allow: Vec<String>,
}

/// One environment variable: a literal `value` for non-secret settings, or a
/// `secretRef` naming where the secret lives. Exactly one of the two.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct EnvVar {
    /// Variable name, e.g. `ANTHROPIC_API_KEY`.
    pub name: String,
    /// A literal, non-secret value.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value: Option<String>,
    /// Where the secret value comes from; the value never enters the repo.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret_ref: Option<SecretRef>,
}

/// A reference to a secret: a Kubernetes Secret key for the Kubernetes
/// driver, or an environment variable / file of the Hadron process locally.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SecretRef {
    /// Name of the Kubernetes Secret, or of the Hadron process's environment
    /// variable holding the value when running locally.
    pub name: String,
    /// Key inside the Secret. Ignored locally.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
}

/// Resources for a worker, in Kubernetes quantity notation.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Resources {
    /// CPU, e.g. `500m` or `2`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu: Option<String>,
    /// Memory, e.g. `2Gi`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory: Option<String>,
}

/// Token prices in US dollars per million tokens.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Pricing {
    /// Price of one million input tokens, in USD.
    pub input_per_million: f64,
    /// Price of one million output tokens, in USD.
    pub output_per_million: f64,
    /// Price of one million cached input tokens (cache reads), in USD.
    /// Absent: cached tokens are priced as input.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cached_input_per_million: Option<f64>,
}

/// A change request: a task for an agent on one or more target repos.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[schemars(title = "ChangeRequest")]
pub struct ChangeRequest {
    /// Always `hadron.dev/v1alpha1`.
    pub api_version: String,
    /// Always `ChangeRequest`.
    pub kind: String,
    /// Object metadata; the name is used in branch names (`hadron/<name>`).
    pub metadata: Metadata,
    /// What is asked for.
    pub spec: ChangeRequestSpec,
    /// [`ChangeRequest::generation`], computed once: a parsed request is
    /// not changed afterwards (it is shared behind an `Arc`).
    #[serde(skip)]
    #[schemars(skip)]
    pub(crate) generation_cache: GenerationCache,
}

/// A value computed once from the rest of its struct: never serialised,
/// and not part of the struct's equality.
#[derive(Default, Clone)]
pub struct GenerationCache(std::sync::OnceLock<String>);

impl GenerationCache {
    /// The value, computed by `compute` the first time.
    pub fn get_or_init(&self, compute: impl FnOnce() -> String) -> &str {
        self.0.get_or_init(compute)
    }
}

impl PartialEq for GenerationCache {
    fn eq(&self, _: &Self) -> bool {
        true
    }
}

impl std::fmt::Debug for GenerationCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("GenerationCache")
    }
}

impl ChangeRequest {
    /// The agent the request runs: its own, else the settings' default.
    pub fn effective_agent<'a>(&'a self, settings: &'a Settings) -> Option<&'a str> {
        self.spec.agent.as_deref().or(settings.spec.defaults.agent.as_deref())
    }

    /// The stages the request runs: its own, else the settings' defaults.
    pub fn effective_stages<'a>(&'a self, settings: &'a Settings) -> &'a [Stage] {
        if self.spec.stages.is_empty() { &settings.spec.defaults.stages } else { &self.spec.stages }
    }
}

/// Spec of [`ChangeRequest`]. Any change to it is a new generation: running
/// work is cancelled, the pipeline starts again and earlier approvals go stale.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ChangeRequestSpec {
    /// One line saying what to change; used in commit messages and PR titles.
    pub title: String,
    /// The task for the agent, in as much detail as it needs.
    #[serde(default)]
    pub description: String,
    /// Agent to run (name of a file in `agents/`). Default: `defaults.agent` of `hadron.yaml`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agent: Option<String>,
    /// Target repositories; every stage runs one worker per repo.
    pub repos: Vec<TargetRepo>,
    /// The pipeline, in order. Default: `defaults.stages` of `hadron.yaml`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub stages: Vec<Stage>,
    /// Gates that hold the pipeline after a stage until a person or CI says yes.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub gates: Vec<Gate>,
    /// Spending limits; when one is reached no new worker starts and the request fails.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub budget: Option<Budget>,
    /// Higher runs first when workers are scarce. Default 0.
    #[serde(default)]
    pub priority: i32,
    /// When true, running workers are cancelled and none start until it is false again.
    #[serde(default)]
    pub suspend: bool,
}

/// A repository the agent works on.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TargetRepo {
    /// Clone URL: `https://`, `http://`, `ssh://`, `file://`, scp-like
    /// `git@host:owner/repo.git`, or a path relative to the control repo's
    /// own URL such as `../demo-app.git` (resolved as git submodules do).
    pub url: String,
    /// Base branch the work starts from and the final PR targets. Default `main`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub branch: Option<String>,
}

/// One stage of the pipeline.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Stage {
    /// Stage name (DNS-1123 label), unique in the pipeline, e.g. `implement`.
    pub name: String,
    /// Prompt template (handlebars) for this stage, overriding the agent's
    /// and the shipped template.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prompt: Option<String>,
}

/// The kind of a gate.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub enum GateType {
    /// Waits for `approvals/<request>/<gate>.yaml` merged by an allowed approver.
    Approval,
    /// Waits for a successful commit status on the pushed head of every target repo.
    Ci,
}

/// A gate after a stage.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Gate {
    /// Gate name (DNS-1123 label), unique in the request, e.g. `review`.
    pub name: String,
    /// `approval` or `ci`.
    #[serde(rename = "type")]
    pub gate_type: GateType,
    /// Name of the stage after which the gate holds the pipeline.
    pub after: String,
    /// For `ci` gates: the commit status contexts that must succeed. Empty
    /// means the combined status of the commit.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub contexts: Vec<String>,
    /// For `approval` gates: how many times an approver may ask for changes
    /// (an approval with `decision: changes`) before the request stalls.
    /// Default 3. Each revision re-runs the stage named by `after`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_revisions: Option<u32>,
}

/// Revisions an approval gate allows when it does not say (`maxRevisions`).
pub const DEFAULT_MAX_REVISIONS: u32 = 3;

impl Gate {
    /// The revisions this gate allows.
    pub fn max_revisions(&self) -> u32 {
        self.max_revisions.unwrap_or(DEFAULT_MAX_REVISIONS)
    }
}

/// Spending limits. Each limit, when reached, fails the request with reason
/// `BudgetExceeded`.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Budget {
    /// Most US dollars all workers of the request may spend, e.g. `5.0`.
    #[serde(default, rename = "maxCostUSD", skip_serializing_if = "Option::is_none")]
    pub max_cost_usd: Option<f64>,
    /// Most tokens (input plus output) all workers may use.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_tokens: Option<u64>,
    /// Most wall time all workers of the request may run together (per spec
    /// generation), e.g. `30m`; running workers are cancelled when it is reached.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_wall_time: Option<DurationSpec>,
    /// Most bytes one worker's workspace (the target repo's checkout and the
    /// agent's private `/tmp`) may hold, as a quantity such as `512Mi` or
    /// `2Gi`. Default `1Gi`. A stage that writes more fails with
    /// `WorkspaceTooLarge`, naming the biggest files; nothing is pushed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_workspace_size: Option<String>,
}

/// Parses a byte quantity: digits with an optional `Ki`, `Mi`, `Gi`, `Ti`
/// (powers of 1024) or `k`, `M`, `G`, `T` (powers of 1000) suffix.
pub fn parse_quantity(text: &str) -> Option<u64> {
    let text = text.trim();
    let digits = text.find(|c: char| !c.is_ascii_digit()).unwrap_or(text.len());
    let (number, suffix) = text.split_at(digits);
    let number: u64 = number.parse().ok()?;
    let factor: u64 = match suffix {
        "" => 1,
        "Ki" => 1 << 10,
        "Mi" => 1 << 20,
        "Gi" => 1 << 30,
        "Ti" => 1 << 40,
        "k" => 1_000,
        "M" => 1_000_000,
        "G" => 1_000_000_000,
        "T" => 1_000_000_000_000,
        _ => return None,
    };
    number.checked_mul(factor)
}

/// An approval: arrives in `main` by merging the approval PR (or branch)
/// Hadron opened at an `approval` gate. The merge's committer is the approver.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[schemars(title = "Approval")]
pub struct Approval {
    /// Always `hadron.dev/v1alpha1`.
    pub api_version: String,
    /// Always `Approval`.
    pub kind: String,
    /// Object metadata; the name is `<request>-<gate>`.
    pub metadata: Metadata,
    /// What is approved.
    pub spec: ApprovalSpec,
}

/// Spec of [`Approval`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ApprovalSpec {
    /// Name of the ChangeRequest.
    pub request: String,
    /// Name of the gate in that request.
    pub gate: String,
    /// Spec generation the approval was given for. An edit of the request
    /// after approval makes the approval stale.
    pub generation: String,
    /// Summary of the stage results that were approved (written by Hadron).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub summary: String,
    /// Which revision of the work is under review: 0 for the stage's first
    /// result, n after the n-th round of changes (written by Hadron). A
    /// decision on an earlier revision does not count for a later one.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub revision: u32,
    /// `approve` (the default) lets the request go on; `changes` re-runs the
    /// stage before the gate with `feedback` in the agent's prompt.
    #[serde(default, skip_serializing_if = "ApprovalDecision::is_approve")]
    pub decision: ApprovalDecision,
    /// What to change, in Markdown, when `decision` is `changes`: given to
    /// the agent as `{{feedback}}`.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub feedback: String,
}

fn is_zero(n: &u32) -> bool {
    *n == 0
}

/// What an approver decided at a gate.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub enum ApprovalDecision {
    /// Go on.
    #[default]
    Approve,
    /// Re-run the stage before the gate with the feedback.
    Changes,
}

impl ApprovalDecision {
    fn is_approve(&self) -> bool {
        *self == ApprovalDecision::Approve
    }
}

/// Status of a request, written by Hadron to `status/<request>.yaml`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[schemars(title = "RequestStatus")]
pub struct RequestStatus {
    /// Always `hadron.dev/v1alpha1`.
    pub api_version: String,
    /// Always `RequestStatus`.
    pub kind: String,
    /// Object metadata; the name is the request's.
    pub metadata: Metadata,
    /// What Hadron observed.
    pub status: RequestStatusBody,
}

/// Lifecycle phase of a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, JsonSchema)]
pub enum Phase {
    /// Accepted, no worker started yet.
    Pending,
    /// Workers are running a stage.
    Running,
    /// Held at an approval gate.
    WaitingForApproval,
    /// Held at a CI gate.
    WaitingForCI,
    /// Every stage and gate passed.
    Succeeded,
    /// A stage failed after its last attempt, or a budget was exceeded.
    Failed,
    /// Suspended or deleted while work was running.
    Cancelled,
    /// The request file does not parse or validate.
    Invalid,
}

impl Phase {
    /// Whether no further work happens for this generation.
    pub fn is_terminal(self) -> bool {
        matches!(self, Phase::Succeeded | Phase::Failed | Phase::Invalid)
    }

    /// The stable string, as written in status files.
    pub fn as_str(self) -> &'static str {
        match self {
            Phase::Pending => "Pending",
            Phase::Running => "Running",
            Phase::WaitingForApproval => "WaitingForApproval",
            Phase::WaitingForCI => "WaitingForCI",
            Phase::Succeeded => "Succeeded",
            Phase::Failed => "Failed",
            Phase::Cancelled => "Cancelled",
            Phase::Invalid => "Invalid",
        }
    }
}

/// Body of [`RequestStatus`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RequestStatusBody {
    /// Control-repo commit this status was computed from.
    pub observed_revision: String,
    /// Spec generation (hash of the request's spec) this status describes.
    pub observed_generation: String,
    /// Where the request is in its lifecycle.
    pub phase: Phase,
    /// Stage running or last run.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stage: Option<String>,
    /// Results per stage and repo, in pipeline order.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub stages: Vec<StageResult>,
    /// Conditions, as Kubernetes and Flux users know them.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
    /// Sum of the cost of all workers of this generation, in USD.
    #[serde(default, rename = "totalCostUSD")]
    pub total_cost_usd: f64,
    /// Sum of tokens (input plus output) of all workers of this generation.
    #[serde(default)]
    pub total_tokens: u64,
    /// Sum of input tokens of all workers of this generation.
    #[serde(default)]
    pub total_tokens_in: u64,
    /// Sum of output tokens of all workers of this generation.
    #[serde(default)]
    pub total_tokens_out: u64,
    /// Branches and pull requests produced.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub outputs: Vec<Output>,
    /// The latest round of changes an approver asked for, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revision: Option<RevisionStatus>,
    /// One human sentence about the present state.
    #[serde(default)]
    pub message: String,
}

/// A round of changes asked at an approval gate, as the status file shows it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RevisionStatus {
    /// The gate the changes were asked at.
    pub gate: String,
    /// The stage that runs again.
    pub stage: String,
    /// Which revision (1 for the first round of changes).
    pub number: u32,
    /// The most the gate allows (`maxRevisions`).
    pub max: u32,
    /// Who asked.
    pub requested_by: String,
    /// The start of the feedback (the whole of it is in the approval file).
    pub feedback: String,
    /// `Running` while the stage runs for it, `Ready` once its result waits
    /// at the gate, `Exhausted` when changes were asked past `max`.
    pub state: String,
}

/// The result of one worker: one stage on one repo.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct StageResult {
    /// Stage name.
    pub name: String,
    /// Target repo URL as written in the request.
    pub repo: String,
    /// Deterministic worker name.
    pub worker: String,
    /// Attempt number, from 1.
    pub attempt: u32,
    /// `Running`, `Succeeded`, `Failed` or `Cancelled`.
    pub state: String,
    /// Start time (RFC 3339, UTC).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub started_at: Option<String>,
    /// Finish time (RFC 3339, UTC).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub finished_at: Option<String>,
    /// Commit the worker pushed to `hadron/<request>`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pushed_commit: Option<String>,
    /// Cost of this worker in USD.
    #[serde(default, rename = "costUSD")]
    pub cost_usd: f64,
    /// Tokens used by this worker (input plus output).
    #[serde(default)]
    pub tokens: u64,
    /// Input tokens of this worker.
    #[serde(default)]
    pub tokens_in: u64,
    /// Output tokens of this worker.
    #[serde(default)]
    pub tokens_out: u64,
    /// What the agent or Hadron said about the result.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub summary: String,
    /// `true` when the agent ran without the sandbox (the machine could
    /// not make one; see `hadron up`'s first line).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub unconfined: bool,
    /// The agent CLI's session id (Claude's `session_id`, Codex's
    /// `thread_id`, OpenCode's `sessionID`, Gemini's `session_id`), when it
    /// printed one of the accepted shape (letters, digits, `._:-`, at most
    /// 128 characters, not beginning with `-`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub session_id: Option<String>,
}

/// A condition, as in Kubernetes: `Ready`, `Reconciling` or `Stalled`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Condition {
    /// Condition type, e.g. `Ready`.
    #[serde(rename = "type")]
    pub condition_type: String,
    /// `True`, `False` or `Unknown`.
    pub status: String,
    /// Stable CamelCase reason, e.g. `BudgetExceeded`.
    pub reason: String,
    /// Human-readable detail.
    #[serde(default)]
    pub message: String,
    /// When the status last changed (RFC 3339, UTC).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_transition_time: Option<String>,
}

/// Something the request produced.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Output {
    /// Target repo URL.
    pub repo: String,
    /// Branch holding the agent's commits.
    pub branch: String,
    /// Head commit of that branch.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub commit: Option<String>,
    /// Pull request URL, when a forge is configured.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pull_request: Option<String>,
}
