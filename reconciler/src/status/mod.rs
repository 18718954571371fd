//! Status: Hadron writes what happened back into the control repo's `status/` folder.
//!
//! [`writer`] is the single git writer: it applies Hadron's own `status/**` files onto the
//! branch head, commits them as one commit with a `Hadron-Revision:` trailer, and pushes
//! fast-forward only, re-fetching and re-applying on a rejected push so no human commit is
//! ever lost.

pub mod writer;
