//! Semantic checks: per object (names, budgets, URLs, secrets, templates,
//! stage/gate consistency) and across files (unknown agent, unknown request
//! or gate). Pure functions over parsed objects.

use std::collections::{BTreeMap, BTreeSet};

use super::diag::{Code, Diagnostic, Severity};
use super::kinds::{AgentSpec, Approval, Budget, ChangeRequest, EnvVar, GateType, Metadata, RequestStatus, Settings, Stage};
use super::load::{self, FileRole, Loaded, Object, ParsedFile};
use super::spans::FieldPath;
use super::template_vars;
pub use crate::ids::{is_branch_name, is_dns_label};

/// A problem found in a parsed object, located by field path; the loader
/// turns it into a [`Diagnostic`] with line and column.
#[derive(Debug, Clone)]
pub struct Finding {
    /// Offending field.
    pub field: FieldPath,
    /// Stable code.
    pub code: Code,
    /// Error or warning.
    pub severity: Severity,
    /// What is wrong.
    pub message: String,
    /// How to fix it.
    pub help: String,
}

impl Finding {
    /// An error at `field` (dotted path).
    pub fn error(field: &str, code: Code, message: impl Into<String>, help: impl Into<String>) -> Self {
        Finding { field: load::field(field), code, severity: Severity::Error, message: message.into(), help: help.into() }
    }

    /// A warning at `field` (dotted path).
    pub fn warning(field: &str, code: Code, message: impl Into<String>, help: impl Into<String>) -> Self {
        Finding { severity: Severity::Warning, ..Finding::error(field, code, message, help) }
    }
}

fn check_label(out: &mut Vec<Finding>, field: &str, what: &str, name: &str) {
    if !is_dns_label(name) {
        let suggestion: String = name
            .to_ascii_lowercase()
            .chars()
            .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
            .collect::<String>()
            .trim_matches('-')
            .to_owned();
        let help = if is_dns_label(&suggestion) {
            format!("use lower-case letters, digits and `-` only (at most 63), e.g. `{suggestion}`")
        } else {
            "use lower-case letters, digits and `-` only, at most 63 characters, starting and ending with a letter or digit".to_owned()
        };
        out.push(Finding::error(field, Code::InvalidName, format!("{what} `{name}` is not a DNS-1123 label"), help));
    }
}

/// Checks that only need the object itself and where it sits.
pub fn check_object(object: &Object, role: &FileRole, stem: &str) -> Vec<Finding> {
    let mut out = Vec::new();
    let (api, kind, meta) = match object {
        Object::Settings(o) => (&o.api_version, &o.kind, &o.metadata),
        Object::Agent(o) => (&o.api_version, &o.kind, &o.metadata),
        Object::Request(o) => (&o.api_version, &o.kind, &o.metadata),
        Object::Approval(o) => (&o.api_version, &o.kind, &o.metadata),
        Object::Status(o) => (&o.api_version, &o.kind, &o.metadata),
    };
    out.extend(load::header_findings(Some(api), Some(kind), role));
    check_metadata(&mut out, meta, role, stem);
    match object {
        Object::Settings(s) => check_settings(&mut out, s),
        Object::Agent(a) => check_agent(&mut out, &a.spec),
        Object::Request(r) => check_request(&mut out, r),
        Object::Approval(a) => check_approval(&mut out, a, role, stem),
        Object::Status(s) => check_status(&mut out, s),
    }
    out
}

fn check_metadata(out: &mut Vec<Finding>, meta: &Metadata, role: &FileRole, stem: &str) {
    check_label(out, "metadata.name", "the name", &meta.name);
    let expected = match role {
        FileRole::Settings => return,
        FileRole::Approval { request } => format!("{request}-{stem}"),
        _ => stem.to_owned(),
    };
    if is_dns_label(&meta.name) && meta.name != expected {
        let help = match role {
            FileRole::Approval { .. } => format!("set `name: {expected}` (`<request>-<gate>` from the file's path)"),
            _ => format!("set `name: {expected}`, or rename the file to `{}.yaml`", meta.name),
        };
        out.push(Finding::error(
            "metadata.name",
            Code::NameMismatch,
            format!("`metadata.name: {}` does not match the file name `{stem}.yaml`", meta.name),
            help,
        ));
    }
}

