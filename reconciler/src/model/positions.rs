//! Where the fields of a request that checks across files point at stand
//! in its text (`spec`, `spec.agent`, `spec.gates[i].after`), found once
//! when the file is parsed, so that the catalog need not keep the text of
//! 10,000 requests (6 MB) to say where a request names an agent that was
//! deleted since.
//!
//! A line scan of block-style YAML, as people write requests. Whatever it
//! is not sure of (flow collections, quoted or complex keys, anchors, tabs,
//! several documents) gives `None`, and the caller keeps the text and
//! locates fields with the YAML parser as before. A scan that does not
//! agree with the parsed request (an agent or a gate it did not find) is
//! dropped the same way.

/// Field path → 1-based line and column of its key, as `spans::Node::locate` gives them.
pub type Positions = Box<[(String, u64, u64)]>;

/// The line and column of `field`, or of its nearest parent found; `None`
/// when none of them was found.
pub fn lookup(positions: &[(String, u64, u64)], field: &str) -> Option<(u64, u64)> {
    let mut field = field;
    loop {
        if let Some((_, line, column)) = positions.iter().find(|(f, _, _)| f == field) {
            return Some((*line, *column));
        }
        field = &field[..field.rfind(['.', '['])?];
    }
}

/// A plain key at the start of `rest` (`name:` followed by a space or the
/// end of the line) and what follows the colon, trimmed.
fn plain_key(rest: &str) -> Option<(&str, &str)> {
    let colon = rest.find(':')?;
    let key = &rest[..colon];
    let plain = !key.is_empty() && key.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
    let after = &rest[colon + 1..];
    (plain && (after.is_empty() || after.starts_with(' '))).then(|| (key, after.trim()))
}

/// Whether a value is a plain or one-line quoted scalar, a comment, a block
/// scalar header (`|`, `>`) or nothing: anything else (flow collections,
/// anchors, aliases, tags, a quote left open) makes the scan unsure.
fn simple_value(value: &str) -> bool {
    let value = value.split(" #").next().unwrap_or("").trim_end();
    match value.chars().next() {
        None | Some('#') => true,
        Some('{' | '[' | '&' | '*' | '!' | '?' | '@' | '`' | '%') => false,
        Some(q @ ('"' | '\'')) => value.len() >= 2 && value.ends_with(q),
        Some(_) => true,
    }
}

fn indent_of(line: &str) -> usize {
    line.len() - line.trim_start_matches(' ').len()
}

