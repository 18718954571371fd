//! Names and ids that every layer shares: what a request, stage or worker
//! may be called, and the deterministic worker name. Pure functions, no I/O;
//! `model`, `plan`, `store` and `workers` all import them from here.

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

/// The deterministic name of a worker: one per (request, generation, stage,
/// repo, attempt). Names are DNS-1123 labels (they become Job names), at most
/// 63 characters: `hadron-<request>-<stage>-<attempt>-<hash>` where the hash
/// covers the generation and the repo, shortened when the request name is long.
pub fn worker_name(request: &str, generation: &str, stage: &str, repo_url: &str, attempt: u32) -> String {
    use sha2::{Digest, Sha256};
    let digest = Sha256::digest(format!("{request}\n{generation}\n{stage}\n{repo_url}").as_bytes());
    let hash = hex::encode(&digest[..4]);
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
