//! Leader election over the store's lease (PostgreSQL), for 2+ replicas.
//!
//! Every replica runs an [`Elector`]. A follower tries to take the lease
//! every retry period; the leader renews it. The leader stops acting once
//! it has not renewed for the renew deadline, which is shorter than the
//! lease: it has stopped before any other replica could take over. Its
//! writes are fenced by the epoch as well ([`crate::store::Store::fenced`]),
//! so even a leader that failed to stop (a paused process) cannot write
//! once another replica holds the lease.
//!
//! The timings follow client-go's leader election (15 s lease, 10 s renew
//! deadline, 2 s retry period), scaled by one number, the lease duration.

use std::time::Duration;

use tokio::sync::watch;
use tokio::time::Instant;

use crate::store::Store;

/// The timings of an election.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ElectionConfig {
    /// This replica's identity in the lease (the pod name on Kubernetes).
    pub identity: String,
    /// How long a lease lasts without renewal (by the database clock).
    pub lease_duration: Duration,
    /// How long the leader goes on acting without a successful renewal;
    /// shorter than the lease, so it stops before anyone may take over.
    pub renew_deadline: Duration,
    /// How often a follower tries to take the lease and the leader renews it.
    pub retry_period: Duration,
}

impl ElectionConfig {
    /// client-go's proportions (15 / 10 / 2) for a lease of `lease_duration`.
    pub fn new(identity: impl Into<String>, lease_duration: Duration) -> Self {
        ElectionConfig {
            identity: identity.into(),
            lease_duration,
            renew_deadline: lease_duration.mul_f64(10.0 / 15.0),
            retry_period: lease_duration.mul_f64(2.0 / 15.0),
        }
    }
}

/// This replica's identity: `$HOSTNAME` (the pod name on Kubernetes) or the
/// kernel's host name, with the process id and a random suffix, so two
/// processes on one host never share it.
pub fn identity() -> String {
    let host = std::env::var("HOSTNAME")
        .ok()
        .filter(|h| !h.trim().is_empty())
        .or_else(|| std::fs::read_to_string("/proc/sys/kernel/hostname").ok())
        .map(|h| h.trim().to_owned())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "hadron".to_owned());
    format!("{host}-{}-{:04x}", std::process::id(), rand::random::<u16>())
}

/// Where this replica stands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Leadership {
    /// Not (yet) known: the first round has not ended.
    Unknown,
    /// Another replica leads (or nobody does right now).
    Follower {
        /// The holder and epoch of the lease, if anybody ever took it.
        leader: Option<(String, i64)>,
    },
    /// This replica leads under `epoch`.
    Leader {
        /// The fencing token of its writes.
        epoch: i64,
    },
}

impl Leadership {
    /// The epoch, when leading.
    pub fn epoch(&self) -> Option<i64> {
        match self {
            Leadership::Leader { epoch } => Some(*epoch),
            _ => None,
        }
    }
}

/// One replica's side of the election.
pub struct Elector {
    store: Store,
    cfg: ElectionConfig,
    /// Leading under this epoch since the last renewal that began at this instant.
    leading: Option<(i64, Instant)>,
}

impl Elector {
    /// An elector for `store` (unfenced: it reads and writes the lease itself).
    pub fn new(store: Store, cfg: ElectionConfig) -> Self {
        Elector { store, cfg, leading: None }
    }

    /// One round: a follower tries to take the lease, the leader renews it.
    /// A store error is not fatal: the leader goes on until its renew
    /// deadline, a follower stays one.
    pub async fn round(&mut self) -> Leadership {
        let started = Instant::now();
        match self.leading {
            Some((epoch, renewed)) => {
                let left = self.cfg.renew_deadline.saturating_sub(renewed.elapsed());
                let renewal = tokio::time::timeout(left, self.store.renew_lease(&self.cfg.identity, epoch, self.cfg.lease_duration)).await;
                match renewal {
                    Ok(Ok(true)) => {
                        self.leading = Some((epoch, started));
                        Leadership::Leader { epoch }
                    }
                    Ok(Ok(false)) => {
                        tracing::warn!(epoch, "the leader lease was taken over; this replica stops acting as leader");
                        self.leading = None;
                        self.follower().await
                    }
                    Ok(Err(e)) if renewed.elapsed() < self.cfg.renew_deadline => {
                        tracing::warn!(
                            epoch,
                            reason = e.reason(),
                            "renewing the leader lease failed: {e}; retrying until the renew deadline"
                        );
                        Leadership::Leader { epoch }
                    }
                    Ok(Err(_)) | Err(_) => {
                        tracing::warn!(
                            epoch,
                            deadline_ms = self.cfg.renew_deadline.as_millis() as u64,
                            "the leader lease was not renewed within the renew deadline; this replica stops acting as leader"
                        );
                        self.leading = None;
                        self.follower().await
                    }
                }
            }
            None => match self.store.try_acquire_lease(&self.cfg.identity, self.cfg.lease_duration).await {
                Ok(Some(epoch)) => {
                    self.leading = Some((epoch, started));
                    Leadership::Leader { epoch }
                }
                Ok(None) => self.follower().await,
                Err(e) => {
                    tracing::warn!(reason = e.reason(), "taking the leader lease failed: {e}; retrying");
                    Leadership::Follower { leader: None }
                }
            },
        }
    }

