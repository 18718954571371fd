//! The desired state: every valid object of the control repo, assembled
//! from parsed files with the checks across files (an unknown agent, an
//! approval for an unknown request or gate).

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use super::diag::{Code, Diagnostic, Severity};
use super::file::{FileRole, Finding, Object, did_you_mean};
use super::kinds::{API_VERSION, Agent, Approval, ChangeRequest, GateType, Metadata, RequestStatus, Settings};
use super::parse::{ParsedFile, locate_in};

/// The desired state of a control repo: every valid object, and the
/// requests that are invalid with their diagnostics.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct DesiredState {
    /// `hadron.yaml`, or the defaults when it is missing or invalid.
    pub settings: Arc<Settings>,
    /// Valid agents by name.
    pub agents: BTreeMap<String, Arc<Agent>>,
    /// Valid requests by name.
    pub requests: BTreeMap<String, Arc<ChangeRequest>>,
    /// Requests (by file name) that do not parse or validate, with their errors.
    pub invalid_requests: BTreeMap<String, Vec<Diagnostic>>,
    /// Valid approvals by (request, gate).
    pub approvals: BTreeMap<(String, String), Arc<Approval>>,
    /// Status files by request name, as last written.
    pub statuses: BTreeMap<String, Arc<RequestStatus>>,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            api_version: API_VERSION.to_owned(),
            kind: "Settings".to_owned(),
            metadata: Metadata { name: "hadron".to_owned(), labels: Default::default(), annotations: Default::default() },
            spec: Default::default(),
        }
    }
}

/// The result of loading: desired state plus every diagnostic, sorted by
/// path, line and column.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Loaded {
    /// What the repo asks for.
    pub desired: DesiredState,
    /// Every problem found.
    pub diagnostics: Vec<Diagnostic>,
}

impl Loaded {
    /// Number of errors (not warnings).
    pub fn error_count(&self) -> usize {
        self.diagnostics.iter().filter(|d| d.is_error()).count()
    }
}

/// Builds the desired state from parsed files and runs the cross-file checks.
pub(crate) fn assemble(files: &BTreeMap<String, ParsedFile>) -> (Loaded, BTreeSet<String>) {
    let mut loaded = Loaded::default();
    let mut bad_agents = BTreeSet::new();
    let mut settings_file = None;
    // Settings and agents first: requests are checked against them.
    for (path, file) in files {
        match (&file.role, &file.object) {
            (Some(FileRole::Settings), object) => {
                loaded.diagnostics.extend(file.diagnostics.iter().cloned());
                if let Some(Object::Settings(s)) = object {
                    loaded.desired.settings = s.clone();
                }
                settings_file = Some((path.as_str(), file));
            }
            (Some(FileRole::Agent), object) => {
                loaded.diagnostics.extend(file.diagnostics.iter().cloned());
                match object {
                    Some(Object::Agent(a)) => {
                        loaded.desired.agents.insert(a.metadata.name.clone(), a.clone());
                    }
                    _ => {
                        bad_agents.insert(file.stem.clone());
                    }
                }
            }
            (None, _) => loaded.diagnostics.extend(file.diagnostics.iter().cloned()),
            _ => {}
        }
    }
    match settings_file {
        None => loaded.diagnostics.push(Diagnostic {
            severity: Severity::Warning,
            ..Diagnostic::file_error(
                "hadron.yaml",
                Code::MissingSettings,
                "there is no `hadron.yaml`; built-in defaults apply (no default agent, no default stages, no approvers)",
                "copy `hadron.yaml` from example-repo/ and adjust it",
            )
        }),
        Some((path, file)) => {
            if let Some(agent) = loaded.desired.settings.spec.defaults.agent.clone()
                && !loaded.desired.agents.contains_key(&agent)
            {
                let found = unknown_agent("spec.defaults.agent", &agent, &bad_agents, &loaded);
                loaded.diagnostics.extend(locate_in(path, file, vec![found]));
            }
        }
    }
    for (path, file) in files {
        if file.role == Some(FileRole::Request) {
            eval_request(path, file, &mut loaded, &bad_agents);
        }
    }
    for (path, file) in files {
        match file.role {
            Some(FileRole::Approval { .. }) => eval_approval(path, file, &mut loaded),
            Some(FileRole::Status) => eval_status(file, &mut loaded),
            _ => {}
        }
    }
    sort_diagnostics(&mut loaded.diagnostics);
    (loaded, bad_agents)
}

/// Sorts diagnostics by path, line, column and code.
pub(crate) fn sort_diagnostics(diags: &mut [Diagnostic]) {
    diags.sort_by(|a, b| (&a.path, a.line, a.column, a.code).cmp(&(&b.path, b.line, b.column, b.code)));
}

