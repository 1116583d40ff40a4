//! What each client connection is doing, for choosing which one to close when the server is full:
//! a connection is *busy* while the server works for it (a request between its body and its
//! answer, or a response still streaming) and otherwise *idle* (waiting for a request head, for a
//! body the client is still sending, or kept alive); the one idle the longest is closed first.

use std::sync::Arc;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

fn epoch() -> Instant {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    *EPOCH.get_or_init(Instant::now)
}

fn now_ms() -> u64 {
    epoch().elapsed().as_millis() as u64
}

/// One connection's activity.
pub struct Activity {
    busy: AtomicUsize,
    /// When it last became idle or busy (milliseconds since the server started).
    last: AtomicU64,
}

impl Activity {
    pub fn new() -> Arc<Self> {
        Arc::new(Activity {
            busy: AtomicUsize::new(0),
            last: AtomicU64::new(now_ms()),
        })
    }

    fn touch(&self) {
        self.last.store(now_ms(), Ordering::Release);
    }

    /// Busy while the guard lives.
    pub fn busy(self: &Arc<Self>) -> Busy {
        self.busy.fetch_add(1, Ordering::AcqRel);
        self.touch();
        Busy(self.clone())
    }

    /// Idle while the guard lives (inside a busy request: while it waits for its client).
    pub fn waiting_for_client(self: &Arc<Self>) -> WaitingForClient {
        self.busy.fetch_sub(1, Ordering::AcqRel);
        self.touch();
        WaitingForClient(self.clone())
    }

    pub fn is_busy(&self) -> bool {
        self.busy.load(Ordering::Acquire) > 0
    }

    /// How long it has been idle (zero while busy).
    pub fn idle_for(&self) -> Duration {
        if self.is_busy() {
            return Duration::ZERO;
        }
        Duration::from_millis(now_ms().saturating_sub(self.last.load(Ordering::Acquire)))
    }
}

/// See [`Activity::busy`].
pub struct Busy(Arc<Activity>);

impl Drop for Busy {
    fn drop(&mut self) {
        self.0.busy.fetch_sub(1, Ordering::AcqRel);
        self.0.touch();
    }
}

/// See [`Activity::waiting_for_client`].
pub struct WaitingForClient(Arc<Activity>);

impl Drop for WaitingForClient {
    fn drop(&mut self) {
        self.0.busy.fetch_add(1, Ordering::AcqRel);
        self.0.touch();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn busy_and_idle() {
        let a = Activity::new();
        assert!(!a.is_busy());
        let b = a.busy();
        assert!(a.is_busy() && a.idle_for() == Duration::ZERO);
        {
            let _w = a.waiting_for_client();
            assert!(!a.is_busy());
        }
        assert!(a.is_busy());
        let streaming = a.busy();
        drop(b);
        assert!(a.is_busy());
        drop(streaming);
        assert!(!a.is_busy());
    }
}
