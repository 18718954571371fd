//! What the dashboard shows of each request: the request as asked (title,
//! repos, pipeline, budget) and its status as last rendered. The loop
//! rebuilds the board after a pass that rendered anything; the server reads
//! the latest one. Shared, not copied: both halves are the loop's own `Arc`s.

use std::collections::BTreeMap;
use std::sync::{Arc, RwLock};

use crate::model::{ChangeRequest, RequestStatus, Settings};

/// One request on the board.
#[derive(Debug, Clone)]
pub struct BoardRequest {
    /// The request as the control repo asks for it (`None`: invalid).
    pub request: Option<Arc<ChangeRequest>>,
    /// Its status, as last rendered.
    pub status: Arc<RequestStatus>,
}

/// Every request the loop knows, by name.
#[derive(Debug, Clone, Default)]
pub struct Board {
    /// Requests by name.
    pub requests: BTreeMap<String, BoardRequest>,
    /// `hadron.yaml` as loaded (default stages, …).
    pub settings: Arc<Settings>,
    /// The control-repo revision of the pass that built it.
    pub revision: String,
}

/// The board the server reads: replaced whole by the loop.
pub type BoardCell = Arc<RwLock<Arc<Board>>>;

impl Board {
    /// The board of `statuses` (as rendered) with the requests of `desired`.
    pub fn build<'a>(
        desired: &crate::model::DesiredState,
        statuses: impl Iterator<Item = (&'a String, &'a Arc<RequestStatus>)>,
        revision: &str,
    ) -> Board {
        let requests = statuses
            .map(|(name, status)| (name.clone(), BoardRequest { request: desired.requests.get(name).cloned(), status: status.clone() }))
            .collect();
        Board { requests, settings: desired.settings.clone(), revision: revision.to_owned() }
    }
}

/// Replaces the board in `cell` (a poisoned lock is taken over: the board is
/// replaced whole, never left half-written).
pub fn publish(cell: &BoardCell, board: Board) {
    *cell.write().unwrap_or_else(std::sync::PoisonError::into_inner) = Arc::new(board);
}

/// The board in `cell` now.
pub fn current(cell: &BoardCell) -> Arc<Board> {
    cell.read().unwrap_or_else(std::sync::PoisonError::into_inner).clone()
}
