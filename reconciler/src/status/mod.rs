//! Status: Hadron writes what happened back into the control repo's `status/` folder.
//!
//! [`render`] turns a request's state into `status/<request>.yaml` (pure,
//! deterministic: unchanged state gives unchanged bytes). [`writer`] is the
//! single git writer: it applies Hadron's own `status/**` files onto the
//! branch head, commits them as one commit with a `Hadron-Revision:` trailer,
//! and pushes fast-forward only, re-fetching and re-applying on a rejected
//! push so no human commit is ever lost.

pub mod render;
pub mod writer;
