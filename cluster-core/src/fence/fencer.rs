//! The retrying fencer: fence one target with every device able to, in
//! configuration order, until one confirms it off.
//!
//! Before the first attempt the fencer waits the first capable device's
//! `delay`. After each round in which every capable device failed, it waits
//! an exponential backoff (1 s doubling to 30 s by default) and starts over,
//! for as long as it takes: it returns only on a confirmed fence, when the
//! caller's cancellation future resolves, or at once when no device can
//! fence the target. Every attempt's outcome is handed to the caller's
//! callback as a [`FenceAttempt`] so the daemon can turn it into an event
//! and an alert.

use std::future::Future;
use std::time::{Duration, Instant};

use super::{Device, FencerError};

/// The shortest wait between two rounds, whatever the configuration, so
/// that a zero backoff cannot spin.
const MIN_BACKOFF: Duration = Duration::from_millis(10);

/// The wait between two rounds of failed attempts: `initial`, doubled after
/// each further failed round, never more than `max` (and never less than
/// 10 ms).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Backoff {
    /// Wait after the first failed round.
    pub initial: Duration,
    /// Longest wait.
    pub max: Duration,
}

impl Default for Backoff {
    /// One second, doubling to thirty.
    fn default() -> Self {
        Self {
            initial: Duration::from_secs(1),
            max: Duration::from_secs(30),
        }
    }
}

impl Backoff {
    /// The wait after failed round `round` (1 for the first).
    pub fn after_round(&self, round: u32) -> Duration {
        let doublings = round.saturating_sub(1);
        let wait = 2u32
            .checked_pow(doublings)
            .and_then(|factor| self.initial.checked_mul(factor))
            .map_or(self.max, |wait| wait.min(self.max));
        wait.max(MIN_BACKOFF)
    }
}

/// The outcome of one attempt to fence a target with one device.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FenceAttempt {
    /// The node being fenced.
    pub target: String,
    /// The device used.
    pub device: String,
    /// Attempt number for this target, counting every device and round
    /// from 1.
    pub attempt: u32,
    /// `Ok` if the device confirmed the target off, else why not.
    pub outcome: Result<(), String>,
    /// How long the attempt took.
    pub elapsed: Duration,
}

/// Fences targets with the configured devices, retrying until one succeeds.
#[derive(Debug)]
pub struct Fencer {
    devices: Vec<Box<dyn Device>>,
    backoff: Backoff,
}

impl Fencer {
    /// A fencer over `devices`, in configuration order, with the default
    /// [`Backoff`].
    pub fn new(devices: Vec<Box<dyn Device>>) -> Self {
        Self {
            devices,
            backoff: Backoff::default(),
        }
    }

    /// The same fencer with another backoff.
    #[must_use]
    pub fn with_backoff(mut self, backoff: Backoff) -> Self {
        self.backoff = backoff;
        self
    }

    /// The backoff between failed rounds.
    pub fn backoff(&self) -> Backoff {
        self.backoff
    }

    /// The devices, in the order they are tried.
    pub fn devices(&self) -> impl Iterator<Item = &dyn Device> {
        self.devices.iter().map(|d| d.as_ref())
    }

    /// Whether any device can fence `target`.
    pub fn can_fence(&self, target: &str) -> bool {
        self.devices().any(|d| d.can_fence(target))
    }

    /// Fence `target`: wait the first capable device's delay, then try each
    /// capable device in order until one confirms the target off, waiting
    /// the backoff after each round in which all failed, indefinitely.
    ///
    /// Every completed attempt is passed to `report` (an attempt interrupted
    /// by the cancellation is not). Returns the successful attempt;
    /// [`FencerError::NoDevice`] at once if no device can fence `target`;
    /// [`FencerError::Cancelled`] as soon as `cancel` resolves (an attempt in
    /// flight is dropped, which stops it: an agent's process group is
    /// killed).
    pub async fn fence<C, R>(
        &self,
        target: &str,
        cancel: C,
        mut report: R,
    ) -> Result<FenceAttempt, FencerError>
    where
        C: Future<Output = ()>,
        R: FnMut(FenceAttempt),
    {
        let capable: Vec<&dyn Device> = self.devices().filter(|d| d.can_fence(target)).collect();
        let Some(first) = capable.first() else {
            tracing::error!(
                node = target,
                "no configured fence device can fence this node"
            );
            return Err(FencerError::NoDevice {
                target: target.to_owned(),
            });
        };
        tokio::pin!(cancel);
        let mut attempt: u32 = 0;
        let cancelled = |attempts: u32| FencerError::Cancelled {
            target: target.to_owned(),
            attempts,
        };

        let delay = first.delay();
        if !delay.is_zero() {
            tracing::info!(
                node = target,
                device = first.name(),
                ?delay,
                "waiting the fence delay"
            );
            tokio::select! {
                biased;
                () = &mut cancel => return Err(cancelled(attempt)),
                () = tokio::time::sleep(delay) => {}
            }
        }

        let mut round: u32 = 0;
        loop {
            for device in &capable {
                attempt = attempt.saturating_add(1);
                let started = Instant::now();
                let result = tokio::select! {
                    biased;
                    () = &mut cancel => {
                        tracing::info!(node = target, device = device.name(), attempt, "fencing cancelled during an attempt");
                        return Err(cancelled(attempt.saturating_sub(1)));
                    }
                    result = device.fence_off(target) => result,
                };
                let record = FenceAttempt {
                    target: target.to_owned(),
                    device: device.name().to_owned(),
                    attempt,
                    outcome: result.map_err(|e| e.to_string()),
                    elapsed: started.elapsed(),
                };
                match &record.outcome {
                    Ok(()) => {
                        tracing::info!(
                            node = target,
                            device = device.name(),
                            attempt,
                            elapsed = ?record.elapsed,
                            "fenced: the device confirmed the target off",
                        );
                        report(record.clone());
                        return Ok(record);
                    }
                    Err(error) => {
                        tracing::warn!(
                            node = target,
                            device = device.name(),
                            attempt,
                            elapsed = ?record.elapsed,
                            error = %error,
                            "fencing attempt failed",
                        );
                        report(record);
                    }
                }
            }
            round = round.saturating_add(1);
            let wait = self.backoff.after_round(round);
            tracing::error!(
                node = target,
                round,
                attempts = attempt,
                retry_in = ?wait,
                "every fence device failed; retrying",
            );
            tokio::select! {
                biased;
                () = &mut cancel => return Err(cancelled(attempt)),
                () = tokio::time::sleep(wait) => {}
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fence_backoff_doubles_and_caps() {
        let b = Backoff {
            initial: Duration::from_millis(100),
            max: Duration::from_millis(700),
        };
        let waits: Vec<_> = (1..=5).map(|r| b.after_round(r).as_millis()).collect();
        assert_eq!(waits, [100, 200, 400, 700, 700]);
        assert_eq!(b.after_round(u32::MAX), Duration::from_millis(700));
        let d = Backoff::default();
        assert_eq!(d.after_round(1), Duration::from_secs(1));
        assert_eq!(d.after_round(6), Duration::from_secs(30));
        let zero = Backoff {
            initial: Duration::ZERO,
            max: Duration::ZERO,
        };
        assert_eq!(zero.after_round(3), MIN_BACKOFF);
    }
}
