//! The docs a newcomer reads stay true to the repository: every relative link
//! in README.md, CONTRIBUTING.md and docs/**/*.md names a file that exists
//! (and, with `#anchor`, a heading of that file), and every `hadron <sub>`
//! (or `cargo run -- <sub>`) command README.md shows in a shell code block
//! still parses: `hadron <sub> --help` exits 0.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use hadron_tests::{hadron_bin, run, workspace_root};

/// README.md, CONTRIBUTING.md and every `.md` under docs/, sorted.
fn documents() -> Vec<PathBuf> {
    fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
        for entry in std::fs::read_dir(dir).expect("because docs/ is readable").filter_map(Result::ok) {
            let path = entry.path();
            if path.is_dir() {
                walk(&path, out);
            } else if path.extension().is_some_and(|e| e == "md") {
                out.push(path);
            }
        }
    }
    let root = workspace_root();
    let mut out = vec![root.join("README.md"), root.join("CONTRIBUTING.md")];
    walk(&root.join("docs"), &mut out);
    out.sort();
    out
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()))
}

fn shown(path: &Path) -> String {
    path.strip_prefix(workspace_root()).unwrap_or(path).display().to_string()
}

/// The lines of `text` outside fenced code blocks, with their 1-based numbers.
fn prose_lines(text: &str) -> Vec<(usize, &str)> {
    let mut fence: Option<&str> = None;
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let trimmed = line.trim_start();
        let marker = if trimmed.starts_with("```") {
            Some("```")
        } else if trimmed.starts_with("~~~") {
            Some("~~~")
        } else {
            None
        };
        match (fence, marker) {
            (None, Some(m)) => fence = Some(m),
            (Some(f), Some(m)) if f == m => fence = None,
            (None, None) => out.push((i + 1, line)),
            _ => {}
        }
    }
    out
}

/// `line` with its inline code spans blanked (a link inside backticks is text).
fn without_code_spans(line: &str) -> String {
    let mut out = String::with_capacity(line.len());
    let mut in_code = false;
    for c in line.chars() {
        if c == '`' {
            in_code = !in_code;
            out.push(' ');
        } else {
            out.push(if in_code { ' ' } else { c });
        }
    }
    out
}

/// The targets of the inline links and images (`[text](target "title")`)
/// and of the reference definitions (`[label]: target`) on one line.
fn link_targets(line: &str) -> Vec<String> {
    let line = without_code_spans(line);
    let mut out = Vec::new();
    if let Some(rest) = line.trim_start().strip_prefix('[')
        && let Some(end) = rest.find("]:")
    {
        if let Some(target) = rest[end + 2..].split_whitespace().next() {
            out.push(target.trim_matches(['<', '>']).to_owned());
        }
        return out;
    }
    for (i, _) in line.match_indices("](") {
        let rest = &line[i + 2..];
        let Some(end) = rest.find(')') else { continue };
        if let Some(target) = rest[..end].split_whitespace().next() {
            out.push(target.trim_matches(['<', '>']).to_owned());
        }
    }
    out
}

/// GitHub's anchor for a heading: lowercase, every character but
/// alphanumerics, spaces, hyphens and underscores dropped, spaces made `-`.
fn github_slug(heading: &str) -> String {
    heading
        .trim()
        .to_lowercase()
        .chars()
        .filter(|c| c.is_alphanumeric() || *c == ' ' || *c == '-' || *c == '_')
        .map(|c| if c == ' ' { '-' } else { c })
        .collect()
}

/// The anchors of a Markdown file's headings (a repeated heading's later
/// anchors get `-1`, `-2`, … as on GitHub).
fn anchors(text: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    for (_, line) in prose_lines(text) {
        let trimmed = line.trim_start();
        let hashes = trimmed.chars().take_while(|c| *c == '#').count();
        if !(1..=6).contains(&hashes) || !trimmed[hashes..].starts_with(' ') {
            continue;
        }
        let slug = github_slug(trimmed[hashes..].trim_end_matches('#'));
        let mut candidate = slug.clone();
        let mut n = 0;
        while out.contains(&candidate) {
            n += 1;
            candidate = format!("{slug}-{n}");
        }
        out.insert(candidate);
    }
    out
}

/// What is wrong with one link target of `doc`, if anything.
fn broken(doc: &Path, text: &str, target: &str) -> Option<String> {
    if target.is_empty() || target.contains("://") || target.starts_with("mailto:") {
        return None;
    }
    let (path, anchor) = match target.split_once('#') {
        Some((p, a)) => (p, Some(a)),
        None => (target, None),
    };
    let file = if path.is_empty() { doc.to_owned() } else { doc.parent().expect("because a document is in a folder").join(path) };
    if !file.exists() {
        return Some(format!("{} does not exist", shown(&file)));
    }
    let anchor = anchor?;
    if file.is_dir() || file.extension().is_none_or(|e| e != "md") {
        return Some(format!("#{anchor} points into {}, which is no Markdown file", shown(&file)));
    }
    let target_text = if path.is_empty() { text.to_owned() } else { read(&file) };
    (!anchors(&target_text).contains(anchor)).then(|| format!("{} has no heading whose anchor is #{anchor}", shown(&file)))
}

#[test]
fn every_relative_link_in_the_docs_resolves() {
    let mut failures = Vec::new();
    let mut checked = 0;
    for doc in documents() {
        let text = read(&doc);
        for (n, line) in prose_lines(&text) {
            for target in link_targets(line) {
                checked += 1;
                if let Some(why) = broken(&doc, &text, &target) {
                    failures.push(format!("{}:{n}: link `{target}`: {why}", shown(&doc)));
                }
            }
        }
    }
    assert!(checked > 20, "the scan found the links ({checked} only)");
    assert!(failures.is_empty(), "broken links:\n{}", failures.join("\n"));
}