/// The positions of `spec`, `spec.agent` and each `spec.gates[i].after`,
/// or `None` when the text is not plain block style where it matters or
/// the scan does not find what the parsed request has (`agent`: whether it
/// names one; `gates`: how many).
pub fn request_fields(text: &str, agent: bool, gates: usize) -> Option<Positions> {
    let mut found: Vec<(String, u64, u64)> = Vec::new();
    // The indentation of spec's keys, once seen; of gate items and their keys.
    let mut spec_keys: Option<usize> = None;
    let mut in_spec = false;
    let mut in_gates = false;
    let mut gate_items: Option<usize> = None;
    let mut gate = 0usize;
    // A block scalar's header key indentation: deeper lines are its text.
    let mut block_scalar: Option<usize> = None;
    for (i, raw) in text.split('\n').enumerate() {
        let line_no = i as u64 + 1;
        let line = raw.strip_suffix('\r').unwrap_or(raw);
        if line.contains('\t') && !line.trim().is_empty() && block_scalar.is_none() {
            return None;
        }
        let trimmed = line.trim_start_matches(' ');
        let indent = indent_of(line);
        if let Some(header) = block_scalar {
            if trimmed.is_empty() || indent > header {
                continue;
            }
            block_scalar = None;
        }
        if trimmed.is_empty() || trimmed.starts_with('#') {
            continue;
        }
        if indent == 0 && (trimmed.starts_with("---") || trimmed.starts_with("...")) {
            if line_no == 1 && trimmed.trim_end() == "---" {
                continue;
            }
            return None;
        }
        if indent == 0 {
            let (key, value) = plain_key(trimmed)?;
            if !simple_value(value) {
                return None;
            }
            in_spec = key == "spec";
            in_gates = false;
            if in_spec {
                if !value.is_empty() && !value.starts_with('#') {
                    return None;
                }
                found.push(("spec".to_owned(), line_no, 1));
            }
            if value.starts_with(['|', '>']) {
                block_scalar = Some(0);
            }
            continue;
        }
        if !in_spec {
            continue;
        }
        let keys = *spec_keys.get_or_insert(indent);
        if indent < keys {
            return None;
        }
        // A gate item (`- `), possibly at the indentation of spec's keys.
        if in_gates && (trimmed.starts_with("- ") || trimmed == "-") && gate_items.is_none_or(|g| g == indent) {
            gate_items = Some(indent);
            let rest = trimmed[1..].trim_start_matches(' ');
            let column = indent + (trimmed.len() - rest.len());
            gate += 1;
            if rest.is_empty() {
                continue;
            }
            let (key, value) = plain_key(rest)?;
            if !simple_value(value) {
                return None;
            }
            if key == "after" {
                found.push((format!("spec.gates[{}].after", gate - 1), line_no, column as u64 + 1));
            }
            if value.starts_with(['|', '>']) {
                block_scalar = Some(column);
            }
            continue;
        }
        if indent == keys {
            let (key, value) = plain_key(trimmed)?;
            if !simple_value(value) {
                return None;
            }
            in_gates = key == "gates";
            if in_gates && !value.is_empty() && !value.starts_with('#') {
                return None;
            }
            if key == "agent" {
                found.push(("spec.agent".to_owned(), line_no, indent as u64 + 1));
            }
            if value.starts_with(['|', '>']) {
                block_scalar = Some(indent);
            }
            continue;
        }
        if in_gates {
            // A key of the current gate item, one level in from its `- `.
            let items = gate_items?;
            if gate == 0 || trimmed.starts_with('-') {
                return None;
            }
            let (key, value) = plain_key(trimmed)?;
            if !simple_value(value) || indent <= items {
                return None;
            }
            if key == "after" {
                found.push((format!("spec.gates[{}].after", gate - 1), line_no, indent as u64 + 1));
            }
            if value.starts_with(['|', '>']) {
                block_scalar = Some(indent);
            }
        }
    }
    let agents = found.iter().filter(|(f, _, _)| f == "spec.agent").count();
    let afters = found.iter().filter(|(f, _, _)| f.ends_with("].after")).count();
    let specs = found.iter().filter(|(f, _, _)| f == "spec").count();
    (specs == 1 && agents == usize::from(agent) && afters == gates && gate == gates).then(|| found.into_boxed_slice())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::parse::yaml_options;
    use crate::model::spans::FieldPath;

    /// What the YAML parser says for each field the scan found.
    fn by_parser(text: &str, fields: &[&str]) -> Vec<(String, u64, u64)> {
        let tree: serde_saphyr::Spanned<crate::model::spans::Node> =
            serde_saphyr::from_str_with_options(text, yaml_options()).expect("test YAML parses");
        fields
            .iter()
            .map(|f| {
                let (line, column) = crate::model::spans::Node::locate(&tree, &FieldPath::parse(f));
                ((*f).to_owned(), line, column)
            })
            .collect()
    }

    fn check(text: &str, agent: bool, gates: usize) -> Option<Positions> {
        let scanned = request_fields(text, agent, gates)?;
        let fields: Vec<&str> = scanned.iter().map(|(f, _, _)| f.as_str()).collect();
        assert_eq!(scanned.to_vec(), by_parser(text, &fields), "the scan and the parser disagree on\n{text}");
        Some(scanned)
    }

    const HEAD: &str = "apiVersion: hadron.dev/v1alpha1\nkind: ChangeRequest\nmetadata:\n  name: x\n";

    #[test]
    fn block_style_requests_are_scanned_as_the_parser_reads_them() {
        let layouts = [
            "spec:\n  title: T\n  agent: a\n  repos:\n    - url: ../a.git\n",
            "spec:\n    title: T\n    description: |\n      agent: not a key\n      gates:\n    agent: a\n    gates:\n    - name: g\n      type: approval\n      after: implement\n",
            "spec:\n  title: T # comment\n  gates:\n    - after: implement\n      name: g\n    -\n      name: h\n      after: polish\n  agent: 'a'\n",
            "spec:\n  description: >\n    folded\n\n    text\n  title: \"T: x\"\n  agent: a\n  gates:\n    - name: g\n      description: |\n        after: no\n      after: implement\n",
            "spec:\r\n  title: T\r\n  agent: a\r\n",
        ];
        for (n, body) in layouts.iter().enumerate() {
            let text = format!("{HEAD}{body}");
            let gates = body.matches("after: implement").count() + body.matches("after: polish").count();
            let scanned = check(&text, body.contains("  agent:"), gates).unwrap_or_else(|| panic!("layout {n} not scanned:\n{text}"));
            assert_eq!(lookup(&scanned, "spec.agent.deeper"), lookup(&scanned, "spec.agent"));
        }
        let text = format!("---\n{HEAD}spec:\n  title: T\n  agent: a\n");
        assert_eq!(check(&text, true, 0).and_then(|s| lookup(&s, "spec.agent")), Some((8, 3)), "a document start first");
        let text = format!("{HEAD}spec:\n  title: T\n  agent: a\n");
        let scanned = check(&text, true, 0).expect("plain");
        assert_eq!(lookup(&scanned, "spec.agent"), Some((7, 3)));
        assert_eq!(lookup(&scanned, "spec.stages[0].name"), Some((5, 1)), "the nearest parent found");
    }

    #[test]
    fn anything_unsure_is_left_to_the_parser() {
        for body in [
            "spec: {title: T, agent: a}\n",
            "spec:\n  title: T\n  gates: [{name: g, type: approval, after: implement}]\n",
            "spec:\n  title: T\n  \"agent\": a\n",
            "spec: &s\n  title: T\n",
            "spec:\n  title: T\n  agent: *a\n",
            "spec:\n\ttitle: T\n",
            "spec:\n  title: T\n---\nspec:\n  agent: b\n",
            "spec:\n  title: 'open\n    quote'\n  agent: a\n",
        ] {
            let text = format!("{HEAD}{body}");
            assert_eq!(request_fields(&text, true, usize::from(body.contains("after"))), None, "{text}");
        }
        // The scan must find what the parsed request has.
        let text = format!("{HEAD}spec:\n  title: T\n  agent: a\n");
        assert_eq!(request_fields(&text, false, 0), None, "an agent the request does not have");
        assert_eq!(request_fields(&text, true, 1), None, "a gate the scan did not find");
    }
}