/// Adds one request file to the desired state: valid, or invalid with its errors.
pub(crate) fn eval_request(path: &str, file: &ParsedFile, loaded: &mut Loaded, bad_agents: &BTreeSet<String>) {
    loaded.diagnostics.extend(file.diagnostics.iter().cloned());
    let Some(Object::Request(request)) = &file.object else {
        let errors: Vec<Diagnostic> = file.diagnostics.iter().filter(|d| d.is_error()).cloned().collect();
        loaded.desired.invalid_requests.insert(file.stem.clone(), errors);
        return;
    };
    let settings = loaded.desired.settings.clone();
    let mut findings = Vec::new();
    match request.effective_agent(&settings) {
        None => findings.push(Finding::error(
            "spec",
            Code::NoAgent,
            "the request names no agent and `hadron.yaml` has no `defaults.agent`",
            "add `agent: <name>` to the spec, or set `spec.defaults.agent` in hadron.yaml",
        )),
        Some(agent) if !loaded.desired.agents.contains_key(agent) => {
            let field = if request.spec.agent.is_some() { "spec.agent" } else { "spec" };
            findings.push(unknown_agent(field, agent, bad_agents, loaded));
        }
        Some(_) => {}
    }
    let stages = request.effective_stages(&settings);
    if stages.is_empty() {
        findings.push(Finding::error(
            "spec",
            Code::NoStages,
            "the request has no stages and `hadron.yaml` has no `defaults.stages`",
            "add `stages: [{name: implement}]` to the spec, or default stages to hadron.yaml",
        ));
    }
    for (i, gate) in request.spec.gates.iter().enumerate() {
        if !stages.iter().any(|s| s.name == gate.after) {
            let names: Vec<&str> = stages.iter().map(|s| s.name.as_str()).collect();
            let help = match did_you_mean(&gate.after, &names) {
                Some(best) => format!("did you mean `{best}`? (stages: {})", names.join(", ")),
                None => format!("name one of the stages: {}", names.join(", ")),
            };
            findings.push(Finding::error(
                &format!("spec.gates[{i}].after"),
                Code::UnknownStage,
                format!("gate `{}` comes after stage `{}`, which the pipeline does not have", gate.name, gate.after),
                help,
            ));
        }
    }
    let name = request.metadata.name.clone();
    if findings.is_empty() {
        loaded.desired.requests.insert(name, request.clone());
    } else {
        let located = locate_in(path, file, findings);
        let errors: Vec<Diagnostic> = located.iter().filter(|d| d.is_error()).cloned().collect();
        loaded.diagnostics.extend(located);
        loaded.desired.invalid_requests.insert(name, errors);
    }
}

/// Adds one approval file: valid when its request and gate exist.
pub(crate) fn eval_approval(path: &str, file: &ParsedFile, loaded: &mut Loaded) {
    loaded.diagnostics.extend(file.diagnostics.iter().cloned());
    let Some(Object::Approval(approval)) = &file.object else { return };
    let spec = &approval.spec;
    let finding = if spec.decision == super::kinds::ApprovalDecision::Changes && spec.feedback.trim().is_empty() {
        Some(Finding::error(
            "spec.feedback",
            Code::MissingField,
            "`decision: changes` needs `feedback`: the agent is told what to change, and nothing would be".to_owned(),
            "add `feedback:` under spec with what to change (Markdown), or remove `decision: changes` to approve",
        ))
    } else if let Some(request) = loaded.desired.requests.get(&spec.request) {
        match request.spec.gates.iter().find(|g| g.name == spec.gate) {
            Some(g) if g.gate_type == GateType::Approval => None,
            Some(_) => Some(Finding::error(
                "spec.gate",
                Code::UnknownGate,
                format!("gate `{}` of request `{}` is a `ci` gate; it is passed by CI, not approved", spec.gate, spec.request),
                "delete this approval",
            )),
            None => {
                let names: Vec<&str> = request.spec.gates.iter().map(|g| g.name.as_str()).collect();
                Some(Finding::error(
                    "spec.gate",
                    Code::UnknownGate,
                    format!("request `{}` has no gate `{}`", spec.request, spec.gate),
                    match did_you_mean(&spec.gate, &names) {
                        Some(best) => format!("did you mean `{best}`?"),
                        None => format!("its gates: {}", if names.is_empty() { "none".to_owned() } else { names.join(", ") }),
                    },
                ))
            }
        }
    } else if loaded.desired.invalid_requests.contains_key(&spec.request) {
        None
    } else {
        Some(Finding::error(
            "spec.request",
            Code::UnknownRequest,
            format!("there is no request `{}`", spec.request),
            format!("add `requests/{}.yaml`, or delete this approval", spec.request),
        ))
    };
    match finding {
        Some(f) => loaded.diagnostics.extend(locate_in(path, file, vec![f])),
        None => {
            loaded.desired.approvals.insert((spec.request.clone(), spec.gate.clone()), approval.clone());
        }
    }
}

/// Adds one status file.
pub(crate) fn eval_status(file: &ParsedFile, loaded: &mut Loaded) {
    loaded.diagnostics.extend(file.diagnostics.iter().cloned());
    if let Some(Object::Status(s)) = &file.object {
        loaded.desired.statuses.insert(s.metadata.name.clone(), s.clone());
    }
}

fn unknown_agent(field: &str, agent: &str, bad_agents: &BTreeSet<String>, loaded: &Loaded) -> Finding {
    if bad_agents.contains(agent) {
        return Finding::error(
            field,
            Code::UnknownAgent,
            format!("agent `{agent}` has errors in `agents/{agent}.yaml`"),
            format!("fix `agents/{agent}.yaml` (see its own diagnostics)"),
        );
    }
    let names: Vec<&str> = loaded.desired.agents.keys().map(String::as_str).collect();
    let help = match did_you_mean(agent, &names) {
        Some(best) => format!("did you mean `{best}`?"),
        None if names.is_empty() => format!("add `agents/{agent}.yaml`"),
        None => format!("add `agents/{agent}.yaml`, or use one of: {}", names.join(", ")),
    };
    Finding::error(field, Code::UnknownAgent, format!("there is no agent `{agent}`"), help)
}
