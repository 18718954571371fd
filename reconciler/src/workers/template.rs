//! Rendering the prompt and the agent command from their Handlebars
//! templates, strictly, with exactly the variables `hadron validate` knows.

use std::path::Path;

use serde_json::json;

use super::error::WorkerError;
use super::spec::RunSpec;
use super::worker::Worker;

impl Worker<'_> {
    /// The prompt. A revision's feedback goes where the template says
    /// (`{{feedback}}`), or, when the template never mentions it, after it:
    /// a reviewer's request never silently misses the agent.
    pub(super) fn render_prompt(&self) -> Result<String, WorkerError> {
        let mut prompt = unescaped_repo_templates()
            .render_template(&self.spec.prompt_template, &prompt_data(self.spec))
            .map_err(|e| WorkerError::TemplateFailed(format!("prompt: {}", render_error(&e))))?;
        if let Some(feedback) = self.spec.feedback.as_deref().filter(|f| !f.is_empty())
            && !self.spec.prompt_template.contains("feedback")
        {
            prompt.push_str(&format!("\n\n## Changes a reviewer asked for\n\n{feedback}\n"));
        }
        Ok(prompt)
    }

    pub(super) fn render_command(&self, prompt_path: &Path) -> Result<Vec<String>, WorkerError> {
        let mut data = command_data(self.spec, prompt_path, &self.workspace);
        let command = match resume_of(self.spec) {
            Ok(Some((command, session))) => {
                self.log.line(&format!("resuming {} session {session} (attempt {})", self.spec.output.as_str(), self.spec.attempt));
                data["sessionId"] = serde_json::Value::String(session.to_owned());
                command
            }
            Ok(None) => &self.spec.command,
            Err(why) => {
                self.log.line(&format!("not resuming: {why}; the agent's command starts a new session"));
                &self.spec.command
            }
        };
        let hb = unescaped_repo_templates();
        command
            .iter()
            .enumerate()
            .map(|(i, element)| {
                hb.render_template(element, &data)
                    .map_err(|e| WorkerError::TemplateFailed(format!("command element {i}: {}", render_error(&e))))
            })
            .collect()
    }
}

/// The resume command and the session it continues, when this attempt
/// resumes one: `Ok(None)` when it does not, `Err` (why not) when the spec
/// asks for a resume the worker refuses.
fn resume_of(s: &RunSpec) -> Result<Option<(&Vec<String>, &str)>, String> {
    let Some(session) = s.resume_session.as_deref() else { return Ok(None) };
    // Checked again here: the id goes into the argument list.
    if !crate::ids::is_session_id(session) {
        return Err(format!("the session id to resume is not one Hadron accepts ({} characters)", session.chars().count()));
    }
    match &s.resume_command {
        Some(command) if !command.is_empty() => Ok(Some((command, session))),
        _ => Err("the agent has no `resume.command`".to_owned()),
    }
}

/// The data a prompt template renders with: every name of
/// [`PROMPT_VARIABLES`](crate::model::template_vars::PROMPT_VARIABLES), always present (strict mode fails on a missing one).
fn prompt_data(s: &RunSpec) -> serde_json::Value {
    json!({
        "request": s.request,
        "title": s.title,
        "description": s.description,
        "stage": s.stage,
        "repo": s.repo,
        "branch": s.work_branch,
        "previousStages": s.previous_stages,
        "feedback": s.feedback.clone().unwrap_or_default(),
    })
}

/// The data a command element renders with: every name of
/// [`COMMAND_VARIABLES`](crate::model::template_vars::COMMAND_VARIABLES), always present (`model` is empty when unset).
fn command_data(s: &RunSpec, prompt_path: &Path, workspace: &Path) -> serde_json::Value {
    json!({
        "promptFile": prompt_path.display().to_string(),
        "workspace": workspace.display().to_string(),
        "request": s.request,
        "stage": s.stage,
        "repo": s.repo,
        "model": s.model.clone().unwrap_or_default(),
    })
}

/// A render error in one line: what failed and where in the template.
fn render_error(e: &handlebars::RenderError) -> String {
    let mut text = match e.reason() {
        handlebars::RenderErrorReason::MissingVariable(Some(path)) => {
            format!("the template uses `{{{{{path}}}}}`, which Hadron does not pass (`hadron validate` names the variables)")
        }
        handlebars::RenderErrorReason::HelperNotFound(name) => {
            format!("the template calls the helper `{name}`, which does not exist")
        }
        other => other.to_string(),
    };
    if let (Some(line), Some(column)) = (e.line_no, e.column_no) {
        text.push_str(&format!(" (template line {line}, column {column})"));
    }
    text
}

