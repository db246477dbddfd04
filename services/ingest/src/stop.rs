//! Stop signals for ingest's background tasks.
//!
//! Every task (link, reader, heartbeat) stops when its own owner asks it to, or when the
//! whole service halts. Both are `watch` channels; a dropped sender counts as a stop, so
//! a task never outlives whatever owns it.

use tokio::sync::watch;

/// A task's stop signal: its own, or the service's.
#[derive(Debug, Clone)]
pub struct StopSignal {
    own: watch::Receiver<bool>,
    global: watch::Receiver<bool>,
}

impl StopSignal {
    /// A signal that fires when either sender sends `true` or is dropped.
    pub fn new(own: watch::Receiver<bool>, global: watch::Receiver<bool>) -> Self {
        StopSignal { own, global }
    }

    /// Whether a stop was requested.
    pub fn is_set(&self) -> bool {
        *self.own.borrow()
            || *self.global.borrow()
            || self.own.has_changed().is_err()
            || self.global.has_changed().is_err()
    }

    /// Completes once a stop is requested.
    pub async fn requested(&mut self) {
        tokio::select! {
            () = wait_true(&mut self.own) => {}
            () = wait_true(&mut self.global) => {}
        }
    }
}

async fn wait_true(rx: &mut watch::Receiver<bool>) {
    // `wait_for` returns a guard that is not Send; it must not outlive this function.
    let _ = rx.wait_for(|v| *v).await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn fires_on_either_sender_or_drop() {
        let (own, own_rx) = watch::channel(false);
        let (global, global_rx) = watch::channel(false);
        let mut s = StopSignal::new(own_rx, global_rx);
        assert!(!s.is_set());
        global.send_replace(true);
        s.requested().await;
        assert!(s.is_set());
        global.send_replace(false);
        drop(own);
        assert!(s.is_set());
        s.requested().await;
    }
}
