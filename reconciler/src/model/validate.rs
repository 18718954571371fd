//! Semantic checks of one object at a time: names, budgets, URLs, secrets,
//! templates, stage/gate consistency, `apiVersion` and `kind`. Pure
//! functions over parsed objects; the checks across files are in
//! `desired.rs`.

use std::collections::BTreeSet;

use super::diag::Code;
pub use super::file::Finding;
use super::file::{FileRole, Object};
use super::kinds::{
    API_VERSION, AgentNetwork, AgentSpec, Approval, Budget, ChangeRequest, EnvVar, GateType, Metadata, OutputFormat, RequestStatus,
    Settings, Stage, StringMap,
};
use super::spans::{FieldPath, Seg};
use super::template_vars::{TemplateUse, check_template};
pub use super::values::{is_commit_id, looks_like_secret_value, repo_url_problem, url_has_credentials};
pub use crate::ids::{is_branch_name, is_dns_label};

/// Longest request title, in characters: one line, the commit and PR title.
pub const MAX_TITLE_CHARS: usize = 200;
/// Largest request description (the agent's task), in bytes.
pub const MAX_DESCRIPTION_BYTES: usize = 64 * 1024;
/// Longest name part of a label or annotation key (after any `prefix/`), as in Kubernetes.
pub const MAX_KEY_NAME_BYTES: usize = 63;
/// Longest prefix of a label or annotation key (a DNS subdomain), as in Kubernetes.
pub const MAX_KEY_PREFIX_BYTES: usize = 253;
/// Longest label value, as in Kubernetes.
pub const MAX_LABEL_VALUE_BYTES: usize = 63;
/// Largest total of an object's annotations (keys and values), as in Kubernetes.
pub const MAX_ANNOTATIONS_BYTES: usize = 256 * 1024;

/// `1.0 MiB`, `64 KiB`, `300 bytes`.
fn size(bytes: usize) -> String {
    match bytes {
        0..1024 => format!("{bytes} bytes"),
        1024..1_048_576 => format!("{} KiB", bytes / 1024),
        _ => format!("{:.1} MiB", bytes as f64 / 1_048_576.0),
    }
}

fn too_long(field: FieldPath, message: String, help: String) -> Finding {
    Finding { field, ..Finding::error("", Code::TooLong, message, help) }
}

fn field_of(parts: &[&str]) -> FieldPath {
    FieldPath(parts.iter().map(|p| Seg::Key((*p).to_owned())).collect())
}

/// Label or annotation keys and label values within Kubernetes' limits, and
/// the annotations within their total.
fn check_string_maps(out: &mut Vec<Finding>, meta: &Metadata) {
    for (map, which) in [(&meta.labels, "labels"), (&meta.annotations, "annotations")] {
        check_keys(out, map, which);
    }
    for (key, value) in meta.labels.iter() {
        if value.len() > MAX_LABEL_VALUE_BYTES {
            out.push(too_long(
                field_of(&["metadata", "labels", key]),
                format!(
                    "the value of label `{}` is {} long, more than a label value may be ({MAX_LABEL_VALUE_BYTES} bytes)",
                    key.escape_debug(),
                    size(value.len())
                ),
                "keep label values short (as in Kubernetes); put longer text in an annotation or the description".to_owned(),
            ));
        }
    }
    let total: usize = meta.annotations.iter().map(|(k, v)| k.len() + v.len()).sum();
    if total > MAX_ANNOTATIONS_BYTES {
        out.push(too_long(
            field_of(&["metadata", "annotations"]),
            format!(
                "the annotations are {} in all, more than an object's annotations may be ({})",
                size(total),
                size(MAX_ANNOTATIONS_BYTES)
            ),
            "keep annotations short (as in Kubernetes); link to long documents instead of copying them in".to_owned(),
        ));
    }
}

