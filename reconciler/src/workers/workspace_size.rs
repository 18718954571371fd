//! The workspace budget: what an agent may write into its workspace, its
//! private `/tmp` and its report folder, measured as growth over the fresh
//! checkout, watched while it runs and checked again before a push.

use std::path::{Path, PathBuf};

/// The budget when the request sets none (`budget.maxWorkspaceSize`).
pub const DEFAULT_MAX_WORKSPACE_BYTES: u64 = 1 << 30;
/// How many of the biggest files a refusal names.
const BIGGEST: usize = 5;

/// The bytes under the folders, and the biggest files.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub(super) struct Usage {
    pub(super) bytes: u64,
    pub(super) biggest: Vec<(u64, PathBuf)>,
}

/// Measures the regular files under `roots` (symbolic links are not
/// followed). Unreadable entries count as nothing.
pub(super) fn measure(roots: &[&Path]) -> Usage {
    let mut usage = Usage::default();
    let mut stack: Vec<PathBuf> = roots.iter().map(|r| r.to_path_buf()).collect();
    while let Some(dir) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else { continue };
        for entry in entries.flatten() {
            let Ok(meta) = entry.metadata() else { continue };
            if meta.is_dir() {
                stack.push(entry.path());
            } else if meta.is_file() {
                // What it takes on disk (as `du` counts): a sparse file
                // counts the blocks it holds, not its length.
                use std::os::unix::fs::MetadataExt;
                let size = meta.blocks().saturating_mul(512);
                usage.bytes = usage.bytes.saturating_add(size);
                usage.biggest.push((size, entry.path()));
                if usage.biggest.len() > 4 * BIGGEST {
                    usage.biggest.sort_by_key(|b| std::cmp::Reverse(b.0));
                    usage.biggest.truncate(BIGGEST);
                }
            }
        }
    }
    usage.biggest.sort_by_key(|b| std::cmp::Reverse(b.0));
    usage.biggest.truncate(BIGGEST);
    usage
}

/// A size for people (the one formatter, in the shared domain).
pub(super) use crate::attempt::human_bytes as human;

/// The biggest files, named relative to `base` where they are under it.
pub(super) fn describe(biggest: &[(u64, PathBuf)], bases: &[&Path]) -> String {
    let names: Vec<String> = biggest
        .iter()
        .map(|(size, path)| {
            let shown = bases.iter().find_map(|b| path.strip_prefix(b).ok()).unwrap_or(path);
            let text: String = shown.display().to_string().chars().take(120).map(|c| if c.is_control() { '?' } else { c }).collect();
            format!("{text} ({})", human(*size))
        })
        .collect();
    if names.is_empty() { "none".to_owned() } else { names.join(", ") }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn measures_files_and_names_the_biggest() {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::create_dir_all(dir.path().join("a/b")).expect("mkdir");
        std::fs::write(dir.path().join("a/b/big"), vec![1u8; 300_000]).expect("write");
        std::fs::write(dir.path().join("small"), b"hi").expect("write");
        let usage = measure(&[dir.path()]);
        assert!(usage.bytes >= 300_002, "{usage:?}");
        assert_eq!(usage.biggest[0].1, dir.path().join("a/b/big"));
        let named = describe(&usage.biggest[..1], &[dir.path()]);
        assert!(named.starts_with("a/b/big (29") && named.ends_with(" KiB)"), "{named}");
        assert_eq!(human(3 << 30), "3.0 GiB");
        assert_eq!(human(5), "5 B");
    }
}