fn check_settings(out: &mut Vec<Finding>, s: &Settings) {
    let d = &s.spec.defaults;
    if let Some(agent) = &d.agent {
        check_label(out, "spec.defaults.agent", "the agent name", agent);
    }
    check_stages(out, "spec.defaults.stages", &d.stages);
    if let Some(b) = &d.budget {
        check_budget(out, "spec.defaults.budget", b);
    }
    if d.max_attempts == Some(0) {
        out.push(Finding::error(
            "spec.defaults.maxAttempts",
            Code::NonPositiveValue,
            "`maxAttempts: 0` would never run a worker",
            "set it to 1 or more (1 means no retry)",
        ));
    }
    if s.spec.limits.max_concurrent_workers == Some(0) {
        out.push(Finding::error(
            "spec.limits.maxConcurrentWorkers",
            Code::NonPositiveValue,
            "`maxConcurrentWorkers: 0` would never run a worker",
            "set it to 1 or more, or remove it for the default (4)",
        ));
    }
    if let Some(p) = &s.spec.poll_interval
        && p.as_duration().is_zero()
    {
        out.push(Finding::error(
            "spec.pollInterval",
            Code::NonPositiveValue,
            "a zero poll interval would fetch in a busy loop",
            "set a duration such as `60s`",
        ));
    }
    for (i, team) in s.spec.approvers.teams.iter().enumerate() {
        let parts: Vec<&str> = team.split('/').collect();
        if parts.len() != 2 || parts.iter().any(|p| p.is_empty()) {
            out.push(Finding::error(
                &format!("spec.approvers.teams[{i}]"),
                Code::WrongType,
                format!("team `{team}` is not of the form `org/team`"),
                "write the organisation and the team, e.g. `acme/maintainers`",
            ));
        }
    }
}

fn check_stages(out: &mut Vec<Finding>, field: &str, stages: &[Stage]) {
    let mut seen = BTreeSet::new();
    for (i, stage) in stages.iter().enumerate() {
        check_label(out, &format!("{field}[{i}].name"), "the stage name", &stage.name);
        if !seen.insert(stage.name.as_str()) {
            out.push(Finding::error(
                &format!("{field}[{i}].name"),
                Code::DuplicateStage,
                format!("stage `{}` is listed twice", stage.name),
                "give every stage its own name",
            ));
        }
        if let Some(prompt) = &stage.prompt {
            check_template(out, &format!("{field}[{i}].prompt"), prompt, TemplateUse::Prompt);
        }
    }
}

/// What a template is for: which variables it gets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum TemplateUse {
    /// An element of an agent's `spec.command`.
    Command,
    /// A prompt: an agent's `spec.prompts.*` or a stage's `prompt`.
    Prompt,
}

impl TemplateUse {
    fn variables(self) -> &'static [&'static str] {
        match self {
            TemplateUse::Command => template_vars::COMMAND_VARIABLES,
            TemplateUse::Prompt => template_vars::PROMPT_VARIABLES,
        }
    }
}

fn check_template(out: &mut Vec<Finding>, field: &str, text: &str, used_as: TemplateUse) {
    let template = match handlebars::Template::compile(text) {
        Ok(template) => template,
        Err(e) => {
            let (line, col) = e.pos().unwrap_or((1, 1));
            out.push(Finding::error(
                field,
                Code::InvalidTemplate,
                format!(
                    "the handlebars template does not compile (template line {line}, column {col}): {}",
                    e.reason().to_string().split(": expected").next().unwrap_or_default()
                ),
                "fix the `{{ }}` expressions (every `{{#if}}`/`{{#each}}` needs its `{{/if}}`/`{{/each}}`)",
            ));
            return;
        }
    };
    out.extend(template_findings(field, &template, used_as));
}