#[test]
fn the_link_checker_sees_what_github_sees() {
    assert_eq!(github_slug("The dashboard and previews"), "the-dashboard-and-previews");
    assert_eq!(github_slug("What CI checks"), "what-ci-checks");
    assert_eq!(github_slug("`hadron up`: one process, one store (v0.2)"), "hadron-up-one-process-one-store-v02");
    assert_eq!(anchors("# A\n```\n# not a heading\n```\n## A\n"), BTreeSet::from(["a".to_owned(), "a-1".to_owned()]));
    assert_eq!(
        link_targets("see [x](docs/a.md#b \"t\"), ![i](img.png) and `[not](a link)`"),
        vec!["docs/a.md#b".to_owned(), "img.png".to_owned()]
    );
    assert_eq!(link_targets("[label]: ../x.md"), vec!["../x.md".to_owned()]);
}

/// The `hadron` arguments of a shell line, when it runs Hadron: `hadron
/// <args>` or `cargo run [options] -- <args>`, after an optional `$ ` prompt
/// and `NAME=value` assignments.
fn hadron_args(segment: &str) -> Option<Vec<String>> {
    let segment = segment.split(" #").next().unwrap_or("");
    let mut words = segment.split_whitespace().skip_while(|w| w.contains('=') && !w.starts_with('-')).peekable();
    match words.next()? {
        "hadron" => Some(words.map(str::to_owned).collect()),
        "cargo" if words.peek() == Some(&"run") => {
            let args: Vec<String> = words.skip_while(|w| *w != "--").skip(1).map(str::to_owned).collect();
            Some(args)
        }
        _ => None,
    }
}

/// The commands in README.md's `sh`, `bash` and `console` code blocks that
/// run Hadron, with their line numbers (a line continued by `\` is one
/// command; `&&`, `;` and `|` separate commands).
fn readme_commands() -> Vec<(usize, String, Vec<String>)> {
    let text = read(&workspace_root().join("README.md"));
    let mut out = Vec::new();
    let mut shell = false;
    let mut in_block = false;
    let mut pending: Option<(usize, String)> = None;
    for (i, line) in text.lines().enumerate() {
        let trimmed = line.trim();
        if let Some(info) = trimmed.strip_prefix("```") {
            if in_block {
                in_block = false;
                shell = false;
            } else {
                in_block = true;
                shell = matches!(info.trim(), "sh" | "bash" | "console" | "shell");
            }
            continue;
        }
        if !shell {
            continue;
        }
        let line = trimmed.strip_prefix("$ ").unwrap_or(trimmed);
        let (start, mut joined) = pending.take().unwrap_or((i + 1, String::new()));
        if let Some(head) = line.strip_suffix('\\') {
            joined.push_str(head);
            joined.push(' ');
            pending = Some((start, joined));
            continue;
        }
        joined.push_str(line);
        for segment in joined.split("&&").flat_map(|s| s.split(';')).flat_map(|s| s.split('|')) {
            if let Some(args) = hadron_args(segment) {
                out.push((start, segment.trim().to_owned(), args));
            }
        }
    }
    out
}

/// The subcommands `help` (a `--help` text) lists under `Commands:`.
fn listed_subcommands(help: &str) -> BTreeSet<String> {
    help.lines()
        .skip_while(|l| !l.starts_with("Commands:"))
        .skip(1)
        .take_while(|l| l.starts_with("  "))
        .filter_map(|l| l.split_whitespace().next().map(str::to_owned))
        .collect()
}

#[test]
fn every_hadron_command_the_readme_shows_parses() {
    let commands = readme_commands();
    assert!(!commands.is_empty(), "README.md shows no `hadron` command in a shell code block");
    let top = listed_subcommands(&String::from_utf8_lossy(&run(hadron_bin!(), &["--help"]).stdout));
    assert!(top.contains("up") && top.contains("validate"), "`hadron --help` lists its subcommands: {top:?}");
    let mut failures = Vec::new();
    for (line, command, args) in commands {
        let Some(sub) = args.first().filter(|a| !a.starts_with('-')) else { continue };
        let mut path = vec![sub.as_str()];
        let out = run(hadron_bin!(), &[sub.as_str(), "--help"]);
        if !out.status.success() {
            failures.push(format!("README.md:{line}: `{command}`: `hadron {sub} --help` fails ({})", out.status));
            continue;
        }
        if let Some(next) = args.get(1)
            && listed_subcommands(&String::from_utf8_lossy(&out.stdout)).contains(next)
        {
            path.push(next);
        }
        if path.len() > 1 {
            let mut help = path.clone();
            help.push("--help");
            let out = run(hadron_bin!(), &help);
            if !out.status.success() {
                failures.push(format!("README.md:{line}: `{command}`: `hadron {} --help` fails ({})", path.join(" "), out.status));
            }
        }
    }
    assert!(failures.is_empty(), "README commands that no longer parse:\n{}", failures.join("\n"));
}

#[test]
fn the_command_finder_reads_shell_lines_as_a_shell_does() {
    assert_eq!(hadron_args("cargo run -q --release -- up example-repo   # run it"), Some(vec!["up".to_owned(), "example-repo".to_owned()]));
    assert_eq!(
        hadron_args("HADRON_LISTEN=:8080 hadron serve --driver local"),
        Some(vec!["serve".into(), "--driver".into(), "local".into()])
    );
    assert_eq!(hadron_args("cargo test --workspace"), None);
    assert_eq!(hadron_args("git push"), None);
    assert_eq!(
        listed_subcommands("x\nCommands:\n  up  Run\n  serve  Serve\n\nOptions:\n  -h\n"),
        BTreeSet::from(["up".to_owned(), "serve".to_owned()])
    );
}
