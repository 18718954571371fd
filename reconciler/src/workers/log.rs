//! `worker.log`: the worker's log, with every secret value replaced by `***`.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::Path;
use std::sync::Mutex;

use crate::time::now_rfc3339;

/// `worker.log`, with every secret value replaced by `***`.
pub(super) struct Log {
    file: Mutex<File>,
    secrets: Vec<String>,
}

impl Log {
    pub(super) fn open(path: &Path, mut secrets: Vec<String>) -> std::io::Result<Log> {
        let file = OpenOptions::new().create(true).append(true).open(path)?;
        // Longest first, so a secret containing another is fully replaced.
        secrets.sort_by_key(|s| std::cmp::Reverse(s.len()));
        Ok(Log { file: Mutex::new(file), secrets })
    }

    pub(super) fn redact(&self, text: &str) -> String {
        let mut out = text.to_owned();
        for s in &self.secrets {
            if !s.is_empty() && out.contains(s.as_str()) {
                out = out.replace(s.as_str(), "***");
            }
        }
        out
    }

    pub(super) fn write(&self, text: &str) {
        let text = self.redact(text);
        if let Ok(mut f) = self.file.lock() {
            let _ = f.write_all(text.as_bytes());
        }
    }

    pub(super) fn line(&self, text: &str) {
        self.write(&format!("[{}] {text}\n", now_rfc3339()));
    }
}
