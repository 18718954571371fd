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

use std::sync::{Arc, Mutex};
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

/// What the elector last knew for certain: leading under this epoch since
/// a renewal (or the take-over) that began at this instant.
type Held = Arc<Mutex<Option<(i64, std::time::Instant)>>>;

/// The check every side effect of the leader passes first: does this
/// replica still hold the lease for certain, by its own monotonic clock?
/// It does while less than the renew deadline has passed since the last
/// successful renewal *began* (the lease lasts longer than that from the
/// database's point of view), so a process that was frozen knows it
/// before it acts, without asking the database.
#[derive(Clone, Default)]
pub struct LeaseGuard(Option<GuardInner>);

#[derive(Clone)]
struct GuardInner {
    epoch: i64,
    renew_deadline: Duration,
    held: Held,
}

impl std::fmt::Debug for LeaseGuard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.0 {
            None => f.write_str("LeaseGuard(unguarded)"),
            Some(g) => write!(f, "LeaseGuard(epoch {})", g.epoch),
        }
    }
}

/// The leader lease is not held for certain any more: nothing is done.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("this replica no longer holds the leader lease for certain (epoch {epoch}; {why}): it makes no further change and stops leading")]
pub struct LeaseLost {
    /// The epoch it led under.
    pub epoch: i64,
    /// Since when, or what replaced it.
    pub why: String,
}

impl LeaseLost {
    /// Stable CamelCase reason.
    pub fn reason(&self) -> &'static str {
        "LeaseLost"
    }
}

impl LeaseGuard {
    /// No election (one replica, SQLite): every check passes.
    pub fn unguarded() -> Self {
        LeaseGuard(None)
    }

    /// A guard of `epoch` whose last renewal began `ago` before now, with
    /// renew deadline `deadline` (for tests of what the guard protects).
    #[cfg(test)]
    pub(crate) fn renewed_ago(epoch: i64, ago: Duration, deadline: Duration) -> Self {
        let held = Held::new(Mutex::new(Some((epoch, std::time::Instant::now() - ago))));
        LeaseGuard(Some(GuardInner { epoch, renew_deadline: deadline, held }))
    }

    /// The epoch it guards (`None` when unguarded).
    pub fn epoch(&self) -> Option<i64> {
        self.0.as_ref().map(|g| g.epoch)
    }

    /// The error of a lease lost for `why` (seen by someone other than
    /// this guard's clock, e.g. the elector).
    pub fn lost(&self, why: &str) -> LeaseLost {
        LeaseLost { epoch: self.epoch().unwrap_or(0), why: why.to_owned() }
    }

    /// Checks that the lease of `epoch` is still held for certain.
    pub fn check(&self) -> Result<(), LeaseLost> {
        let Some(g) = &self.0 else { return Ok(()) };
        let held = *g.held.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        match held {
            Some((epoch, renewed)) if epoch == g.epoch => {
                let ago = renewed.elapsed();
                if ago < g.renew_deadline {
                    Ok(())
                } else {
                    Err(LeaseLost {
                        epoch: g.epoch,
                        why: format!(
                            "its last renewal began {} ms ago, past the renew deadline of {} ms",
                            ago.as_millis(),
                            g.renew_deadline.as_millis()
                        ),
                    })
                }
            }
            Some((epoch, _)) => Err(LeaseLost { epoch: g.epoch, why: format!("it leads under epoch {epoch} now") }),
            None => Err(LeaseLost { epoch: g.epoch, why: "it follows now".to_owned() }),
        }
    }
}

/// One replica's side of the election.
pub struct Elector {
    store: Store,
    cfg: ElectionConfig,
    /// Leading under this epoch since the last renewal that began at this instant.
    leading: Option<(i64, Instant)>,
    /// The same, shared with the guards of this replica's side effects.
    held: Held,
}

impl Elector {
    /// An elector for `store` (unfenced: it reads and writes the lease
    /// itself), on a connection of its own: a busy pool or a reconnect of
    /// the loop's connections never delays a renewal past the renew
    /// deadline (which deposed healthy leaders when the pool was shared).
    pub fn new(store: Store, cfg: ElectionConfig) -> Self {
        let store = store.on_own_connection(cfg.retry_period.max(Duration::from_millis(200))).unwrap_or(store);
        Elector { store, cfg, leading: None, held: Held::default() }
    }