fn check_keys(out: &mut Vec<Finding>, map: &StringMap, which: &str) {
    for (key, _) in map.iter() {
        let (prefix, name) = key.rsplit_once('/').unwrap_or(("", key));
        let problem = if name.len() > MAX_KEY_NAME_BYTES {
            Some(format!("its name part is {}, more than {MAX_KEY_NAME_BYTES} bytes", size(name.len())))
        } else if prefix.len() > MAX_KEY_PREFIX_BYTES {
            Some(format!("its prefix is {}, more than {MAX_KEY_PREFIX_BYTES} bytes", size(prefix.len())))
        } else {
            None
        };
        if let Some(problem) = problem {
            let shown: String = key.chars().take(40).collect();
            out.push(too_long(
                field_of(&["metadata", which, key]),
                format!("{which} key `{}…` is too long: {problem}", shown.escape_debug()),
                format!("use keys as in Kubernetes: an optional DNS prefix of at most {MAX_KEY_PREFIX_BYTES} bytes and `/`, then a name of at most {MAX_KEY_NAME_BYTES}"),
            ));
        }
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
    out.extend(header_findings(Some(api), Some(kind), role));
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
    check_string_maps(out, meta);
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
    if let Some(q) = &b.max_workspace_size {
        match crate::model::kinds::parse_quantity(q) {
            Some(0) => bad(out, "maxWorkspaceSize", format!("`maxWorkspaceSize: {q}` allows no workspace at all")),
            Some(_) => {}
            None => out.push(Finding::error(
                &format!("{field}.maxWorkspaceSize"),
                Code::WrongType,
                format!("`{q}` is not a size"),
                "write a size such as `512Mi` or `2Gi` (Ki, Mi, Gi, Ti; or k, M, G, T)",
            )),
        }
    }
}

/// Checks `spec.network.allow` entries: `host:port`, a port from 1 to
/// 65535, a host that is a DNS name, an IPv4 address or an IPv4 CIDR.
fn check_network(out: &mut Vec<Finding>, network: Option<&AgentNetwork>) {
    let Some(AgentNetwork::Allow(allow)) = network else { return };
    if allow.allow.is_empty() {
        out.push(Finding::error(
            "spec.network.allow",
            Code::NonPositiveValue,
            "an empty allow list is no network at all",
            "list the `host:port` pairs the agent needs, e.g. `allow: [\"api.anthropic.com:443\"]`, or write `network: none`",
        ));
    }
    for (i, entry) in allow.allow.iter().enumerate() {
        if let Err(why) = check_endpoint(entry) {
            out.push(Finding::error(
                &format!("spec.network.allow[{i}]"),
                Code::InvalidNetworkEntry,
                format!("`{entry}` {why}"),
                "write `host:port`, e.g. `api.anthropic.com:443` or `10.0.0.0/8:5432`",
            ));
        }
    }
}

/// Why `entry` is not a `host:port` pair, if it is not.
pub fn check_endpoint(entry: &str) -> Result<(), &'static str> {
    let (host, port) = entry.rsplit_once(':').ok_or("has no `:port`")?;
    match port.parse::<u16>() {
        Ok(p) if p > 0 => {}
        _ => return Err("has no port from 1 to 65535"),
    }
    if let Some((ip, bits)) = host.split_once('/') {
        let bits_ok = bits.parse::<u8>().is_ok_and(|b| b <= 32);
        if ip.parse::<std::net::Ipv4Addr>().is_err() || !bits_ok {
            return Err("is not an IPv4 CIDR such as `10.0.0.0/8`");
        }
        return Ok(());
    }
    if host.parse::<std::net::Ipv4Addr>().is_ok() {
        return Ok(());
    }
    let label_ok = |l: &str| {
        !l.is_empty()
            && l.len() <= 63
            && !l.starts_with('-')
            && !l.ends_with('-')
            && l.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
    };
    if host.is_empty() || host.len() > 253 || !host.split('.').all(label_ok) {
        return Err("does not name a host (a DNS name, an IPv4 address or a CIDR)");
    }
    Ok(())
}

/// Names that say "this is a secret" when they carry a literal value.
const SECRET_NAME_WORDS: [&str; 7] = ["KEY", "TOKEN", "SECRET", "PASSWORD", "PASSWD", "CREDENTIAL", "PRIVATE"];

