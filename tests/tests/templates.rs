//! The shipped prompt template compiles and renders the documented variables.

use hadron_tests::workspace_root;
use serde_json::json;

#[test]
fn default_prompt_renders_request_fields() {
    let text = std::fs::read_to_string(workspace_root().join("templates/prompt.md.hbs")).expect("read template");
    let mut hb = handlebars::Handlebars::new();
    hb.set_strict_mode(true);
    hb.register_escape_fn(handlebars::no_escape);
    hb.register_template_string("prompt", &text).expect("template compiles");
    let data = json!({
        "repo": "../demo-app.git", "branch": "hadron/add-greeting", "title": "Add a <greeting>",
        "description": "Print hello.", "stage": "review", "request": "add-greeting",
        "previousStages": [{"name": "implement", "repo": "../demo-app.git", "summary": "wrote app.sh"}]
    });
    let out = hb.render("prompt", &data).expect("renders with every documented variable");
    assert!(out.contains("Task: Add a <greeting>"), "{out}");
    assert!(out.contains("- implement on ../demo-app.git: wrote app.sh"), "{out}");
    assert!(out.contains("stage \"review\" of the request \"add-greeting\""), "{out}");
}
