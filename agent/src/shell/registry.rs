//! The attempt table shared by the assign/cancel handlers, the heartbeat and
//! the attempt tasks, with a way to ask a running attempt to stop.

use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use tokio::sync::watch;

use crate::core::{AttemptKey, AttemptTable, StopCause};

/// Asks an attempt to stop: SIGTERM, `grace`, SIGKILL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StopRequest {
    pub cause: StopCause,
    pub grace: Duration,
}

/// The receiving end an attempt watches; `None` until someone asks it to stop.
pub type StopSignal = watch::Receiver<Option<StopRequest>>;

#[derive(Debug)]
struct Running {
    stop: watch::Sender<Option<StopRequest>>,
    /// `on_agent_lost: wait`: how much longer than the others it runs on
    /// while the agent is cut off.
    wait_when_lost: Duration,
}

/// Cheap-to-clone handle on this agent's attempts.
#[derive(Debug, Clone, Default)]
pub struct Registry {
    table: Arc<Mutex<AttemptTable<Running>>>,
}

impl Registry {
    fn table(&self) -> MutexGuard<'_, AttemptTable<Running>> {
        // No code holding the lock can panic halfway through an update (the
        // table's methods are plain collection operations), so a poisoned
        // lock still guards a consistent table.
        self.table.lock().unwrap_or_else(PoisonError::into_inner)
    }

    pub fn is_known(&self, key: &AttemptKey) -> bool {
        self.table().is_known(key)
    }

    /// Registers a new attempt and returns its stop signal; `None` when the
    /// attempt is already known.
    pub fn start(&self, key: AttemptKey) -> Option<StopSignal> {
        let (tx, rx) = watch::channel(None);
        self.table()
            .start(
                key,
                Running {
                    stop: tx,
                    wait_when_lost: Duration::ZERO,
                },
            )
            .then_some(rx)
    }

    /// Asks a running attempt to stop; false when it is not running here.
    /// A second request does not replace the first.
    pub fn request_stop(&self, key: &AttemptKey, request: StopRequest) -> bool {
        let table = self.table();
        let Some(running) = table.running(key) else {
            return false;
        };
        running.stop.send_if_modified(|current| {
            if current.is_none() {
                *current = Some(request);
                true
            } else {
                false
            }
        });
        true
    }

    /// The attempt's task says `on_agent_lost: wait`: self-fencing leaves
    /// it running `lost_after` longer.
    pub fn wait_when_lost(&self, key: &AttemptKey, lost_after: Duration) {
        if let Some(running) = self.table().running_mut(key) {
            running.wait_when_lost = lost_after;
        }
    }

    /// Asks every running attempt to stop; returns how many there were.
    pub fn request_stop_all(&self, request: &StopRequest) -> usize {
        self.request_stop_where(request, |_| true);
        self.table().running_count()
    }

    /// Self-fencing after `silent` without contact: asks every running
    /// attempt whose limit (`limit`, plus its `on_agent_lost: wait`
    /// allowance) has passed to stop; returns how many were newly asked.
    pub fn request_fence(&self, silent: Duration, limit: Duration, grace: Duration) -> usize {
        let request = StopRequest {
            cause: StopCause::Fenced { silent },
            grace,
        };
        self.request_stop_where(&request, |r| silent > limit + r.wait_when_lost)
    }

    fn request_stop_where(&self, request: &StopRequest, pick: impl Fn(&Running) -> bool) -> usize {
        let table = self.table();
        let mut asked = 0;
        for (_, running) in table.running_handles() {
            if !pick(running) {
                continue;
            }
            let newly = running.stop.send_if_modified(|current| {
                if current.is_none() {
                    *current = Some(request.clone());
                    true
                } else {
                    false
                }
            });
            asked += usize::from(newly);
        }
        asked
    }

    /// The attempt has reported its final event.
    pub fn finish(&self, key: &AttemptKey) {
        self.table().finish(key);
    }

    /// Running attempts, sorted.
    pub fn running(&self) -> Vec<AttemptKey> {
        self.table().running_keys()
    }
}

#[cfg(test)]
mod tests {
    type TestResult = Result<(), Box<dyn std::error::Error>>;
    use super::*;

    fn key() -> AttemptKey {
        AttemptKey {
            run_id: "r".into(),
            task: "t".into(),
            attempt: 1,
        }
    }

    #[test]
    fn the_first_stop_request_wins() -> TestResult {
        let reg = Registry::default();
        let rx = reg.start(key()).ok_or("not started")?;
        assert!(reg.start(key()).is_none());
        let cancel = StopRequest {
            cause: StopCause::Cancelled,
            grace: Duration::from_secs(1),
        };
        assert!(reg.request_stop(&key(), cancel.clone()));
        let shutdown = StopRequest {
            cause: StopCause::Shutdown {
                agent_id: "a".into(),
            },
            grace: Duration::ZERO,
        };
        assert_eq!(reg.request_stop_all(&shutdown), 1);
        assert_eq!(rx.borrow().as_ref(), Some(&cancel));

        let kept = AttemptKey {
            task: "kept".into(),
            ..key()
        };
        let kept_rx = reg.start(kept.clone()).ok_or("not started")?;
        reg.wait_when_lost(&kept, Duration::from_secs(60));
        let secs = Duration::from_secs;
        let grace = Duration::from_millis(100);
        assert_eq!(
            reg.request_fence(secs(8), secs(7), grace),
            0,
            "already asked to stop"
        );
        assert!(kept_rx.borrow().is_none(), "on_agent_lost: wait runs on");
        assert_eq!(
            reg.request_fence(secs(67), secs(7), grace),
            0,
            "not past its wait"
        );
        assert_eq!(reg.request_fence(secs(68), secs(7), grace), 1);
        let fenced = kept_rx.borrow().clone().ok_or("not asked")?;
        assert_eq!(fenced.cause, StopCause::Fenced { silent: secs(68) });
        assert_eq!(fenced.grace, grace);
        assert_eq!(reg.request_fence(secs(69), secs(7), grace), 0, "asked once");
        reg.finish(&kept);

        reg.finish(&key());
        assert!(!reg.request_stop(&key(), cancel), "finished: not found");
        assert!(reg.is_known(&key()));
        assert!(reg.running().is_empty());
        Ok(())
    }
}
