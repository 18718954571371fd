//! Who holds the server's connections and event streams, so that no peer
//! (and no crowd) can hold the public port shut.
//!
//! * **Connections** are counted per peer (IP address) and in total. A
//!   connection is *idle* while no request of it is being answered: before
//!   its first request's headers are in (a slowloris), or between requests
//!   of a kept-alive connection. When a new connection finds a limit reached,
//!   the oldest idle connection (of that peer for the per-peer limit, of
//!   anyone for the total) is closed to make room, as nginx does with its
//!   reusable connections; only when every connection under the limit is busy
//!   is the new one refused, with a one-line HTTP answer (429 for the
//!   per-peer limit, 503 for the total) and `Retry-After`.
//! * **Event streams** (`GET /api/v1/events`, held open for as long as the
//!   client likes) are counted per peer and in total; the excess is answered
//!   429 / 503 at once, with `Connection: close`.
//!
//! Accepting never waits on either: a refusal is decided under a short lock
//! and written without waiting for the client.

use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use tokio::sync::Notify;

/// What a connection limit applies to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    /// One peer's connections or streams.
    Peer,
    /// Everyone's.
    Total,
}

/// The peer of a request, put in its extensions by the server.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Peer(pub IpAddr);

/// The canonical form of a peer's address: an IPv4-mapped IPv6 address is
/// the IPv4 peer it stands for.
pub fn peer_of(addr: std::net::SocketAddr) -> IpAddr {
    addr.ip().to_canonical()
}

#[derive(Debug)]
struct Entry {
    peer: IpAddr,
    /// Requests of this connection being answered (their bodies included).
    busy: Arc<AtomicUsize>,
    /// Told when the connection is closed to make room.
    evict: Arc<Notify>,
}

#[derive(Debug, Default)]
struct Table {
    next: u64,
    /// By id: the lowest is the oldest.
    entries: BTreeMap<u64, Entry>,
    per_peer: HashMap<IpAddr, usize>,
}

/// The connections of one listener.
#[derive(Debug)]
pub struct Connections {
    max_total: usize,
    max_per_peer: usize,
    table: Mutex<Table>,
}

/// A connection that was let in: dropping it frees its place.
#[derive(Debug)]
pub struct Admitted {
    id: u64,
    connections: Arc<Connections>,
    /// Count of its requests in flight.
    pub busy: Arc<AtomicUsize>,
    /// Notified when the server closes it to make room.
    pub evict: Arc<Notify>,
    /// Whether an idle connection was closed to let this one in.
    pub evicted_another: bool,
}

impl Drop for Admitted {
    fn drop(&mut self) {
        let mut table = self.connections.lock();
        if let Some(entry) = table.entries.remove(&self.id) {
            release(&mut table.per_peer, entry.peer);
        }
    }
}

fn release(counts: &mut HashMap<IpAddr, usize>, peer: IpAddr) {
    if let Some(n) = counts.get_mut(&peer) {
        *n = n.saturating_sub(1);
        if *n == 0 {
            counts.remove(&peer);
        }
    }
}