/// For each CLI Hadron reads (`spec.output`): the program's file name, and
/// the arguments one of which keeps it from waiting for a person, with what
/// to add when none is there.
const CLI_FLAGS: &[(OutputFormat, &str, &[&str], &str)] = &[
    (
        OutputFormat::Claude,
        "claude",
        &["--permission-mode", "--allowedTools", "--allowed-tools"],
        "add `--permission-mode acceptEdits` and `--allowedTools …`",
    ),
    (OutputFormat::Codex, "codex", &["exec"], "run `codex exec --json …`: only `exec` runs without asking"),
    (OutputFormat::Opencode, "opencode", &["run"], "run `opencode run --format json …`"),
    (OutputFormat::Gemini, "gemini", &["--approval-mode", "--yolo", "-y"], "add `--approval-mode auto_edit`"),
    (OutputFormat::Aider, "aider", &["--yes-always"], "add `--yes-always` (and `--message-file {{promptFile}}`)"),
];

/// Warns when `spec.output` names a CLI the command does not run, and when
/// the command runs a known CLI without the flag that keeps it from waiting
/// for a person (it would sit until its wall time).
fn check_agent_cli(out: &mut Vec<Finding>, spec: &AgentSpec) {
    let Some(program) = spec.command.first() else { return };
    let name = program.rsplit('/').next().unwrap_or(program);
    let output = spec.output.unwrap_or_default();
    if let Some((_, cli, _, _)) = CLI_FLAGS.iter().find(|(format, ..)| *format == output)
        && name != *cli
    {
        out.push(Finding::warning(
            "spec.output",
            Code::OutputMismatch,
            format!("`output: {}` reads {cli}'s output, but the command runs `{name}`", output.as_str()),
            format!("run {cli}, or set `output` to the format `{name}` prints (`report` for Hadron's own)"),
        ));
    }
    if let Some((_, cli, flags, fix)) = CLI_FLAGS.iter().find(|(_, cli, ..)| *cli == name)
        && !spec.command.iter().skip(1).any(|a| flags.iter().any(|f| a == f || a.starts_with(&format!("{f}="))))
    {
        out.push(Finding::warning(
            "spec.command",
            Code::MayWaitForPerson,
            format!("`{cli}` runs without {}: it may wait for a person and sit until its wall time", flags.join(" or ")),
            fix.to_string(),
        ));
    }
}

/// `spec.resume.command`: a program, templates with the resume variables,
/// no credential, and (a warning) the session it continues named.
fn check_resume(out: &mut Vec<Finding>, command: &[String]) {
    if command.first().is_none_or(|p| p.trim().is_empty()) {
        out.push(Finding::error(
            "spec.resume.command",
            Code::EmptyCommand,
            "`resume` has no command to run",
            "list the program and its arguments, e.g. `command: [claude, -p, --resume, \"{{sessionId}}\", --output-format, json]`, or remove `resume`",
        ));
        return;
    }
    for (i, arg) in command.iter().enumerate() {
        check_template(out, &format!("spec.resume.command[{i}]"), arg, TemplateUse::ResumeCommand);
        if looks_like_secret_value(arg) {
            out.push(Finding::error(
                &format!("spec.resume.command[{i}]"),
                Code::InlineSecret,
                "this argument looks like a credential written into the repo",
                "remove it; pass the secret through `env` with a `secretRef`, and rotate the exposed credential",
            ));
        }
    }
    if !command.iter().any(|a| a.contains("{{sessionId}}")) {
        out.push(Finding::warning(
            "spec.resume.command",
            Code::ResumeWithoutSession,
            "`resume.command` does not name the session it continues: a retry would start a new one",
            "pass `{{sessionId}}` to the CLI's resume flag (`claude --resume \"{{sessionId}}\"`, `codex exec resume \"{{sessionId}}\"`)",
        ));
    }
}

