//! The variables Hadron hands to handlebars templates, a walk over a
//! compiled template that lists the top-level variables it refers to, and
//! the check of a template against them.
//!
//! The lists are the one source of truth: `hadron validate` checks agent
//! commands and prompts against them (`check_template`), and the worker
//! builds its render data with exactly these keys (see `workers::template`).

use handlebars::template::{HelperTemplate, Parameter, Template, TemplateElement};
use handlebars::{Path, PathSeg};

use super::diag::Code;
use super::file::{Finding, did_you_mean};

/// Variables of an agent's `spec.command` elements.
pub const COMMAND_VARIABLES: &[&str] = &["promptFile", "workspace", "request", "stage", "repo", "model"];

/// Variables of an agent's `spec.resume.command` elements: those of
/// `spec.command` and `sessionId`.
pub const RESUME_COMMAND_VARIABLES: &[&str] = &["promptFile", "workspace", "request", "stage", "repo", "model", "sessionId"];

/// Variables of a prompt template (agent `spec.prompts.*`, a stage's `prompt`,
/// the shipped `templates/prompt.md.hbs`).
pub const PROMPT_VARIABLES: &[&str] = &["request", "title", "description", "stage", "repo", "branch", "previousStages", "feedback"];

/// Helpers every handlebars registry has; the worker registers no others.
pub const BUILTIN_HELPERS: &[&str] =
    &["if", "unless", "each", "with", "lookup", "raw", "log", "eq", "ne", "gt", "gte", "lt", "lte", "and", "or", "not", "len"];

/// Block helpers whose body is rendered against another context (an item,
/// a nested object): names inside them are relative to that context.
const CONTEXT_HELPERS: &[&str] = &["each", "with"];

/// A name a template uses that the data or the helpers may not have.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reference {
    /// A variable looked up in the template's top-level data, e.g. `{{title}}`,
    /// `{{@root.title}}`, `{{../title}}` one block deep.
    Variable(String),
    /// A helper called by name, e.g. `{{#foo}}` or `{{upper title}}`.
    Helper(String),
}

/// The top-level variables and the helpers `template` refers to, in order of
/// first appearance, without repeats. Names relative to an `each`/`with`
/// block's context (an item's fields, `this`) and `@index`-style locals are
/// not listed.
pub fn references(template: &Template) -> Vec<Reference> {
    let mut out = Vec::new();
    walk_template(template, 0, &mut out);
    out
}

fn push(out: &mut Vec<Reference>, r: Reference) {
    if !out.contains(&r) {
        out.push(r);
    }
}

fn walk_template(t: &Template, depth: usize, out: &mut Vec<Reference>) {
    for element in &t.elements {
        walk_element(element, depth, out);
    }
}

fn walk_element(element: &TemplateElement, depth: usize, out: &mut Vec<Reference>) {
    match element {
        TemplateElement::Expression(h) | TemplateElement::HtmlExpression(h) => {
            match &h.name {
                Parameter::Name(name) => helper(name, out),
                other => walk_param(other, depth, out),
            }
            walk_args(h, depth, out);
        }
        TemplateElement::HelperBlock(h) => {
            let inner = match &h.name {
                Parameter::Name(name) if CONTEXT_HELPERS.contains(&name.as_str()) => depth + 1,
                Parameter::Name(name) => {
                    helper(name, out);
                    depth
                }
                other => {
                    // `{{#path.to.x}}`: a mustache section over a value.
                    walk_param(other, depth, out);
                    depth + 1
                }
            };
            walk_args(h, depth, out);
            if let Some(t) = &h.template {
                walk_template(t, inner, out);
            }
            if let Some(t) = &h.inverse {
                walk_template(t, depth, out);
            }
        }
        TemplateElement::DecoratorExpression(d)
        | TemplateElement::DecoratorBlock(d)
        | TemplateElement::PartialExpression(d)
        | TemplateElement::PartialBlock(d) => {
            for p in d.params.iter().chain(d.hash.values()) {
                walk_param(p, depth, out);
            }
            if let Some(t) = &d.template {
                walk_template(t, depth, out);
            }
        }
        _ => {}
    }
}

fn walk_args(h: &HelperTemplate, depth: usize, out: &mut Vec<Reference>) {
    for p in h.params.iter().chain(h.hash.values()) {
        walk_param(p, depth, out);
    }
}

fn helper(name: &str, out: &mut Vec<Reference>) {
    if !BUILTIN_HELPERS.contains(&name) {
        push(out, Reference::Helper(name.to_owned()));
    }
}

fn walk_param(p: &Parameter, depth: usize, out: &mut Vec<Reference>) {
    match p {
        Parameter::Path(Path::Relative((segs, raw))) => {
            if let Some(name) = top_level_name(segs, raw, depth) {
                push(out, Reference::Variable(name));
            }
        }
        Parameter::Subexpression(s) => walk_element(&s.element, depth, out),
        // `@index`, `@key`, `../@first`: block locals. Literals.
        _ => {}
    }
}

