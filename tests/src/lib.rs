//! Shared helpers for the integration tests: run the real `hadron` binary,
//! copy fixture trees.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};


/// The workspace root (the folder with the top-level Cargo.toml).
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("because tests/ sits in the workspace root").to_owned()
}

/// `tests/fixtures` in the workspace: copies of real third-party data (see its README).
pub fn fixtures() -> PathBuf {
    workspace_root().join("tests/fixtures")
}

/// Path of the built `hadron` binary. A macro because Cargo defines
/// `CARGO_BIN_EXE_*` only while compiling the integration tests themselves.
#[macro_export]
macro_rules! hadron_bin {
    () => {
        env!("CARGO_BIN_EXE_hadron-under-test")
    };
}

/// Runs the built binary with `args` and returns its output.
pub fn run(bin: &str, args: &[&str]) -> Output {
    Command::new(bin).args(args).output().expect("because the hadron binary was built for these tests")
}

/// Copies a folder tree (files and folders only).
pub fn copy_tree(from: &Path, to: &Path) -> std::io::Result<()> {
    std::fs::create_dir_all(to)?;
    for entry in std::fs::read_dir(from)? {
        let entry = entry?;
        let target = to.join(entry.file_name());
        if entry.file_type()?.is_dir() {
            copy_tree(&entry.path(), &target)?;
        } else {
            std::fs::copy(entry.path(), &target)?;
        }
    }
    Ok(())
}