fn check_agent(out: &mut Vec<Finding>, spec: &AgentSpec) {
    check_agent_cli(out, spec);
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
    if let Some(resume) = &spec.resume {
        check_resume(out, &resume.command);
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
    check_network(out, spec.network.as_ref());
    if spec.concurrency == Some(0) {
        out.push(Finding::error(
            "spec.concurrency",
            Code::NonPositiveValue,
            "`concurrency: 0` would never run this agent",
            "set it to 1 or more, or remove it",
        ));
    }
    if let Some(p) = &spec.pricing {
        let cached = p.cached_input_per_million.map(|v| ("cachedInputPerMillion", v));
        for (key, v) in [("inputPerMillion", p.input_per_million), ("outputPerMillion", p.output_per_million)].into_iter().chain(cached) {
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
    let title_chars = s.title.chars().count();
    if title_chars > MAX_TITLE_CHARS {
        out.push(Finding::error(
            "spec.title",
            Code::TooLong,
            format!("the title is {title_chars} characters long, more than a title may be ({MAX_TITLE_CHARS})"),
            "say in one line what to change (it becomes the commit and PR title); the details go in `description`",
        ));
    }
    if s.description.len() > MAX_DESCRIPTION_BYTES {
        out.push(Finding::error(
            "spec.description",
            Code::TooLong,
            format!("the description is {}, more than a description may be ({})", size(s.description.len()), size(MAX_DESCRIPTION_BYTES)),
            "describe the task and link to longer documents (a file in the target repo, an issue) instead of copying them in",
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

/// Removes the entries of a status file that Hadron cannot have written, with
/// an error for each (`hadron validate` fails; the loop keeps the rest of the
/// file and ignores the entry): status files live in git and can be edited by hand,
/// and the planner adopts their entries as finished work. An entry is kept
/// only when its worker name is one Hadron gives this request, stage and
/// attempt (the hash at its end covers the installation, unknown to a
/// checkout of the control repo, with the generation and repo; see
/// [`crate::ids::worker_name`]), its pushed commit (if
/// any) is 40 lower-case hex digits, and its tokens and cost are within the
/// bounds a worker's report is held to.
pub fn sanitize_status(s: &mut RequestStatus) -> Vec<Finding> {
    use crate::attempt::{MAX_TOTAL_TOKENS_PER_ATTEMPT, cost_is_sane};
    let mut out = Vec::new();
    let request = s.metadata.name.clone();
    let mut index = 0;
    s.status.stages.retain(|e| {
        let field = |f: &str| format!("status.stages[{index}].{f}");
        let problem = if e.attempt == 0 {
            Some((field("attempt"), "attempt 0 does not exist: attempts count from 1".to_owned()))
        } else if !crate::ids::is_worker_name(&e.worker) {
            Some((
                field("worker"),
                format!(
                    "worker `{}` is not a worker name (a DNS-1123 label of at most 63 characters that starts with `hadron-`)",
                    e.worker.escape_debug()
                ),
            ))
        } else if !crate::ids::is_worker_name_of(&e.worker, &request, &e.name, e.attempt) {
            Some((
                field("worker"),
                format!("worker `{}` is not a name Hadron gives this request, stage and attempt", e.worker.escape_debug()),
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
                out.push(Finding::error(
                    &field,
                    Code::InvalidStatusEntry,
                    format!("{message}; the entry is ignored"),
                    "status files are written by Hadron: revert the manual edit (`git log -p -- status/` shows it) or delete the entry",
                ));
                false
            }
            None => true,
        }
    });
    out
}

/// Checks `apiVersion` and `kind` (shared by the typed path and the
/// fallback header path).
pub(crate) fn header_findings(api_version: Option<&str>, kind: Option<&str>, role: &FileRole) -> Vec<Finding> {
    let mut out = Vec::new();
    let expected = role.kind();
    if let Some(kind) = kind
        && kind != expected
    {
        out.push(Finding::error(
            "kind",
            Code::KindMismatch,
            format!("`kind: {kind}` in a file where a `{expected}` belongs"),
            match kind_folder(kind) {
                Some(folder) => format!("move the file to `{folder}`, or set `kind: {expected}`"),
                None => format!("set `kind: {expected}`"),
            },
        ));
    }
    if let Some(api) = api_version
        && api != API_VERSION
    {
        out.push(Finding::error(
            "apiVersion",
            Code::WrongApiVersion,
            format!("`apiVersion: {api}` is not one this Hadron reads"),
            format!("set `apiVersion: {API_VERSION}`"),
        ));
    }
    out
}

fn kind_folder(kind: &str) -> Option<&'static str> {
    Some(match kind {
        "Settings" => "hadron.yaml",
        "Agent" => "agents/<name>.yaml",
        "ChangeRequest" => "requests/<name>.yaml",
        "Approval" => "approvals/<request>/<gate>.yaml",
        "RequestStatus" => "status/<name>.yaml",
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::super::{Catalog, Code};

    #[test]
    fn status_entries_hadron_cannot_have_written_are_ignored_with_an_error() {
        let generation = "0011223344556677";
        let good = crate::ids::worker_name(&crate::ids::Installation::default(), "r", generation, "s0", "../a.git", 1);
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
            entry("hadron-r-s1-1-00000000", &commit, "tokens: 5"),
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
        assert!(
            loaded.diagnostics.iter().filter(|d| d.code == Code::InvalidStatusEntry).all(|d| d.is_error()),
            "errors: `hadron validate` fails on them"
        );
        assert_eq!(loaded.error_count(), 6, "{:?}", loaded.diagnostics);
        // Not a number, infinite: refused too (the span tree cannot hold
        // them, so the warnings point at the file's first line).
        for cost in [".nan", ".inf"] {
            let text = text.replace("costUSD: 1.0e7", &format!("costUSD: {cost}"));
            let loaded = Catalog::load([("status/r.yaml", text.as_bytes())]);
            assert_eq!(loaded.desired.statuses["r"].status.stages.len(), 1, "{cost}");
            assert_eq!(loaded.diagnostics.iter().filter(|d| d.code == Code::InvalidStatusEntry).count(), 6, "{cost}");
        }
    }

    #[test]
    fn a_worker_that_is_no_worker_name_is_an_error_naming_the_field() {
        let generation = "0011223344556677";
        let good =
            crate::ids::worker_name(&crate::ids::Installation::named("team-a").expect("a label"), "r", generation, "s0", "../a.git", 1);
        assert!(crate::ids::is_worker_name(&good), "{good}");
        let status = |worker: &str| {
            format!(
                "apiVersion: hadron.dev/v1alpha1\nkind: RequestStatus\nmetadata:\n  name: r\nstatus:\n  observedRevision: x\n  observedGeneration: \"{generation}\"\n  phase: Running\n  stages:\n    - name: s0\n      repo: ../a.git\n      worker: \"{good}\"\n      attempt: 1\n      state: Succeeded\n    - name: s0\n      repo: ../a.git\n      worker: \"{worker}\"\n      attempt: 1\n      state: Succeeded\n"
            )
        };
        for bad in ["x\\u001b[2Kok", "Hadron-R-S0", "worker-r-s0-1-abcd", &format!("hadron-{}", "a".repeat(60))] {
            let loaded = Catalog::load([("status/r.yaml", status(bad).as_bytes())]);
            let d: Vec<_> = loaded.diagnostics.iter().filter(|d| d.code == Code::InvalidStatusEntry).collect();
            assert_eq!(d.len(), 1, "{bad}: {:?}", loaded.diagnostics);
            assert!(d[0].is_error(), "{bad}");
            assert_eq!(d[0].field.as_deref(), Some("status.stages[1].worker"), "{bad}");
            assert_eq!(d[0].line, 17, "{bad}");
            assert!(d[0].message.contains("is not a worker name"), "{bad}: {}", d[0].message);
            assert!(!d[0].help.is_empty());
            // The loop keeps the good entry and ignores the bad one.
            assert_eq!(loaded.desired.statuses["r"].status.stages.len(), 1, "{bad}");
        }
        let loaded = Catalog::load([("status/r.yaml", status(&good).as_bytes())]);
        assert_eq!(loaded.error_count(), 0, "{:?}", loaded.diagnostics);
    }

    #[test]
    fn text_people_write_is_bounded_with_the_field_and_the_limit_named() {
        let request = |meta: &str, title: &str| {
            format!(
                "apiVersion: hadron.dev/v1alpha1\nkind: ChangeRequest\nmetadata:\n  name: r\n{meta}spec:\n  title: {title}\n  repos: [{{url: ../a.git}}]\n"
            )
        };
        let too_long = |text: &str| {
            let loaded = Catalog::load([("requests/r.yaml", text.as_bytes())]);
            loaded
                .diagnostics
                .iter()
                .filter(|d| d.code == Code::TooLong)
                .map(|d| (d.line, d.field.clone().unwrap_or_default(), d.message.clone()))
                .collect::<Vec<_>>()
        };
        // At the limits: clean.
        let long_key = format!("{}/{}", "p".repeat(253), "k".repeat(63));
        let at = request(&format!("  labels:\n    {long_key}: {}\n", "v".repeat(63)), &"é".repeat(200));
        assert_eq!(too_long(&at), []);
        // One over each: one finding each, on its line, naming the limit.
        let over = request(
            &format!(
                "  labels:\n    {}: x\n    team: {}\n  annotations:\n    big: {}\n",
                "k".repeat(64),
                "v".repeat(64),
                "a".repeat(256 * 1024)
            ),
            &"é".repeat(201),
        );
        let found = too_long(&over);
        assert_eq!(found.len(), 4, "{found:?}");
        assert!(found.iter().any(|(line, field, m)| *line == 6 && field.ends_with(&"k".repeat(64)) && m.contains("63 bytes")), "{found:?}");
        assert!(
            found.iter().any(|(line, field, m)| *line == 7 && field == "metadata.labels.team" && m.contains("(63 bytes)")),
            "{found:?}"
        );
        assert!(found.iter().any(|(line, field, m)| *line == 8 && field == "metadata.annotations" && m.contains("(256 KiB)")), "{found:?}");
        assert!(
            found.iter().any(|(_, field, m)| field == "spec.title" && m.contains("201 characters") && m.contains("(200)")),
            "{found:?}"
        );
    }

    #[test]
    fn an_agent_cli_without_its_unattended_flag_or_with_the_wrong_output_is_warned_about() {
        let codes = |spec: serde_json::Value| {
            let spec: super::AgentSpec = serde_json::from_value(spec).expect("an agent spec");
            let mut out = Vec::new();
            super::check_agent_cli(&mut out, &spec);
            out.iter().map(|f| (f.code.as_str(), f.field.to_string())).collect::<Vec<_>>()
        };
        let claude = serde_json::json!({"command": ["claude", "-p", "--output-format", "json"], "output": "claude"});
        assert_eq!(codes(claude), vec![("MayWaitForPerson", "spec.command".to_owned())]);
        let fine = serde_json::json!({"command": ["/usr/bin/claude", "-p", "--permission-mode", "acceptEdits"], "output": "claude"});
        assert_eq!(codes(fine), vec![]);
        let wrong = serde_json::json!({"command": ["gemini", "--approval-mode=auto_edit"], "output": "codex"});
        assert_eq!(codes(wrong), vec![("OutputMismatch", "spec.output".to_owned())]);
        let aider = serde_json::json!({"command": ["aider", "--message-file", "{{promptFile}}"]});
        assert_eq!(codes(aider), vec![("MayWaitForPerson", "spec.command".to_owned())], "the default `report` reads any program");
        assert_eq!(codes(serde_json::json!({"command": ["sh", "agent.sh"]})), vec![]);
    }

    #[test]
    fn a_resume_command_is_checked_like_the_command_and_must_name_the_session() {
        let findings = |resume: serde_json::Value| {
            let spec: super::AgentSpec =
                serde_json::from_value(serde_json::json!({"command": ["sh", "agent.sh"], "resume": resume})).expect("an agent spec");
            let mut out = Vec::new();
            super::check_agent(&mut out, &spec);
            out.iter().map(|f| (f.code.as_str(), f.field.to_string())).collect::<Vec<_>>()
        };
        assert_eq!(findings(serde_json::json!({"command": ["claude", "-p", "--resume", "{{sessionId}}", "{{promptFile}}"]})), vec![]);
        assert_eq!(findings(serde_json::json!({"command": []})), vec![("EmptyCommand", "spec.resume.command".to_owned())]);
        assert_eq!(
            findings(serde_json::json!({"command": ["claude", "--continue"]})),
            vec![("ResumeWithoutSession", "spec.resume.command".to_owned())]
        );
        let misspelt = findings(serde_json::json!({"command": ["claude", "--resume", "{{session_id}}"]}));
        assert!(misspelt.contains(&("UnknownTemplateVariable", "spec.resume.command[2]".to_owned())), "{misspelt:?}");
        let plain: super::AgentSpec = serde_json::from_value(serde_json::json!({"command": ["x", "{{sessionId}}"]})).expect("a spec");
        let mut out = Vec::new();
        super::check_agent(&mut out, &plain);
        assert!(out.iter().any(|f| f.code.as_str() == "UnknownTemplateVariable"), "`sessionId` is for `resume.command` only: {out:?}");
    }
}