    /// Makes the guards of the side effects made under an epoch (kept by
    /// the caller once the elector runs on its own task).
    pub fn guards(&self) -> impl Fn(i64) -> LeaseGuard + Send + Sync + 'static {
        let (held, renew_deadline) = (self.held.clone(), self.cfg.renew_deadline);
        move |epoch| LeaseGuard(Some(GuardInner { epoch, renew_deadline, held: held.clone() }))
    }

    fn set_leading(&mut self, leading: Option<(i64, Instant)>) {
        self.leading = leading;
        *self.held.lock().unwrap_or_else(std::sync::PoisonError::into_inner) = leading.map(|(e, at)| (e, at.into_std()));
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
                        self.set_leading(Some((epoch, started)));
                        Leadership::Leader { epoch }
                    }
                    Ok(Ok(false)) => {
                        tracing::warn!(epoch, "the leader lease was taken over; this replica stops acting as leader");
                        self.set_leading(None);
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
                        self.set_leading(None);
                        self.follower().await
                    }
                }
            }
            None => match self.store.try_acquire_lease(&self.cfg.identity, self.cfg.lease_duration).await {
                Ok(Some(epoch)) => {
                    self.set_leading(Some((epoch, started)));
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
        let leading = self.leading;
        self.set_leading(None);
        if let Some((epoch, _)) = leading {
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

    #[test]
    fn a_guard_passes_while_the_lease_is_held_for_certain_and_refuses_after() {
        let held = Held::default();
        let guard = LeaseGuard(Some(GuardInner { epoch: 4, renew_deadline: Duration::from_millis(200), held: held.clone() }));
        assert!(guard.check().is_err(), "not leading yet");
        *held.lock().expect("lock") = Some((4, std::time::Instant::now()));
        assert_eq!(guard.check(), Ok(()));
        // Frozen past the renew deadline: refused by its own clock, with no store to ask.
        *held.lock().expect("lock") = Some((4, std::time::Instant::now() - Duration::from_millis(250)));
        let lost = guard.check().expect_err("past the deadline");
        assert!(lost.to_string().contains("renew deadline"), "{lost}");
        *held.lock().expect("lock") = Some((5, std::time::Instant::now()));
        assert!(guard.check().expect_err("another epoch").to_string().contains("epoch 5"));
        *held.lock().expect("lock") = None;
        assert!(guard.check().is_err());
        assert_eq!(LeaseGuard::unguarded().check(), Ok(()), "one replica: nothing to check");
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
    async fn a_loop_that_holds_every_pooled_connection_does_not_depose_its_leader() -> anyhow::Result<()> {
        let Some(db) = TestDb::create(Kind::Postgres).await? else { return Ok(()) };
        let outcome = async {
            let store = db.open().await?;
            let mut a = Elector::new(store.clone(), config("a"));
            anyhow::ensure!(a.round().await == Leadership::Leader { epoch: 1 });
            // The loop's pool is busy: every connection it has sits in a transaction.
            let Some(pool) = store.postgres_pool() else { anyhow::bail!("a PostgreSQL store") };
            let mut held = Vec::new();
            while let Ok(Ok(tx)) = tokio::time::timeout(Duration::from_millis(300), pool.begin()).await {
                held.push(tx);
            }
            anyhow::ensure!(!held.is_empty(), "the pool gave connections");
            // Renewals go on through the election's own connection, past the renew deadline.
            let started = Instant::now();
            while started.elapsed() < config("a").renew_deadline + Duration::from_millis(300) {
                anyhow::ensure!(a.round().await == Leadership::Leader { epoch: 1 }, "deposed after {:?} by a busy pool", started.elapsed());
                tokio::time::sleep(config("a").retry_period).await;
            }
            drop(held);
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
        // The election's own connection goes away: renewals fail.
        a.store.close().await;
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
