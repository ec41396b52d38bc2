//! A watcher for the one rule tests must never see broken: a group active
//! on two nodes. It samples where something runs every 10 ms on its own
//! thread until finished, and keeps every sample that found it on more
//! than one node.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

/// Samples `running` (the nodes where the watched thing runs) until
/// [`Watcher::finish`] or drop.
#[derive(Debug)]
pub struct Watcher {
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<Vec<BTreeSet<String>>>>,
}

impl Watcher {
    /// Start sampling.
    pub fn new(running: impl Fn() -> BTreeSet<String> + Send + 'static) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let s = stop.clone();
        let thread = std::thread::spawn(move || {
            let mut doubles = Vec::new();
            while !s.load(Ordering::Relaxed) {
                let r = running();
                if r.len() > 1 {
                    doubles.push(r);
                }
                std::thread::sleep(Duration::from_millis(10));
            }
            doubles
        });
        Self {
            stop,
            thread: Some(thread),
        }
    }

    /// Stop; every sample where it ran on more than one node.
    pub fn finish(mut self) -> Vec<BTreeSet<String>> {
        self.stop.store(true, Ordering::Relaxed);
        self.thread
            .take()
            .map(|t| t.join().unwrap_or_default())
            .unwrap_or_default()
    }
}

impl Drop for Watcher {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}
