//! The control-repo model: kinds, parsing with positions, validation.
//!
//! Everything here is pure: no I/O, no clock. The git source feeds blobs to
//! a [`Catalog`]; `hadron validate` feeds files from a directory.

pub mod diag;
pub mod duration;
pub mod kinds;
pub mod load;
pub mod spans;
pub mod validate;

use sha2::{Digest, Sha256};

pub use diag::{Code, Diagnostic, Severity};
pub use duration::DurationSpec;
pub use kinds::*;
pub use load::{Catalog, DesiredState, Loaded, MAX_FILE_BYTES};

impl ChangeRequest {
    /// The spec generation: a short hash of the spec's canonical JSON form.
    /// Any edit of the spec changes it; edits of metadata or comments do not.
    pub fn generation(&self) -> String {
        let json = serde_json::to_vec(&self.spec).expect("because a spec of plain strings and numbers always serialises");
        let digest = Sha256::digest(&json);
        hex::encode(&digest[..8])
    }
}
