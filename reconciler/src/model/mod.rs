//! The control-repo model: kinds, parsing with positions, validation.
//!
//! Everything here is pure: no I/O, no clock. The git source feeds blobs to
//! a [`Catalog`]; `hadron validate` feeds files from a directory.
//!
//! Loading goes one way, each file using only those before it: `file` (a
//! file's role, its object, a [`validate::Finding`]), `values` (predicates
//! on single values), `template_vars` (template variables and their
//! check), `validate` (checks of one object), `parse` (one file: path,
//! YAML, typed object, its checks), `desired` (the desired state, with the
//! checks across files), `load` (the [`Catalog`], updated file by file).

pub mod desired;
pub mod diag;
pub mod duration;
pub mod file;
pub mod kinds;
pub mod load;
pub mod parse;
pub mod positions;
pub mod spans;
pub mod template_vars;
pub mod validate;
pub mod values;

use sha2::{Digest, Sha256};

pub use desired::{DesiredState, Loaded};
pub use diag::{Code, Diagnostic, Severity};
pub use duration::DurationSpec;
pub use kinds::*;
pub use load::Catalog;
pub use parse::MAX_FILE_BYTES;

impl ChangeRequest {
    /// The spec generation: a short hash of the spec's canonical JSON form.
    /// Any edit of what the work is changes it; edits of metadata, comments,
    /// `priority` and `suspend` (which say when to run, not what) do not.
    /// Computed once per parsed request (a pass asks for it several times
    /// for each of 10,000 requests).
    pub fn generation(&self) -> String {
        self.generation_cache
            .get_or_init(|| {
                let mut spec = self.spec.clone();
                spec.priority = 0;
                spec.suspend = false;
                let json = serde_json::to_vec(&spec).expect("because a spec of plain strings and numbers always serialises");
                let digest = Sha256::digest(&json);
                hex::encode(&digest[..8])
            })
            .to_owned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const REQUEST: &str = "apiVersion: hadron.dev/v1alpha1\nkind: ChangeRequest\nmetadata:\n  name: fix\nspec:\n  title: Fix it\n  agent: a\n  repos: [{url: ../app.git}]\n  stages: [{name: implement}]\n";
    const AGENT: &str = "apiVersion: hadron.dev/v1alpha1\nkind: Agent\nmetadata:\n  name: a\nspec:\n  command: [sh, run.sh]\n";

    fn request(text: &str) -> std::sync::Arc<ChangeRequest> {
        let loaded = Catalog::load([("requests/fix.yaml", text.as_bytes()), ("agents/a.yaml", AGENT.as_bytes())]);
        assert_eq!(loaded.error_count(), 0, "{:?}", loaded.diagnostics);
        loaded.desired.requests["fix"].clone()
    }

    #[test]
    fn generation_follows_the_spec_only() {
        let base = request(REQUEST).generation();
        assert_eq!(base.len(), 16);
        let relabelled = REQUEST.replace("  name: fix\n", "  name: fix\n  labels: {team: a}\n# a comment\n");
        assert_eq!(request(&relabelled).generation(), base, "metadata and comments are not the spec");
        let paused = REQUEST.replace("  title: Fix it\n", "  title: Fix it\n  suspend: true\n  priority: 9\n");
        assert_eq!(request(&paused).generation(), base, "suspend and priority are not the work");
        let edited = REQUEST.replace("Fix it", "Fix it now");
        assert_ne!(request(&edited).generation(), base, "a spec edit is a new generation");
        // Computed once, and the cache is not part of what a request is.
        let (asked, fresh) = (request(REQUEST), request(REQUEST));
        assert_eq!(asked.generation(), asked.generation());
        assert_eq!(*asked, *fresh, "a request whose generation was asked for equals one whose was not");
        assert_eq!((*asked).clone().generation(), base, "a clone keeps the value");
    }

    #[test]
    fn labels_read_and_write_as_a_mapping() {
        let labelled = REQUEST.replace("  name: fix\n", "  name: fix\n  labels: {team: a, area: ui}\n");
        let request = request(&labelled);
        assert_eq!(request.metadata.labels.get("team"), Some("a"));
        assert_eq!(request.metadata.labels.iter().collect::<Vec<_>>(), [("area", "ui"), ("team", "a")], "sorted by key");
        assert_eq!(request.metadata.labels.get("nope"), None);
        let yaml = serde_saphyr::to_string(&request.metadata).expect("metadata serialises");
        assert!(yaml.contains("labels:\n  area: ui\n  team: a\n"), "{yaml}");
        assert!(!yaml.contains("annotations"), "an empty map is left out: {yaml}");
        let broken = REQUEST.replace("  name: fix\n", "  name: fix\n  labels: [a, b]\n");
        let loaded = Catalog::load([("requests/fix.yaml", broken.as_bytes()), ("agents/a.yaml", AGENT.as_bytes())]);
        assert!(loaded.desired.invalid_requests.contains_key("fix"), "labels must be a mapping");
    }

    #[test]
    fn catalog_updates_file_by_file() {
        let mut catalog = Catalog::new();
        catalog.upsert("agents/a.yaml", AGENT.as_bytes());
        catalog.upsert("requests/fix.yaml", b"not: [valid");
        catalog.upsert("README.md", b"ignored");
        assert_eq!(catalog.len(), 2, "files Hadron does not read are not kept");
        let loaded = catalog.snapshot();
        assert!(loaded.desired.invalid_requests.contains_key("fix"));
        catalog.upsert("requests/fix.yaml", REQUEST.as_bytes());
        let loaded = catalog.snapshot();
        assert!(loaded.desired.requests.contains_key("fix"));
        assert!(loaded.desired.invalid_requests.is_empty());
        catalog.remove("agents/a.yaml");
        let loaded = catalog.snapshot();
        let unknown = &loaded.desired.invalid_requests["fix"][0];
        assert_eq!(unknown.code, Code::UnknownAgent);
        // Located from the positions found at parse time (the text is not kept).
        assert_eq!((unknown.line, unknown.column, unknown.field.as_deref()), (7, 3, Some("spec.agent")));
    }

    /// Files for the incremental-equals-full property: settings, agents,
    /// requests (some broken, some with gates), approvals, statuses.
    fn variant(path: &str, v: u8) -> Option<String> {
        let req = |name: &str, agent: &str, title: &str, gated: bool| {
            let mut s = format!(
                "apiVersion: hadron.dev/v1alpha1\nkind: ChangeRequest\nmetadata:\n  name: {name}\nspec:\n  title: {title}\n  agent: {agent}\n  repos: [{{url: ../app.git}}]\n  stages: [{{name: implement}}]\n"
            );
            if gated {
                s.push_str("  gates: [{name: review, type: approval, after: implement}]\n");
            }
            s
        };
        let stem = path.rsplit('/').next()?.strip_suffix(".yaml")?;
        Some(match (path.split('/').next()?, v % 5) {
            (_, 4) => return None,
            ("hadron.yaml", n) => format!(
                "apiVersion: hadron.dev/v1alpha1\nkind: Settings\nmetadata:\n  name: hadron\nspec:\n  defaults:\n    agent: {}\n",
                ["a", "b", "zz", "a"][n as usize]
            ),
            ("agents", 3) => "kind: Agent\nbroken: [".to_owned(),
            ("agents", _) => {
                format!("apiVersion: hadron.dev/v1alpha1\nkind: Agent\nmetadata:\n  name: {stem}\nspec:\n  command: [sh, run.sh]\n")
            }
            ("requests", 0) => req(stem, "a", "Do it", true),
            ("requests", 1) => req(stem, "b", "Do it again", false),
            ("requests", 2) => req(stem, "nope", "Lost", true),
            ("requests", _) => "not: [valid".to_owned(),
            ("approvals", n) => {
                let request = path.split('/').nth(1)?;
                let gate = if n == 1 { "other" } else { stem };
                format!(
                    "apiVersion: hadron.dev/v1alpha1\nkind: Approval\nmetadata:\n  name: {request}-{stem}\nspec:\n  request: {request}\n  gate: {gate}\n  generation: g{n}\n"
                )
            }
            ("status", n) => format!(
                "apiVersion: hadron.dev/v1alpha1\nkind: RequestStatus\nmetadata:\n  name: {stem}\nstatus:\n  observedRevision: r\n  observedGeneration: g{n}\n  phase: Running\n"
            ),
            _ => return None,
        })
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig { cases: 64, ..Default::default() })]
        #[test]
        fn incremental_catalog_equals_a_full_load(edits in proptest::collection::vec((0usize..10, 0u8..10), 1..40)) {
            const PATHS: [&str; 10] = [
                "hadron.yaml", "agents/a.yaml", "agents/b.yaml", "requests/x.yaml", "requests/y.yaml",
                "requests/z.yaml", "approvals/x/review.yaml", "approvals/y/review.yaml", "status/x.yaml", "status/q.yaml",
            ];
            let mut files: std::collections::BTreeMap<&str, String> = Default::default();
            let mut catalog = Catalog::new();
            for (i, v) in edits {
                let path = PATHS[i];
                match variant(path, v) {
                    Some(text) => {
                        catalog.upsert(path, text.as_bytes());
                        files.insert(path, text);
                    }
                    None => {
                        catalog.remove(path);
                        files.remove(path);
                    }
                }
                let full = Catalog::load(files.iter().map(|(p, t)| (*p, t.as_bytes())));
                proptest::prop_assert_eq!(catalog.refresh(), &full);
            }
        }
    }

    #[test]
    fn dns_labels() {
        for ok in ["a", "fix-1", "0abc", &"a".repeat(63)] {
            assert!(validate::is_dns_label(ok), "{ok}");
        }
        for bad in ["", "-a", "a-", "A", "a_b", "a.b", "a/b", "..", &"a".repeat(64)] {
            assert!(!validate::is_dns_label(bad), "{bad}");
        }
    }

    #[test]
    fn repo_urls() {
        for ok in [
            "https://gitea.example.com/acme/app.git",
            "ssh://git@host:2222/acme/app.git",
            "git@host:acme/app.git",
            "file:///srv/git/app.git",
            "../app.git",
            "./app.git",
            "/srv/git/app.git",
        ] {
            assert_eq!(validate::repo_url_problem(ok), None, "{ok}");
        }
        for bad in ["", "https://", "https:///x", "ftp://h/x", "ext::sh -c x", "-uhack", "app", "https://h/a b"] {
            assert!(validate::repo_url_problem(bad).is_some(), "{bad}");
        }
    }

    #[test]
    fn credentials_in_urls() {
        for with in ["https://bob:pw@h/a.git", "https://TOKEN@h/a.git", "http://u@h/a.git", "ssh://git:pw@h/a.git"] {
            assert!(validate::url_has_credentials(with), "{with}");
            assert!(
                !crate::redact::url_credentials(with).contains("pw") && crate::redact::url_credentials(with).contains("***@h/"),
                "{with}"
            );
        }
        for without in ["ssh://git@host:2222/acme/app.git", "git@host:acme/app.git", "https://h/a@b.git", "../app.git", "https://h/x"] {
            assert!(!validate::url_has_credentials(without), "{without}");
        }
    }

    #[test]
    fn secrets_by_name_or_shape() {
        assert!(validate::looks_like_secret_value("sk-ant-api03-0123456789abcdef"));
        assert!(validate::looks_like_secret_value("-----BEGIN OPENSSH PRIVATE KEY-----"));
        assert!(!validate::looks_like_secret_value("sk-"));
        let agent =
            AGENT.replace("  command: [sh, run.sh]\n", "  command: [sh, run.sh]\n  env:\n    - name: DB_PASSWORD\n      value: hunter2\n");
        let loaded = Catalog::load([("agents/a.yaml", agent.as_bytes())]);
        let codes: Vec<Code> = loaded.diagnostics.iter().filter(|d| d.is_error()).map(|d| d.code).collect();
        assert_eq!(codes, [Code::InlineSecret]);
        assert!(
            !loaded.diagnostics.iter().any(|d| d.message.contains("hunter2") || d.help.contains("hunter2")),
            "a diagnostic must not repeat the secret"
        );
    }
}
