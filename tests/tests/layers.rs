//! The house rules of `reconciler/src`, checked on the source text: no cycle
//! between top-level modules, nothing but the composition root (`up`) imports
//! the HTTP server, and the pure layers (`model`, `plan`, and the shared
//! domain modules) import no I/O layer. Test code (`#[cfg(test)]` modules,
//! `tests.rs`, `*_tests.rs`) may reach anywhere and is not counted.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use hadron_tests::workspace_root;

/// Top-level module → the top-level modules its non-test code names.
fn edges() -> BTreeMap<String, BTreeSet<String>> {
    fn walk(dir: &Path, src: &Path, out: &mut BTreeMap<String, BTreeSet<String>>) {
        for entry in std::fs::read_dir(dir).expect("read src").filter_map(Result::ok) {
            let path = entry.path();
            if path.is_dir() {
                walk(&path, src, out);
                continue;
            }
            let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
            if !name.ends_with(".rs") || name == "tests.rs" || name.ends_with("_tests.rs") || name == "lib.rs" || name == "main.rs" {
                continue;
            }
            let rel = path.strip_prefix(src).expect("under src");
            let top = rel.components().next().and_then(|c| c.as_os_str().to_str()).expect("a component").trim_end_matches(".rs").to_owned();
            let text = std::fs::read_to_string(&path).expect("read file");
            let code = text.split("#[cfg(test)]").next().unwrap_or("");
            let names = out.entry(top.clone()).or_default();
            for (i, _) in code.match_indices("crate::") {
                let rest = &code[i + "crate::".len()..];
                if let Some(group) = rest.strip_prefix('{') {
                    // `use crate::{a, b::c, …}`: every first segment in the group.
                    let group = &group[..group.find('}').unwrap_or(group.len())];
                    for item in group.split(',') {
                        let first = item.trim().split("::").next().unwrap_or("").trim();
                        if !first.is_empty() && first != top {
                            names.insert(first.to_owned());
                        }
                    }
                } else {
                    let first: String = rest.chars().take_while(|c| c.is_ascii_alphanumeric() || *c == '_').collect();
                    if !first.is_empty() && first != top {
                        names.insert(first);
                    }
                }
            }
        }
    }
    let src = workspace_root().join("reconciler/src");
    let mut out = BTreeMap::new();
    walk(&src, &src, &mut out);
    out
}

/// A cycle through `start`, if there is one.
fn cycle_from(start: &str, edges: &BTreeMap<String, BTreeSet<String>>) -> Option<Vec<String>> {
    fn dfs(
        node: &str,
        start: &str,
        edges: &BTreeMap<String, BTreeSet<String>>,
        path: &mut Vec<String>,
        seen: &mut BTreeSet<String>,
    ) -> bool {
        for next in edges.get(node).into_iter().flatten() {
            if next == start {
                path.push(next.clone());
                return true;
            }
            if seen.insert(next.clone()) {
                path.push(next.clone());
                if dfs(next, start, edges, path, seen) {
                    return true;
                }
                path.pop();
            }
        }
        false
    }
    let mut path = vec![start.to_owned()];
    dfs(start, start, edges, &mut path, &mut BTreeSet::new()).then_some(path)
}

#[test]
fn top_level_modules_form_no_cycle() {
    let edges = edges();
    assert!(edges.len() > 10, "the scan found the modules: {edges:?}");
    let cycles: Vec<String> = edges.keys().filter_map(|m| cycle_from(m, &edges)).map(|c| c.join(" -> ")).collect();
    assert!(cycles.is_empty(), "import cycles between top-level modules:\n{}\nedges: {edges:#?}", cycles.join("\n"));
}

#[test]
fn only_the_composition_root_imports_the_server() {
    let edges = edges();
    let importers: Vec<&String> = edges.iter().filter(|(m, to)| m.as_str() != "up" && to.contains("server")).map(|(m, _)| m).collect();
    assert!(importers.is_empty(), "modules importing `server`: {importers:?}");
}

#[test]
fn pure_layers_import_no_io_layer() {
    let edges = edges();
    let io = ["workers", "store", "forge", "source", "reconcile", "server", "up", "git", "gates", "status"];
    for pure in ["model", "plan", "ids", "attempt", "backoff", "time", "redact"] {
        let bad: Vec<&String> = edges.get(pure).into_iter().flatten().filter(|m| io.contains(&m.as_str())).collect();
        assert!(bad.is_empty(), "`{pure}` imports {bad:?}");
    }
}

#[test]
fn the_scan_sees_imports_in_both_forms() {
    // A self-check of the scanner on this crate's known edges.
    let edges = edges();
    assert!(edges["reconcile"].contains("plan") && edges["reconcile"].contains("store"), "{:?}", edges["reconcile"]);
    assert!(edges["up"].contains("server"), "{:?}", edges["up"]);
}
