//! The variables Hadron hands to handlebars templates, and a walk over a
//! compiled template that lists the top-level variables it refers to.
//!
//! The lists are the one source of truth: `hadron validate` checks agent
//! commands and prompts against them, and the worker builds its render data
//! with exactly these keys (see `workers::template`).

use handlebars::template::{HelperTemplate, Parameter, Template, TemplateElement};
use handlebars::{Path, PathSeg};

/// Variables of an agent's `spec.command` elements.
pub const COMMAND_VARIABLES: &[&str] = &["promptFile", "workspace", "request", "stage", "repo", "model"];

/// Variables of a prompt template (agent `spec.prompts.*`, a stage's `prompt`,
/// the shipped `templates/prompt.md.hbs`).
pub const PROMPT_VARIABLES: &[&str] = &["request", "title", "description", "stage", "repo", "branch", "previousStages"];

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

#[cfg(test)]
mod tests {
    use super::*;

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
}