/// The registry for the control repo's own templates (an agent's prompt
/// template and command elements), rendered verbatim.
///
/// Trust: the templates come from the control repo, which its reviewers
/// vouch for, and so do most values (the request's title and description,
/// stage, repo, paths); earlier stages' summaries are agents' text, passed
/// on as they are to the next agent. The output is a prompt file and the
/// elements of an argv (no shell), neither of them markup, so nothing is
/// escaped. Strict: a name missing from the
/// data is an error, not an empty string.
fn unescaped_repo_templates() -> handlebars::Handlebars<'static> {
    let mut hb = handlebars::Handlebars::new();
    hb.set_strict_mode(true);
    hb.register_escape_fn(handlebars::no_escape);
    hb
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec() -> RunSpec {
        crate::workers::spec::sample()
    }

    fn keys(value: &serde_json::Value) -> std::collections::BTreeSet<&str> {
        value.as_object().expect("because the data is a JSON object").keys().map(String::as_str).collect()
    }

    #[test]
    fn render_data_has_exactly_the_validated_variables() {
        use crate::model::template_vars::{COMMAND_VARIABLES, PROMPT_VARIABLES};
        let s = spec();
        assert_eq!(keys(&prompt_data(&s)), PROMPT_VARIABLES.iter().copied().collect());
        let data = command_data(&s, Path::new("/run/prompt.md"), Path::new("/run/workspace"));
        assert_eq!(keys(&data), COMMAND_VARIABLES.iter().copied().collect());
        assert_eq!(data["model"], "", "an unset model is an empty string, not a missing key");
    }

    #[test]
    fn the_shipped_prompt_renders_strictly_with_and_without_optional_parts() {
        let mut s = spec();
        let plain = unescaped_repo_templates()
            .render_template(&s.prompt_template, &prompt_data(&s))
            .expect("renders with no description and no earlier stage");
        assert!(plain.contains("Task: Fix it") && !plain.contains("Earlier stages"), "{plain}");
        s.description = "Details.".into();
        s.previous_stages =
            vec![crate::workers::spec::PreviousStage { name: "implement".into(), repo: "../app.git".into(), summary: "wrote it".into() }];
        let full = unescaped_repo_templates().render_template(&s.prompt_template, &prompt_data(&s)).expect("renders with everything");
        assert!(full.contains("Details.") && full.contains("- implement on ../app.git: wrote it"), "{full}");
    }

    #[test]
    fn a_revisions_feedback_reaches_the_prompt_whatever_the_template() {
        let mut s = spec();
        s.feedback = Some("Revision 1 of 3, asked by bob at gate review:\n\nRename `x` to `count`.".into());
        let shipped = unescaped_repo_templates().render_template(&s.prompt_template, &prompt_data(&s)).expect("renders");
        assert!(shipped.contains("Rename `x` to `count`.") && shipped.contains("asked by bob"), "{shipped}");
        s.feedback = None;
        let plain = unescaped_repo_templates().render_template(&s.prompt_template, &prompt_data(&s)).expect("renders");
        assert!(!plain.contains("reviewer"), "no feedback, no section: {plain}");
    }

    #[test]
    fn a_retry_resumes_only_a_well_formed_session_with_a_resume_command() {
        let resume = vec!["claude".to_owned(), "--resume".to_owned(), "{{sessionId}}".to_owned()];
        let mut s = spec();
        assert_eq!(resume_of(&s), Ok(None), "a first attempt resumes nothing");
        s.resume_command = Some(resume.clone());
        assert_eq!(resume_of(&s), Ok(None), "nor does a retry without a session");
        s.resume_session = Some("495cc7e5-d22e".into());
        assert_eq!(resume_of(&s), Ok(Some((&resume, "495cc7e5-d22e"))));
        for bad in ["--dangerous", "-x", "a b", ""] {
            s.resume_session = Some(bad.into());
            assert!(resume_of(&s).is_err(), "{bad:?} never reaches the argument list");
        }
        s.resume_session = Some("ses-1".into());
        s.resume_command = None;
        assert!(resume_of(&s).is_err(), "no resume command, no resume");
        let mut data = command_data(&s, Path::new("/run/prompt.md"), Path::new("/run/workspace"));
        data["sessionId"] = serde_json::Value::String("ses-1".into());
        assert_eq!(keys(&data), crate::model::template_vars::RESUME_COMMAND_VARIABLES.iter().copied().collect());
    }

    #[test]
    fn a_misspelt_variable_fails_to_render_instead_of_vanishing() {
        let data = command_data(&spec(), Path::new("/run/prompt.md"), Path::new("/run/workspace"));
        let e =
            unescaped_repo_templates().render_template("--file={{promptFil}}", &data).expect_err("strict mode refuses a missing variable");
        let text = render_error(&e);
        assert!(text.contains("`{{promptFil}}`") && text.contains("hadron validate"), "{text}");
        // `if` tolerates a missing argument even in strict mode; `hadron
        // validate` (UnknownTemplateVariable) is what catches `{{#if titel}}`.
        let lenient = unescaped_repo_templates().render_template("{{#if titel}}x{{/if}}", &prompt_data(&spec())).expect("if is lenient");
        assert_eq!(lenient, "");
        let ok = unescaped_repo_templates().render_template("{{promptFile}} {{model}}", &data).expect("known variables render");
        assert_eq!(ok, "/run/prompt.md ");
    }
}
