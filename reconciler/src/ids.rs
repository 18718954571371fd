//! Names and ids that every layer shares: what a request, stage or worker
//! may be called, and the deterministic worker name. Pure functions, no I/O;
//! `model`, `plan`, `store` and `workers` all import them from here.

/// Most characters of an agent CLI's session id Hadron keeps.
pub const SESSION_ID_MAX: usize = 128;

/// Whether `id` is a session id Hadron accepts from an agent's output:
/// `^[A-Za-z0-9][A-Za-z0-9._:-]{0,127}$`. Agent-written text, so checked
/// before it is stored, shown or put in an argument list (it never begins
/// with `-`, so it cannot be read as a flag).
pub fn is_session_id(id: &str) -> bool {
    let mut bytes = id.bytes();
    bytes.next().is_some_and(|b| b.is_ascii_alphanumeric())
        && id.len() <= SESSION_ID_MAX
        && bytes.all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b':' | b'-'))
}

/// Whether `name` is a DNS-1123 label.
pub fn is_dns_label(name: &str) -> bool {
    let b = name.as_bytes();
    !b.is_empty()
        && b.len() <= 63
        && b.iter().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'-')
        && b[0] != b'-'
        && b[b.len() - 1] != b'-'
}

/// Whether a branch name is one git accepts (`git check-ref-format --branch`, simplified).
pub fn is_branch_name(name: &str) -> bool {
    !name.is_empty()
        && !name.starts_with('-')
        && !name.starts_with('/')
        && !name.ends_with('/')
        && !name.ends_with(".lock")
        && !name.ends_with('.')
        && !name.contains("..")
        && !name.contains("@{")
        && !name.contains("//")
        && !name.chars().any(|c| c.is_whitespace() || c.is_control() || "~^:?*[\\".contains(c))
}

/// Whether `name` can be a worker name [`worker_name`] gives: a DNS-1123
/// label (at most 63 characters) that starts with `hadron-`.
pub fn is_worker_name(name: &str) -> bool {
    is_dns_label(name) && name.starts_with("hadron-")
}

/// Why an installation name was refused.
#[derive(Debug, thiserror::Error)]
pub enum IdError {
    /// The name an operator set is no DNS-1123 label.
    #[error(
        "installation name `{}` is not a DNS-1123 label (1 to 63 lower-case letters, digits and `-`, not starting or ending with `-`); it becomes a Kubernetes label value",
        .0.escape_debug()
    )]
    InvalidInstallation(String),
}

impl IdError {
    /// Stable reason string.
    pub fn reason(&self) -> &'static str {
        match self {
            IdError::InvalidInstallation(_) => "InvalidInstallation",
        }
    }
}

/// Which Hadron installation a worker belongs to. Two installations (two
/// control repos, or two branches of one) may share a Kubernetes namespace
/// or a local runs folder: the installation goes into every worker's name
/// (so their names never meet), onto every object and run directory a
/// driver makes, and into what a driver watches, so neither adopts,
/// cancels or prunes the other's workers. Replicas of one installation (HA)
/// share it, and so share their workers.
///
/// Either a name the operator sets (`--installation`, a DNS-1123 label) or
/// [`Installation::derived`] from the control repo's URL and branch.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Installation(String);

impl Installation {
    /// The installation an operator named; refused unless it is a DNS-1123 label.
    pub fn named(name: &str) -> Result<Installation, IdError> {
        if is_dns_label(name) { Ok(Installation(name.to_owned())) } else { Err(IdError::InvalidInstallation(name.to_owned())) }
    }

    /// The installation of the control repo at `control_url`, branch
    /// `branch`: `<repo>-<hash>`, the repo's last path segment (without
    /// `.git`, cut to 20 characters) and 8 hex digits of a SHA-256 of the
    /// URL and branch. Credentials in the URL are left out, so rotating a
    /// token does not change it.
    pub fn derived(control_url: &str, branch: &str) -> Installation {
        use sha2::{Digest, Sha256};
        let url = without_userinfo(control_url.trim_end_matches('/'));
        let digest = Sha256::digest(format!("{url}\n{branch}").as_bytes());
        let last = url.rsplit(['/', ':']).next().unwrap_or_default();
        let last = last.strip_suffix(".git").unwrap_or(last);
        let mut stem = String::new();
        for c in last.chars().map(|c| c.to_ascii_lowercase()) {
            let c = if c.is_ascii_lowercase() || c.is_ascii_digit() { c } else { '-' };
            if !(c == '-' && (stem.is_empty() || stem.ends_with('-'))) && stem.len() < 20 {
                stem.push(c);
            }
        }
        let stem = stem.trim_end_matches('-');
        let stem = if stem.is_empty() { "hadron" } else { stem };
        Installation(format!("{stem}-{}", hex::encode(&digest[..4])))
    }