/// Errors for the variables and helpers a compiled template uses that the
/// worker does not provide.
fn template_findings(field: &str, template: &handlebars::Template, used_as: TemplateUse) -> Vec<Finding> {
    let allowed = used_as.variables();
    let listed = allowed.iter().map(|v| format!("{{{{{v}}}}}")).collect::<Vec<_>>().join(", ");
    template_vars::references(template)
        .into_iter()
        .filter_map(|r| match r {
            template_vars::Reference::Variable(name) if !allowed.contains(&name.as_str()) => {
                let help = match load::did_you_mean(&name, allowed) {
                    Some(best) => format!("did you mean `{{{{{best}}}}}`? (variables here: {listed})"),
                    None => format!("use one of the variables here: {listed}"),
                };
                Some(Finding::error(
                    field,
                    Code::UnknownTemplateVariable,
                    format!("unknown template variable `{name}` in `{field}`; it would not render"),
                    help,
                ))
            }
            template_vars::Reference::Helper(name) => Some(Finding::error(
                field,
                Code::UnknownTemplateVariable,
                format!("unknown template helper `{name}` in `{field}`; it would not render"),
                format!("use a built-in helper ({}) or one of the variables here: {listed}", template_vars::BUILTIN_HELPERS.join(", ")),
            )),
            template_vars::Reference::Variable(_) => None,
        })
        .collect()
}

fn check_budget(out: &mut Vec<Finding>, field: &str, b: &Budget) {
    let bad = |out: &mut Vec<Finding>, key: &str, what: String| {
        out.push(Finding::error(
            &format!("{field}.{key}"),
            Code::NonPositiveBudget,
            what,
            format!("set `{key}` to a positive value, or remove it for no limit"),
        ));
    };
    if let Some(c) = b.max_cost_usd
        && !(c.is_finite() && c > 0.0)
    {
        bad(out, "maxCostUSD", format!("`maxCostUSD: {c}` is not a positive amount"));
    }
    if b.max_tokens == Some(0) {
        bad(out, "maxTokens", "`maxTokens: 0` allows no work at all".to_owned());
    }
    if let Some(t) = &b.max_wall_time
        && t.as_duration().is_zero()
    {
        bad(out, "maxWallTime", format!("`maxWallTime: {t}` allows no work at all"));
    }
}

/// Names that say "this is a secret" when they carry a literal value.
const SECRET_NAME_WORDS: [&str; 7] = ["KEY", "TOKEN", "SECRET", "PASSWORD", "PASSWD", "CREDENTIAL", "PRIVATE"];

/// Prefixes of well-known credential formats.
const SECRET_VALUE_PREFIXES: [&str; 9] = ["sk-", "ghp_", "gho_", "ghs_", "github_pat_", "glpat-", "xoxb-", "xoxp-", "AKIA"];

/// Whether a literal looks like a credential.
pub fn looks_like_secret_value(value: &str) -> bool {
    SECRET_VALUE_PREFIXES.iter().any(|p| value.starts_with(p) && value.len() >= p.len() + 12) || value.contains("-----BEGIN")
}

fn check_agent(out: &mut Vec<Finding>, spec: &AgentSpec) {
    if spec.command.is_empty() || spec.command[0].trim().is_empty() {
        out.push(Finding::error(
            "spec.command",
            Code::EmptyCommand,
            "the agent has no command to run",
            "list the program and its arguments, e.g. `command: [sh, scripts/agent.sh, \"{{promptFile}}\"]`",
        ));
    }
    for (i, arg) in spec.command.iter().enumerate() {
        check_template(out, &format!("spec.command[{i}]"), arg, TemplateUse::Command);
        if looks_like_secret_value(arg) {
            out.push(Finding::error(
                &format!("spec.command[{i}]"),
                Code::InlineSecret,
                "this argument looks like a credential written into the repo",
                "remove it; pass the secret through `env` with a `secretRef`, and rotate the exposed credential",
            ));
        }
    }
    for (stage, text) in &spec.prompts {
        check_template(out, &format!("spec.prompts.{stage}"), text, TemplateUse::Prompt);
    }
    let mut names = BTreeSet::new();
    for (i, var) in spec.env.iter().enumerate() {
        check_env(out, i, var);
        if !names.insert(var.name.as_str()) {
            out.push(Finding::error(
                &format!("spec.env[{i}].name"),
                Code::DuplicateName,
                format!("environment variable `{}` is set twice", var.name),
                "keep one entry per variable",
            ));
        }
    }
    if spec.concurrency == Some(0) {
        out.push(Finding::error(
            "spec.concurrency",
            Code::NonPositiveValue,
            "`concurrency: 0` would never run this agent",
            "set it to 1 or more, or remove it",
        ));
    }
    if let Some(p) = &spec.pricing {
        for (key, v) in [("inputPerMillion", p.input_per_million), ("outputPerMillion", p.output_per_million)] {
            if !(v.is_finite() && v >= 0.0) {
                out.push(Finding::error(
                    &format!("spec.pricing.{key}"),
                    Code::NonPositiveValue,
                    format!("price `{v}` is not a non-negative amount"),
                    "write the price in USD per million tokens, e.g. `3.0`",
                ));
            }
        }
    }
}

