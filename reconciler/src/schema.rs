//! JSON Schemas for every kind, generated from the Rust types so the two
//! cannot drift apart. `hadron schema --out schemas/` writes them; a test
//! fails when the checked-in copies are stale.

use schemars::{JsonSchema, Schema};
use serde_json::{Value, json};

use crate::model::kinds::{API_VERSION, Agent, Approval, ChangeRequest, RequestStatus, Settings};

/// `(file name, schema)` for every kind, in a fixed order.
pub fn all() -> Vec<(&'static str, String)> {
    vec![
        ("settings.schema.json", render::<Settings>("Settings")),
        ("agent.schema.json", render::<Agent>("Agent")),
        ("changerequest.schema.json", render::<ChangeRequest>("ChangeRequest")),
        ("approval.schema.json", render::<Approval>("Approval")),
        ("requeststatus.schema.json", render::<RequestStatus>("RequestStatus")),
    ]
}

/// The schema file that validates a kind, by `kind` value.
pub fn file_for_kind(kind: &str) -> Option<&'static str> {
    Some(match kind {
        "Settings" => "settings.schema.json",
        "Agent" => "agent.schema.json",
        "ChangeRequest" => "changerequest.schema.json",
        "Approval" => "approval.schema.json",
        "RequestStatus" => "requeststatus.schema.json",
        _ => return None,
    })
}

fn render<T: JsonSchema>(kind: &str) -> String {
    let schema: Schema = schemars::schema_for!(T);
    let mut value: Value = schema.to_value();
    if let Some(obj) = value.as_object_mut() {
        obj.insert("$id".into(), json!(format!("https://hadron.dev/schemas/{}.schema.json", kind.to_ascii_lowercase())));
        if let Some(props) = obj.get_mut("properties").and_then(Value::as_object_mut) {
            props.insert("apiVersion".into(), json!({"const": API_VERSION, "description": format!("Always `{API_VERSION}`.")}));
            props.insert("kind".into(), json!({"const": kind, "description": format!("Always `{kind}`.")}));
        }
    }
    // Names are DNS-1123 labels: say so to editors.
    if let Some(name) = value.pointer_mut("/$defs/Metadata/properties/name").and_then(Value::as_object_mut) {
        name.insert("pattern".into(), json!("^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"));
        name.insert("maxLength".into(), json!(63));
    }
    let mut text = serde_json::to_string_pretty(&value).expect("because a JSON value always serialises");
    text.push('\n');
    text
}