    async fn follower(&self) -> Leadership {
        let leader = self.store.lease_holder().await.ok().flatten().map(|h| (h.holder, h.epoch));
        Leadership::Follower { leader }
    }

    /// Runs rounds every retry period and publishes where this replica
    /// stands on `tx`, until every receiver is gone or `stop` turns true;
    /// then gives the lease up if it holds it.
    pub async fn run(mut self, tx: watch::Sender<Leadership>, mut stop: watch::Receiver<bool>) {
        loop {
            let now = self.round().await;
            tx.send_if_modified(|was| {
                let changed = *was != now;
                *was = now.clone();
                changed
            });
            if tx.is_closed() {
                break;
            }
            tokio::select! {
                _ = tokio::time::sleep(self.cfg.retry_period) => {}
                _ = stop.wait_for(|s| *s) => break,
            }
        }
        self.release().await;
    }

    /// Gives the lease up, if held, so another replica takes over at once.
    pub async fn release(&mut self) {
        if let Some((epoch, _)) = self.leading.take() {
            match self.store.release_lease(&self.cfg.identity, epoch).await {
                Ok(_) => tracing::info!(epoch, "gave the leader lease up"),
                Err(e) => tracing::warn!(epoch, reason = e.reason(), "giving the leader lease up failed: {e}; it expires by itself"),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::tests::{Kind, TestDb};

    fn config(identity: &str) -> ElectionConfig {
        ElectionConfig::new(identity, Duration::from_millis(2000))
    }

    #[test]
    fn timings_keep_client_go_proportions() {
        let cfg = ElectionConfig::new("a", Duration::from_secs(15));
        assert_eq!((cfg.renew_deadline, cfg.retry_period), (Duration::from_secs(10), Duration::from_secs(2)));
        assert!(cfg.renew_deadline < cfg.lease_duration, "the leader stops before anyone may take over");
        let id = identity();
        assert!(id.contains(&std::process::id().to_string()), "{id}");
        assert_ne!(id, identity(), "two electors in one process differ");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn one_leads_the_other_follows_and_takes_over_once_the_leader_stops_renewing() -> anyhow::Result<()> {
        let Some(db) = TestDb::create(Kind::Postgres).await? else { return Ok(()) };
        let outcome = async {
            let (mut a, mut b) = (Elector::new(db.open().await?, config("a")), Elector::new(db.open().await?, config("b")));
            anyhow::ensure!(a.round().await == Leadership::Leader { epoch: 1 });
            anyhow::ensure!(b.round().await == Leadership::Follower { leader: Some(("a".to_owned(), 1)) });
            anyhow::ensure!(a.round().await == Leadership::Leader { epoch: 1 }, "the leader renews");
            // a stops renewing (paused); b takes over once the lease expires, not before.
            tokio::time::sleep(Duration::from_millis(400)).await;
            anyhow::ensure!(matches!(b.round().await, Leadership::Follower { .. }), "not before the lease expires");
            tokio::time::sleep(Duration::from_millis(1900)).await;
            anyhow::ensure!(b.round().await == Leadership::Leader { epoch: 2 });
            // a learns it lost the lease at its next renewal.
            anyhow::ensure!(a.round().await == Leadership::Follower { leader: Some(("b".to_owned(), 2)) });
            // A clean stop gives the lease up: a takes it at once.
            b.release().await;
            anyhow::ensure!(a.round().await == Leadership::Leader { epoch: 3 });
            Ok(())
        }
        .await;
        db.cleanup().await;
        outcome
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_leader_that_cannot_renew_stops_acting_by_its_renew_deadline() -> anyhow::Result<()> {
        let Some(db) = TestDb::create(Kind::Postgres).await? else { return Ok(()) };
        let store = db.open().await?;
        let mut a = Elector::new(store.clone(), config("a"));
        anyhow::ensure!(a.round().await == Leadership::Leader { epoch: 1 });
        // The database goes away: renewals fail.
        store.close().await;
        let stopped = Instant::now();
        let mut rounds = 0;
        while a.round().await != (Leadership::Follower { leader: None }) {
            rounds += 1;
            anyhow::ensure!(rounds < 100, "still leading after {:?}", stopped.elapsed());
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let cfg = config("a");
        anyhow::ensure!(stopped.elapsed() < cfg.lease_duration, "stopped after {:?}, before the lease could expire", stopped.elapsed());
        db.cleanup().await;
        Ok(())
    }
}