fn check_env(out: &mut Vec<Finding>, i: usize, var: &EnvVar) {
    let field = format!("spec.env[{i}]");
    let valid_name = !var.name.is_empty()
        && !var.name.starts_with(|c: char| c.is_ascii_digit())
        && var.name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
    if !valid_name {
        out.push(Finding::error(
            &format!("{field}.name"),
            Code::InvalidName,
            format!("`{}` is not an environment variable name", var.name),
            "use letters, digits and `_`, not starting with a digit",
        ));
    }
    match (&var.value, &var.secret_ref) {
        (Some(_), Some(_)) => out.push(Finding::error(
            &format!("{field}.value"),
            Code::FieldNotAllowed,
            "both `value` and `secretRef` are set",
            "keep one: `secretRef` for secrets, `value` for plain settings",
        )),
        (None, None) => out.push(Finding::error(
            &field,
            Code::MissingField,
            format!("`{}` has neither `value` nor `secretRef`", var.name),
            "add `secretRef: {name: <secret>, key: <key>}` or a plain `value`",
        )),
        (Some(value), None) => {
            let upper = var.name.to_ascii_uppercase();
            let secret_name = SECRET_NAME_WORDS.iter().any(|w| upper.contains(w));
            if (secret_name && !value.is_empty()) || looks_like_secret_value(value) {
                out.push(Finding::error(
                    &format!("{field}.value"),
                    Code::InlineSecret,
                    format!("`{}` carries a secret value inline", var.name),
                    format!(
                        "replace `value:` with `secretRef: {{name: <secret>, key: <key>}}` and rotate the exposed value; locally, `name` is the environment variable of the Hadron process that holds it (e.g. `{}`)",
                        var.name
                    ),
                ));
            }
        }
        (None, Some(r)) => {
            if r.name.is_empty() {
                out.push(Finding::error(
                    &format!("{field}.secretRef.name"),
                    Code::MissingField,
                    "the secret reference has an empty name",
                    "name the Kubernetes Secret (or, locally, the environment variable) holding the value",
                ));
            }
        }
    }
}

/// Whether a URL carries credentials: any user part of an `http(s)://` URL
/// (tokens travel as the user name), or a `user:password@` of any scheme.
pub fn url_has_credentials(url: &str) -> bool {
    let Some((scheme, rest)) = url.split_once("://") else { return false };
    let authority = rest.split(['/', '?', '#']).next().unwrap_or("");
    let Some((userinfo, _host)) = authority.rsplit_once('@') else { return false };
    matches!(scheme, "http" | "https") || userinfo.contains(':')
}

/// Why a target-repo URL is refused, if it is.
pub fn repo_url_problem(url: &str) -> Option<&'static str> {
    if url.trim().is_empty() {
        return Some("it is empty");
    }
    if url.contains("::") && !url.contains("://") {
        return Some("`<transport>::` remote helpers are refused: they can run commands");
    }
    if url.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Some("it contains white space or control characters");
    }
    if url.starts_with('-') {
        return Some("it starts with `-` and would be read as a git option");
    }
    if let Some((scheme, rest)) = url.split_once("://") {
        return match scheme {
            "https" | "http" | "ssh" | "git" => {
                let host = rest.split(['/', '?', '#']).next().unwrap_or("");
                let host = host.rsplit('@').next().unwrap_or("");
                if host.is_empty() || host.starts_with(':') {
                    Some("it has no host")
                } else if rest.len() <= host.len() + 1 + rest.find(host).unwrap_or(0) {
                    Some("it names no repository path")
                } else {
                    None
                }
            }
            "file" => (rest.is_empty() || rest == "/").then_some("it names no path"),
            _ => Some("the scheme is not one git clones from here (https, http, ssh, git, file)"),
        };
    }
    if url.starts_with("./") || url.starts_with("../") || url.starts_with('/') {
        return None;
    }
    // scp-like: [user@]host:path
    if let Some((host, path)) = url.split_once(':')
        && !host.is_empty()
        && !host.contains('/')
        && !path.is_empty()
    {
        return None;
    }
    Some("it is neither a URL, an scp-like `git@host:path`, nor a `./` or `../` relative path")
}