impl Connections {
    /// At most `max_total` connections, at most `max_per_peer` of one peer (each at least 1).
    pub fn new(max_total: usize, max_per_peer: usize) -> Arc<Self> {
        Arc::new(Self { max_total: max_total.max(1), max_per_peer: max_per_peer.max(1), table: Mutex::default() })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Table> {
        // The table is consistent after every statement: a panic elsewhere leaves it usable.
        self.table.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Connections open now (of `peer`, or of everyone).
    pub fn open(&self, peer: Option<IpAddr>) -> usize {
        let table = self.lock();
        match peer {
            Some(p) => table.per_peer.get(&p).copied().unwrap_or(0),
            None => table.entries.len(),
        }
    }

    /// Lets a new connection of `peer` in, closing the oldest idle one when a
    /// limit is reached; `Err(scope)` when every connection under that limit is busy.
    pub fn admit(self: &Arc<Self>, peer: IpAddr) -> Result<Admitted, Scope> {
        let mut table = self.lock();
        let mut evicted_another = false;
        if table.per_peer.get(&peer).copied().unwrap_or(0) >= self.max_per_peer {
            if !evict_oldest_idle(&mut table, Some(peer)) {
                return Err(Scope::Peer);
            }
            evicted_another = true;
        }
        if table.entries.len() >= self.max_total {
            if !evict_oldest_idle(&mut table, None) {
                return Err(Scope::Total);
            }
            evicted_another = true;
        }
        let id = table.next;
        table.next += 1;
        let busy = Arc::new(AtomicUsize::new(0));
        let evict = Arc::new(Notify::new());
        table.entries.insert(id, Entry { peer, busy: busy.clone(), evict: evict.clone() });
        *table.per_peer.entry(peer).or_default() += 1;
        Ok(Admitted { id, connections: self.clone(), busy, evict, evicted_another })
    }
}

/// Closes the oldest idle connection (of `peer`, when given): it leaves the
/// table at once, and its task drops it when notified.
fn evict_oldest_idle(table: &mut Table, peer: Option<IpAddr>) -> bool {
    let victim =
        table.entries.iter().find(|(_, e)| peer.is_none_or(|p| e.peer == p) && e.busy.load(Ordering::Acquire) == 0).map(|(id, _)| *id);
    let Some(id) = victim else { return false };
    if let Some(entry) = table.entries.remove(&id) {
        release(&mut table.per_peer, entry.peer);
        entry.evict.notify_one();
    }
    true
}

/// Marks a connection busy while a request of it is answered (the response
/// body included): busy connections are never closed to make room.
#[derive(Debug)]
pub struct Busy(Arc<AtomicUsize>);

impl Busy {
    /// One more request in flight on the connection counted by `busy`.
    pub fn new(busy: &Arc<AtomicUsize>) -> Self {
        busy.fetch_add(1, Ordering::AcqRel);
        Self(busy.clone())
    }
}

impl Drop for Busy {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Event streams held open, per peer and in total.
#[derive(Debug)]
pub struct Streams {
    max_total: usize,
    max_per_peer: usize,
    counts: Mutex<(usize, HashMap<IpAddr, usize>)>,
}

/// An event stream's place: dropping it (the stream ends) frees it.
#[derive(Debug)]
pub struct StreamSlot {
    streams: Arc<Streams>,
    peer: Option<IpAddr>,
}

impl Drop for StreamSlot {
    fn drop(&mut self) {
        let mut counts = self.streams.counts.lock().unwrap_or_else(PoisonError::into_inner);
        counts.0 = counts.0.saturating_sub(1);
        if let Some(peer) = self.peer {
            release(&mut counts.1, peer);
        }
    }
}

impl Streams {
    /// At most `max_total` streams, at most `max_per_peer` of one peer.
    pub fn new(max_total: usize, max_per_peer: usize) -> Arc<Self> {
        Arc::new(Self { max_total, max_per_peer, counts: Mutex::default() })
    }

    /// The limits: (total, per peer).
    pub fn limits(&self) -> (usize, usize) {
        (self.max_total, self.max_per_peer)
    }

    /// Streams open now.
    pub fn open(&self) -> usize {
        self.counts.lock().unwrap_or_else(PoisonError::into_inner).0
    }

    /// A place for a stream of `peer` (unknown when the request did not come
    /// over a connection of this server, e.g. in tests), or the limit reached.
    pub fn open_stream(self: &Arc<Self>, peer: Option<IpAddr>) -> Result<StreamSlot, Scope> {
        let mut counts = self.counts.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(p) = peer
            && counts.1.get(&p).copied().unwrap_or(0) >= self.max_per_peer
        {
            return Err(Scope::Peer);
        }
        if counts.0 >= self.max_total {
            return Err(Scope::Total);
        }
        counts.0 += 1;
        if let Some(p) = peer {
            *counts.1.entry(p).or_default() += 1;
        }
        Ok(StreamSlot { streams: self.clone(), peer })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(last: u8) -> IpAddr {
        IpAddr::from([10, 0, 0, last])
    }

    #[test]
    fn the_oldest_idle_connection_of_the_peer_makes_room() {
        let c = Connections::new(10, 2);
        let first = c.admit(ip(1)).expect("room");
        let second = c.admit(ip(1)).expect("room");
        let _busy = Busy::new(&first.busy);
        // The first is busy: the second (idle) goes.
        let third = c.admit(ip(1)).expect("an idle one makes room");
        assert!(third.evicted_another);
        assert_eq!(c.open(Some(ip(1))), 2);
        // Another peer is not touched by this peer's limit.
        let other = c.admit(ip(2)).expect("room");
        assert!(!other.evicted_another);
        drop(second);
        assert_eq!(c.open(None), 3);
    }

    #[test]
    fn busy_connections_are_never_closed_and_the_new_one_is_refused() {
        let c = Connections::new(2, 5);
        let a = c.admit(ip(1)).expect("room");
        let b = c.admit(ip(2)).expect("room");
        let (_x, _y) = (Busy::new(&a.busy), Busy::new(&b.busy));
        assert_eq!(c.admit(ip(3)).map(|_| ()), Err(Scope::Total));
        let c2 = Connections::new(5, 1);
        let a2 = c2.admit(ip(1)).expect("room");
        let _z = Busy::new(&a2.busy);
        assert_eq!(c2.admit(ip(1)).map(|_| ()), Err(Scope::Peer));
        assert!(c2.admit(ip(2)).is_ok());
    }

    #[test]
    fn streams_are_limited_per_peer_then_in_total_and_freed_on_drop() {
        let s = Streams::new(3, 2);
        let a = s.open_stream(Some(ip(1))).expect("room");
        let _b = s.open_stream(Some(ip(1))).expect("room");
        assert_eq!(s.open_stream(Some(ip(1))).map(|_| ()), Err(Scope::Peer));
        let _c = s.open_stream(Some(ip(2))).expect("room");
        assert_eq!(s.open_stream(Some(ip(3))).map(|_| ()), Err(Scope::Total));
        drop(a);
        assert!(s.open_stream(Some(ip(1))).is_ok());
    }
}