    /// The name, a DNS-1123 label.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// `default`: the installation of drivers and plans that are given none
/// (tests, library use). `hadron up` and `hadron serve` always give one.
impl Default for Installation {
    fn default() -> Self {
        Installation("default".to_owned())
    }
}

impl std::fmt::Display for Installation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// `url` without the `user:password@` of its authority, if it has one.
fn without_userinfo(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else { return url.to_owned() };
    let authority_end = rest.find('/').unwrap_or(rest.len());
    match rest[..authority_end].rfind('@') {
        Some(at) => format!("{scheme}://{}", &rest[at + 1..]),
        None => url.to_owned(),
    }
}

/// Length of the hash at the end of a worker name.
const WORKER_HASH_LEN: usize = 8;

/// The deterministic name of a worker: one per (installation, request,
/// generation, stage, repo, attempt). Names are DNS-1123 labels (they
/// become Job names), at most 63 characters:
/// `hadron-<request>-<stage>-<attempt>-<hash>` where the hash (8 hex
/// digits) covers the installation, the generation and the repo, shortened
/// when the request name is long.
pub fn worker_name(installation: &Installation, request: &str, generation: &str, stage: &str, repo_url: &str, attempt: u32) -> String {
    use sha2::{Digest, Sha256};
    let digest = Sha256::digest(format!("{installation}\n{request}\n{generation}\n{stage}\n{repo_url}").as_bytes());
    with_hash(request, stage, attempt, &hex::encode(&digest[..WORKER_HASH_LEN / 2]))
}

/// Whether `name` is a name [`worker_name`] gives attempt `attempt` of
/// `stage` of `request`, in some installation, for some generation and
/// repo: the parts a status file names besides the worker can be checked
/// against it without knowing the installation.
pub fn is_worker_name_of(name: &str, request: &str, stage: &str, attempt: u32) -> bool {
    let Some(hash) = name.len().checked_sub(WORKER_HASH_LEN).and_then(|at| name.get(at..)) else { return false };
    hash.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)) && with_hash(request, stage, attempt, hash) == name
}

/// `hadron-<request>-<stage>-<attempt>-<hash>`, the head cut to fit 63 characters.
fn with_hash(request: &str, stage: &str, attempt: u32, hash: &str) -> String {
    let tail = format!("-{attempt}-{hash}");
    let mut head = format!("hadron-{request}-{stage}");
    let room = 63usize.saturating_sub(tail.len());
    if head.len() > room {
        // On a character boundary: names come from files people write.
        let cut = (0..=room).rev().find(|&i| head.is_char_boundary(i)).unwrap_or(0);
        head.truncate(cut);
        while head.ends_with('-') {
            head.pop();
        }
    }
    format!("{head}{tail}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn session_ids_are_plain_tokens_that_cannot_be_flags() {
        for good in ["abc123", "495cc7e5-d22e-4192-92ba-4ce2d14827a6", "ses_494719016ffe85dkDMj0FPRbHK", "a:b.c_d-e", &"a".repeat(128)] {
            assert!(is_session_id(good), "{good}");
        }
        for bad in ["", "--dangerous", "-x", ".hidden", "_a", "a b", "a/b", "a\nb", "a$(id)", "é", &"a".repeat(129), "a\u{0}"] {
            assert!(!is_session_id(bad), "{bad:?}");
        }
    }

    #[test]
    fn installations_are_labels_named_or_derived_from_the_control_repo_and_branch() {
        assert_eq!(Installation::named("team-a").expect("a label").as_str(), "team-a");
        for bad in ["", "Team-A", "-a", "a-", "a_b", &"a".repeat(64), "a\u{1b}[2K"] {
            let err = Installation::named(bad).expect_err(bad);
            assert_eq!(err.reason(), "InvalidInstallation");
            assert!(err.to_string().contains("DNS-1123"), "{err}");
        }
        let a = Installation::derived("https://gitea.example.com/acme/Control_Repo.git", "main");
        assert!(a.as_str().starts_with("control-repo-") && is_dns_label(a.as_str()), "{a}");
        assert_eq!(
            a,
            Installation::derived("https://gitea.example.com/acme/Control_Repo.git/", "main"),
            "a trailing slash is the same repo"
        );
        assert_eq!(
            a,
            Installation::derived("https://hadron:s3cret@gitea.example.com/acme/Control_Repo.git", "main"),
            "credentials are not part of it: a rotated token keeps the installation"
        );
        assert_ne!(a, Installation::derived("https://gitea.example.com/acme/Control_Repo.git", "staging"), "another branch");
        assert_ne!(a, Installation::derived("https://gitea.example.com/other/Control_Repo.git", "main"), "another repo");
        for odd in ["/", "", "git@host:x.git", "/srv/-.git", &format!("/srv/{}.git", "ü".repeat(40))] {
            let id = Installation::derived(odd, "main");
            assert!(is_dns_label(id.as_str()), "{odd:?} gives {id}");
        }
    }

    #[test]
    fn worker_names_of_two_installations_never_meet_and_say_which_stage_and_attempt_they_run() {
        let (a, b) = (Installation::named("team-a").expect("label"), Installation::named("team-b").expect("label"));
        let of_a = worker_name(&a, "fix", "0011223344556677", "implement", "../app.git", 3);
        let of_b = worker_name(&b, "fix", "0011223344556677", "implement", "../app.git", 3);
        assert_ne!(of_a, of_b, "the same request in two installations runs under two names");
        for name in [&of_a, &of_b] {
            assert!(is_worker_name(name) && is_worker_name_of(name, "fix", "implement", 3), "{name}");
            assert!(!is_worker_name_of(name, "fix", "review", 3), "another stage: {name}");
            assert!(!is_worker_name_of(name, "fix", "implement", 2), "another attempt: {name}");
            assert!(!is_worker_name_of(name, "fox", "implement", 3), "another request: {name}");
        }
        assert!(!is_worker_name_of("hadron-fix-implement-3-0011223G", "fix", "implement", 3), "not hex");
        assert!(!is_worker_name_of("hadron-fix-implement-3-0011223", "fix", "implement", 3), "too short a hash");
        assert!(!is_worker_name_of("", "fix", "implement", 3));
        let long = worker_name(&a, &"é".repeat(40), "g", &"s".repeat(63), "u", 12);
        assert!(long.len() <= 63 && is_worker_name_of(&long, &"é".repeat(40), &"s".repeat(63), 12), "{long}");
    }
}