fn check_request(out: &mut Vec<Finding>, r: &ChangeRequest) {
    let s = &r.spec;
    if s.title.trim().is_empty() {
        out.push(Finding::error(
            "spec.title",
            Code::MissingField,
            "the title is empty",
            "say in one line what to change; it becomes the commit and PR title",
        ));
    }
    if let Some(agent) = &s.agent {
        check_label(out, "spec.agent", "the agent name", agent);
    }
    if s.repos.is_empty() {
        out.push(Finding::error(
            "spec.repos",
            Code::NoRepos,
            "the request lists no target repo",
            "add `- url: <clone URL>` under `repos:`",
        ));
    }
    let mut urls = BTreeSet::new();
    for (i, repo) in s.repos.iter().enumerate() {
        if url_has_credentials(&repo.url) {
            out.push(Finding::error(
                &format!("spec.repos[{i}].url"),
                Code::InlineSecret,
                format!("`{}` carries credentials in the URL (shown here with them masked)", crate::redact::url_credentials(&repo.url)),
                "remove the user and password (or token) from the URL: Hadron authenticates with its own credentials, configured outside the repo; rotate the exposed credential",
            ));
        } else if let Some(why) = repo_url_problem(&repo.url) {
            out.push(Finding::error(
                &format!("spec.repos[{i}].url"),
                Code::InvalidRepoUrl,
                format!("`{}` is not a repo URL: {why}", repo.url),
                "write a clone URL such as `https://gitea.example.com/acme/app.git`, `git@host:acme/app.git` or `../app.git` (relative to the control repo)",
            ));
        } else if !urls.insert(repo.url.as_str()) {
            out.push(Finding::error(
                &format!("spec.repos[{i}].url"),
                Code::DuplicateName,
                format!("repo `{}` is listed twice", repo.url),
                "list each target repo once",
            ));
        }
        if let Some(branch) = &repo.branch
            && !is_branch_name(branch)
        {
            out.push(Finding::error(
                &format!("spec.repos[{i}].branch"),
                Code::WrongType,
                format!("`{branch}` is not a valid branch name"),
                "write a branch name git accepts, e.g. `main`",
            ));
        }
    }
    check_stages(out, "spec.stages", &s.stages);
    let mut gates = BTreeSet::new();
    for (i, gate) in s.gates.iter().enumerate() {
        check_label(out, &format!("spec.gates[{i}].name"), "the gate name", &gate.name);
        if !gates.insert(gate.name.as_str()) {
            out.push(Finding::error(
                &format!("spec.gates[{i}].name"),
                Code::DuplicateStage,
                format!("gate `{}` is listed twice", gate.name),
                "give every gate its own name",
            ));
        }
        if gate.gate_type == GateType::Approval && !gate.contexts.is_empty() {
            out.push(Finding::error(
                &format!("spec.gates[{i}].contexts"),
                Code::FieldNotAllowed,
                "`contexts` only applies to `type: ci` gates",
                "remove `contexts`, or set `type: ci`",
            ));
        }
    }
    if let Some(b) = &s.budget {
        check_budget(out, "spec.budget", b);
    }
}

fn check_approval(out: &mut Vec<Finding>, a: &Approval, role: &FileRole, stem: &str) {
    if let FileRole::Approval { request } = role
        && (&a.spec.request != request || a.spec.gate != stem)
    {
        out.push(Finding::error(
            "spec",
            Code::InvalidPath,
            format!("the approval is for `{}/{}` but sits at `approvals/{request}/{stem}.yaml`", a.spec.request, a.spec.gate),
            format!("move it to `approvals/{}/{}.yaml`", a.spec.request, a.spec.gate),
        ));
    }
    if a.spec.generation.trim().is_empty() {
        out.push(Finding::error(
            "spec.generation",
            Code::MissingField,
            "the approval names no spec generation",
            "approve through the branch Hadron opened: it carries the generation being approved",
        ));
    }
}