/// The top-level variable a path names, if it is read from the top-level
/// data: `x.y` at depth 0, `@root.x` anywhere, `../x` one block deep.
fn top_level_name(segs: &[PathSeg], raw: &str, depth: usize) -> Option<String> {
    let rest = ["this.", "this/", "./"].iter().find_map(|p| raw.strip_prefix(p)).unwrap_or(raw);
    let rooted = rest.starts_with("@root");
    let ruled = segs.iter().filter(|s| !matches!(s, PathSeg::Named(_))).count();
    let level = if rooted { 0 } else { depth.saturating_sub(ruled) };
    if level > 0 {
        return None;
    }
    segs.iter().find_map(|s| match s {
        PathSeg::Named(name) => Some(name.clone()),
        _ => None,
    })
}

/// What a template is for: which variables it gets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum TemplateUse {
    /// An element of an agent's `spec.command`.
    Command,
    /// An element of an agent's `spec.resume.command`.
    ResumeCommand,
    /// A prompt: an agent's `spec.prompts.*` or a stage's `prompt`.
    Prompt,
}

impl TemplateUse {
    fn variables(self) -> &'static [&'static str] {
        match self {
            TemplateUse::Command => COMMAND_VARIABLES,
            TemplateUse::ResumeCommand => RESUME_COMMAND_VARIABLES,
            TemplateUse::Prompt => PROMPT_VARIABLES,
        }
    }
}

/// Checks one template: it compiles, and it uses only the variables and
/// helpers the worker provides for `used_as`.
pub(crate) fn check_template(out: &mut Vec<Finding>, field: &str, text: &str, used_as: TemplateUse) {
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
    references(template)
        .into_iter()
        .filter_map(|r| match r {
            Reference::Variable(name) if !allowed.contains(&name.as_str()) => {
                let help = match did_you_mean(&name, allowed) {
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
            Reference::Helper(name) => Some(Finding::error(
                field,
                Code::UnknownTemplateVariable,
                format!("unknown template helper `{name}` in `{field}`; it would not render"),
                format!("use a built-in helper ({}) or one of the variables here: {listed}", BUILTIN_HELPERS.join(", ")),
            )),
            Reference::Variable(_) => None,
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Catalog, Diagnostic};

    const AGENT: &str = "apiVersion: hadron.dev/v1alpha1\nkind: Agent\nmetadata:\n  name: a\nspec:\n";

    fn agent_errors(spec: &str) -> Vec<Diagnostic> {
        let text = format!("{AGENT}{spec}");
        let loaded = Catalog::load([("agents/a.yaml", text.as_bytes())]);
        loaded.diagnostics.into_iter().filter(Diagnostic::is_error).collect()
    }

    fn refs(text: &str) -> Vec<Reference> {
        references(&Template::compile(text).expect("compiles"))
    }

    fn vars(text: &str) -> Vec<String> {
        refs(text)
            .into_iter()
            .filter_map(|r| match r {
                Reference::Variable(v) => Some(v),
                Reference::Helper(_) => None,
            })
            .collect()
    }

    #[test]
    fn top_level_names_are_listed_once() {
        assert_eq!(vars("{{promptFile}} {{ title }} {{{description}}} {{title}}"), ["promptFile", "title", "description"]);
        assert_eq!(vars("{{this.title}} {{./stage}} {{repo.url}} {{[odd key]}}"), ["title", "stage", "repo", "odd key"]);
        assert_eq!(
            vars("{{lookup previousStages 0}} {{#if (eq stage \"x\")}}{{else if branch}}{{/if}}"),
            ["previousStages", "stage", "branch"]
        );
        assert_eq!(vars("{{#unless titel}}{{descrption}}{{else}}{{reqest}}{{/unless}}"), ["titel", "descrption", "reqest"]);
    }

    #[test]
    fn block_contexts_and_locals_are_not_top_level() {
        let text = "{{#each previousStages}}{{@index}} {{this}} {{name}} {{this.summary}} {{@root.title}} {{../branch}} {{#if @first}}{{repo}}{{/if}}{{else}}{{stge}}{{/each}}";
        assert_eq!(vars(text), ["previousStages", "title", "branch", "stge"]);
        let text = "{{#each previousStages as |s i|}}{{s.name}}{{i}}{{#with s}}{{../../titl}}{{../x}}{{/with}}{{/each}}";
        assert_eq!(vars(text), ["previousStages", "titl"]);
        assert_eq!(vars("{{#with repo}}{{@root.reqest}}{{name}}{{/with}}"), ["repo", "reqest"]);
    }

    #[test]
    fn unknown_helpers_are_listed_builtins_are_not() {
        assert_eq!(
            refs("{{#if a}}{{/if}}{{len b}}{{upper c}}{{#shout}}{{/shout}}"),
            [
                Reference::Variable("a".into()),
                Reference::Variable("b".into()),
                Reference::Helper("upper".into()),
                Reference::Variable("c".into()),
                Reference::Helper("shout".into()),
            ]
        );
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
        for v in COMMAND_VARIABLES {
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
        assert!(template_findings("prompt", &template, TemplateUse::Prompt).is_empty());
        let as_command = template_findings("command", &template, TemplateUse::Command);
        assert!(!as_command.is_empty(), "the check is not vacuous: prompt variables are not command variables");
    }
}