fn check_status(out: &mut Vec<Finding>, s: &RequestStatus) {
    if s.status.observed_generation.is_empty() {
        out.push(Finding::warning(
            "status.observedGeneration",
            Code::MissingField,
            "the status names no generation",
            "status files are written by Hadron; revert manual edits",
        ));
    }
}

/// Whether `commit` is a full git object id as Hadron writes it: 40 lower-case hex digits.
pub fn is_commit_id(commit: &str) -> bool {
    commit.len() == 40 && commit.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// Removes the entries of a status file that Hadron cannot have written, with
/// a warning for each: status files live in git and can be edited by hand,
/// and the planner adopts their entries as finished work. An entry is kept
/// only when its worker name is the one Hadron derives from the request, the
/// generation, the stage, the repo and the attempt, its pushed commit (if
/// any) is 40 lower-case hex digits, and its tokens and cost are within the
/// bounds a worker's report is held to.
pub fn sanitize_status(s: &mut RequestStatus) -> Vec<Finding> {
    use crate::attempt::{MAX_TOTAL_TOKENS_PER_ATTEMPT, cost_is_sane};
    let mut out = Vec::new();
    let request = s.metadata.name.clone();
    let generation = s.status.observed_generation.clone();
    let mut index = 0;
    s.status.stages.retain(|e| {
        let field = |f: &str| format!("status.stages[{index}].{f}");
        let expected = crate::ids::worker_name(&request, &generation, &e.name, &e.repo, e.attempt);
        let problem = if e.attempt == 0 {
            Some((field("attempt"), "attempt 0 does not exist: attempts count from 1".to_owned()))
        } else if e.worker != expected {
            Some((
                field("worker"),
                format!("worker `{}` is not the name Hadron gives this stage, repo and attempt", e.worker.escape_debug()),
            ))
        } else if let Some(c) = e.pushed_commit.as_deref().filter(|c| !is_commit_id(c)) {
            Some((field("pushedCommit"), format!("pushedCommit `{}` is not a commit id (40 lower-case hex digits)", c.escape_debug())))
        } else if e.tokens > MAX_TOTAL_TOKENS_PER_ATTEMPT {
            Some((field("tokens"), format!("{} tokens is more than one attempt may use ({MAX_TOTAL_TOKENS_PER_ATTEMPT})", e.tokens)))
        } else if !cost_is_sane(e.cost_usd) {
            Some((field("costUSD"), format!("a cost of {} USD is not one an attempt may report", e.cost_usd)))
        } else {
            None
        };
        index += 1;
        match problem {
            Some((field, message)) => {
                out.push(Finding::warning(
                    &field,
                    Code::InvalidStatusEntry,
                    format!("{message}; the entry is ignored"),
                    "status files are written by Hadron; revert manual edits",
                ));
                false
            }
            None => true,
        }
    });
    out
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
                loaded.diagnostics.extend(load::locate_in(path, file, vec![found]));
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
            let help = match load::did_you_mean(&gate.after, &names) {
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
        let located = load::locate_in(path, file, findings);
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
    let finding = if let Some(request) = loaded.desired.requests.get(&spec.request) {
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
                    match load::did_you_mean(&spec.gate, &names) {
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
        Some(f) => loaded.diagnostics.extend(load::locate_in(path, file, vec![f])),
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
    let help = match load::did_you_mean(agent, &names) {
        Some(best) => format!("did you mean `{best}`?"),
        None if names.is_empty() => format!("add `agents/{agent}.yaml`"),
        None => format!("add `agents/{agent}.yaml`, or use one of: {}", names.join(", ")),
    };
    Finding::error(field, Code::UnknownAgent, format!("there is no agent `{agent}`"), help)
}

#[cfg(test)]
mod tests {
    use super::super::{Catalog, Code, Diagnostic};

    const AGENT: &str = "apiVersion: hadron.dev/v1alpha1\nkind: Agent\nmetadata:\n  name: a\nspec:\n";

    fn agent_errors(spec: &str) -> Vec<Diagnostic> {
        let text = format!("{AGENT}{spec}");
        let loaded = Catalog::load([("agents/a.yaml", text.as_bytes())]);
        loaded.diagnostics.into_iter().filter(Diagnostic::is_error).collect()
    }

    #[test]
    fn a_misspelt_command_variable_is_an_error_with_a_suggestion() {
        let errors = agent_errors("  command: [sh, run.sh, \"{{promptFil}}\"]\n");
        assert_eq!(errors.len(), 1, "{errors:?}");
        let e = &errors[0];
        assert_eq!(e.code, Code::UnknownTemplateVariable);
        assert_eq!(e.code.as_str(), "UnknownTemplateVariable");
        assert_eq!(e.field.as_deref(), Some("spec.command[2]"));
        assert!(e.message.contains("`promptFil`") && e.message.contains("`spec.command[2]`"), "{}", e.message);
        assert!(e.help.starts_with("did you mean `{{promptFile}}`?"), "{}", e.help);
        for v in super::template_vars::COMMAND_VARIABLES {
            assert!(e.help.contains(&format!("{{{{{v}}}}}")), "the help lists {v}: {}", e.help);
        }
        assert_eq!((e.line, e.column), (6, 25), "located at the element");
    }

    #[test]
    fn prompt_variables_are_not_command_variables() {
        // `title` is a prompt variable, not a command one; `promptFile` the reverse.
        let errors = agent_errors("  command: [run, \"{{title}}\"]\n  prompts:\n    review: \"{{promptFile}} {{title}} {{zzz}}\"\n");
        let got: Vec<(&str, &str)> = errors.iter().map(|e| (e.field.as_deref().unwrap_or(""), e.message.as_str())).collect();
        assert_eq!(got.len(), 3, "{got:?}");
        assert!(got[0].0 == "spec.command[1]" && got[0].1.contains("`title`"), "{got:?}");
        assert!(got.iter().any(|(f, m)| *f == "spec.prompts.review" && m.contains("`promptFile`")), "{got:?}");
        assert!(got.iter().any(|(f, m)| *f == "spec.prompts.review" && m.contains("`zzz`")), "{got:?}");
        let zzz = errors.iter().find(|e| e.message.contains("`zzz`")).expect("zzz reported");
        assert!(zzz.help.starts_with("use one of the variables here: {{request}}, {{title}}"), "{}", zzz.help);
    }

    #[test]
    fn an_unknown_stage_prompt_variable_is_an_error() {
        let request = "apiVersion: hadron.dev/v1alpha1\nkind: ChangeRequest\nmetadata:\n  name: fix\nspec:\n  title: Fix\n  agent: a\n  repos: [{url: ../app.git}]\n  stages:\n    - name: implement\n      prompt: \"Do {{titel}} on {{branch}}\"\n";
        let agent = format!("{AGENT}  command: [run]\n");
        let loaded = Catalog::load([("requests/fix.yaml", request.as_bytes()), ("agents/a.yaml", agent.as_bytes())]);
        let errors: Vec<&Diagnostic> = loaded.diagnostics.iter().filter(|d| d.is_error()).collect();
        assert_eq!(errors.len(), 1, "{errors:?}");
        assert_eq!(errors[0].code, Code::UnknownTemplateVariable);
        assert_eq!(errors[0].field.as_deref(), Some("spec.stages[0].prompt"));
        assert!(errors[0].help.starts_with("did you mean `{{title}}`?"), "{}", errors[0].help);
        assert!(loaded.desired.invalid_requests.contains_key("fix"), "a request with a broken prompt is not run");
    }

    #[test]
    fn each_block_item_fields_and_locals_are_not_flagged() {
        let prompt =
            "{{#each previousStages}}{{@index}}: {{this.name}} {{name}} {{summary}} {{repo}} {{@root.title}} {{../branch}}{{/each}}";
        let errors = agent_errors(&format!("  command: [run]\n  prompts:\n    review: \"{prompt}\"\n"));
        assert_eq!(errors, Vec::<Diagnostic>::new());
        let errors =
            agent_errors("  command: [run]\n  prompts:\n    review: \"{{#each previousStages}}{{@root.titel}}{{../brnch}}{{/each}}\"\n");
        let names: Vec<&str> = errors.iter().map(|e| e.message.as_str()).collect();
        assert_eq!(errors.len(), 2, "{names:?}");
        assert!(names[0].contains("`titel`") && names[1].contains("`brnch`"), "{names:?}");
    }

    #[test]
    fn helpers_are_not_variables_but_their_arguments_are() {
        let errors = agent_errors(
            "  command: [run]\n  prompts:\n    a: \"{{#if (eq stage 'review')}}{{lookup previousStages 0}}{{/if}}{{len previousStage}}\"\n",
        );
        assert_eq!(errors.len(), 1, "{errors:?}");
        assert!(errors[0].message.contains("`previousStage`"), "{}", errors[0].message);
        assert!(errors[0].help.starts_with("did you mean `{{previousStages}}`?"), "{}", errors[0].help);
        let errors = agent_errors("  command: [run, \"{{upper request}}\"]\n");
        assert_eq!(errors.len(), 1, "{errors:?}");
        assert!(errors[0].message.contains("helper `upper`"), "{}", errors[0].message);
    }

    #[test]
    fn the_shipped_prompt_template_is_clean() {
        let shipped = include_str!("../../../templates/prompt.md.hbs");
        let template = handlebars::Template::compile(shipped).expect("the shipped prompt compiles");
        assert!(super::template_findings("prompt", &template, super::TemplateUse::Prompt).is_empty());
        let as_command = super::template_findings("command", &template, super::TemplateUse::Command);
        assert!(!as_command.is_empty(), "the check is not vacuous: prompt variables are not command variables");
    }

    #[test]
    fn status_entries_hadron_cannot_have_written_are_ignored_with_a_warning() {
        let generation = "0011223344556677";
        let good = crate::ids::worker_name("r", generation, "s0", "../a.git", 1);
        let commit = "a".repeat(40);
        // Seven lines per entry.
        let entry = |worker: &str, commit: &str, last: &str| {
            format!(
                "    - name: s0\n      repo: ../a.git\n      worker: {worker}\n      attempt: 1\n      state: Succeeded\n      pushedCommit: \"{commit}\"\n      {last}\n"
            )
        };
        let entries = [
            entry(&good, &commit, "tokens: 5"),
            entry(&good, "ééééééééééééé", "tokens: 5"),
            entry(&good, &"A".repeat(40), "tokens: 5"),
            entry("hadron-r-s0-1-00000000", &commit, "tokens: 5"),
            entry(&good, &commit, "tokens: 18446744073709551615"),
            entry(&good, &commit, "costUSD: 1.0e7"),
            entry(&good, &commit, "costUSD: -1"),
        ];
        let text = format!(
            "apiVersion: hadron.dev/v1alpha1\nkind: RequestStatus\nmetadata:\n  name: r\nstatus:\n  observedRevision: x\n  observedGeneration: \"{generation}\"\n  phase: Running\n  stages:\n{}",
            entries.concat()
        );
        let loaded = Catalog::load([("status/r.yaml", text.as_bytes())]);
        let stages = &loaded.desired.statuses["r"].status.stages;
        assert_eq!(stages.iter().map(|e| (e.worker.as_str(), e.tokens)).collect::<Vec<_>>(), [(good.as_str(), 5)]);
        let mut warnings: Vec<(u64, &str)> = loaded
            .diagnostics
            .iter()
            .filter(|d| d.code == Code::InvalidStatusEntry)
            .map(|d| (d.line, d.field.as_deref().unwrap_or("")))
            .collect();
        warnings.sort();
        // Entry n (from 0) starts on line 10 + 7n.
        assert_eq!(
            warnings,
            [
                (22, "status.stages[1].pushedCommit"),
                (29, "status.stages[2].pushedCommit"),
                (33, "status.stages[3].worker"),
                (44, "status.stages[4].tokens"),
                (51, "status.stages[5].costUSD"),
                (58, "status.stages[6].costUSD"),
            ]
        );
        // Not a number, infinite: refused too (the span tree cannot hold
        // them, so the warnings point at the file's first line).
        for cost in [".nan", ".inf"] {
            let text = text.replace("costUSD: 1.0e7", &format!("costUSD: {cost}"));
            let loaded = Catalog::load([("status/r.yaml", text.as_bytes())]);
            assert_eq!(loaded.desired.statuses["r"].status.stages.len(), 1, "{cost}");
            assert_eq!(loaded.diagnostics.iter().filter(|d| d.code == Code::InvalidStatusEntry).count(), 6, "{cost}");
        }
    }
}
