//! Backend health from probe results: pure hysteresis, no clock of its own (the caller passes
//! the time of each result), so every rule is tested on the host with a mocked clock.
//!
//! A backend starts [`Health::Unknown`], which is out of rotation: it gets new flows only
//! after its first good probe. It goes down after `unhealthy_after` consecutive failures and
//! comes back after `healthy_after` consecutive successes.
//!
//! # The reference defaults
//! The reference load balancer probes every 15 s and takes a backend out after 31 s without a
//! good answer, i.e. once two probe intervals have passed without one (`31 = 2 × 15 + 1`). As
//! counts: `interval = 15 s`, `unhealthy_after = 2`, `healthy_after = 1`. A backend that dies
//! just after a good probe fails the next two, so it is out 30 s plus at most one probe
//! timeout after its last good answer (the second failure is reported when its timeout ends).

use core::time::Duration;

/// Probe thresholds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Thresholds {
    /// Consecutive failures that take a backend out (≥ 1).
    pub unhealthy_after: u32,
    /// Consecutive successes that bring it back (≥ 1).
    pub healthy_after: u32,
}

impl Default for Thresholds {
    fn default() -> Self {
        Self {
            unhealthy_after: DEFAULT_UNHEALTHY_AFTER,
            healthy_after: DEFAULT_HEALTHY_AFTER,
        }
    }
}

/// Reference default: a probe every 15 s.
pub const DEFAULT_INTERVAL: Duration = Duration::from_secs(15);
/// Default probe timeout (a probe that takes longer has failed).
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(5);
/// Reference default, as a count: out after two missed intervals (31 s at 15 s).
pub const DEFAULT_UNHEALTHY_AFTER: u32 = 2;
/// Back on the first good answer.
pub const DEFAULT_HEALTHY_AFTER: u32 = 1;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Health {
    /// Not probed yet: out of rotation until the first good answer.
    Unknown,
    Up,
    Down,
}

/// A change of health, reported once.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Transition {
    pub from: Health,
    pub to: Health,
}

/// One backend's probe history.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Tracker {
    pub thresholds: Thresholds,
    pub health: Health,
    /// Consecutive failures / successes so far.
    pub fails: u32,
    pub oks: u32,
    /// Time of the last result and of the last good one (caller's clock).
    pub last_result: Option<Duration>,
    pub last_ok: Option<Duration>,
    pub last_change: Option<Duration>,
}

impl Tracker {
    #[must_use]
    pub const fn new(thresholds: Thresholds) -> Self {
        Self {
            thresholds,
            health: Health::Unknown,
            fails: 0,
            oks: 0,
            last_result: None,
            last_ok: None,
            last_change: None,
        }
    }

    /// A tracker that starts [`Health::Up`]: for a backend a previous agent had in rotation
    /// (it is in the live table), so a restart does not empty the table until the first
    /// probe. It still needs `unhealthy_after` failures to go down, like any healthy backend.
    #[must_use]
    pub const fn seeded_up(thresholds: Thresholds) -> Self {
        let mut t = Self::new(thresholds);
        t.health = Health::Up;
        t
    }

    /// Records one probe result at time `now`; returns the transition it caused, if any.
    pub fn observe(&mut self, ok: bool, now: Duration) -> Option<Transition> {
        self.last_result = Some(now);
        let to = if ok {
            self.last_ok = Some(now);
            self.oks = self.oks.saturating_add(1);
            self.fails = 0;
            // From Unknown the first good answer is enough: nothing has gone wrong yet.
            let need = if self.health == Health::Unknown {
                1
            } else {
                self.thresholds.healthy_after.max(1)
            };
            (self.health != Health::Up && self.oks >= need).then_some(Health::Up)
        } else {
            self.fails = self.fails.saturating_add(1);
            self.oks = 0;
            (self.health != Health::Down && self.fails >= self.thresholds.unhealthy_after.max(1))
                .then_some(Health::Down)
        }?;
        let t = Transition {
            from: self.health,
            to,
        };
        self.health = to;
        self.last_change = Some(now);
        Some(t)
    }

    /// Whether new flows may go to this backend.
    #[must_use]
    pub fn is_up(&self) -> bool {
        self.health == Health::Up
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: Duration = Duration::from_secs(1);

    /// Drives a tracker with the reference defaults on a mocked clock: a probe every 15 s,
    /// each failure reported when its 5 s timeout ends.
    #[test]
    fn reference_defaults_take_a_dead_backend_out_after_two_missed_probes() {
        let mut t = Tracker::new(Thresholds::default());
        assert_eq!(
            t.observe(true, Duration::ZERO),
            Some(Transition {
                from: Health::Unknown,
                to: Health::Up
            })
        );
        // Dies right after t = 0. Probes at 15 and 30 time out at 20 and 35.
        assert_eq!(t.observe(false, 20 * S), None, "one miss is not enough");
        assert!(t.is_up());
        let out = t.observe(false, 35 * S);
        assert_eq!(
            out,
            Some(Transition {
                from: Health::Up,
                to: Health::Down
            })
        );
        let silent = t
            .last_change
            .unwrap()
            .checked_sub(t.last_ok.unwrap())
            .unwrap();
        assert!(
            silent > (31 * S).checked_sub(1 * S).unwrap() && silent <= 30 * S + DEFAULT_TIMEOUT,
            "out after {silent:?} without success"
        );
        // Back on the first good answer (healthy_after = 1).
        assert_eq!(
            t.observe(true, 45 * S),
            Some(Transition {
                from: Health::Down,
                to: Health::Up
            })
        );
    }

    #[test]
    fn hysteresis_both_ways() {
        let mut t = Tracker::new(Thresholds {
            unhealthy_after: 3,
            healthy_after: 2,
        });
        assert_eq!(t.health, Health::Unknown);
        assert!(!t.is_up(), "unknown is out of rotation");
        assert!(t.observe(true, S).is_some());
        for i in 0..2 {
            assert_eq!(t.observe(false, (2 + i) * S), None);
        }
        assert_eq!(t.observe(false, 4 * S).map(|x| x.to), Some(Health::Down));
        assert_eq!(
            t.observe(false, 5 * S),
            None,
            "a transition is reported once"
        );
        assert_eq!(
            t.observe(true, 6 * S),
            None,
            "one success is not enough to come back"
        );
        assert_eq!(t.observe(true, 7 * S).map(|x| x.to), Some(Health::Up));
    }

    #[test]
    fn flapping_below_the_thresholds_changes_nothing() {
        let mut t = Tracker::new(Thresholds {
            unhealthy_after: 2,
            healthy_after: 2,
        });
        t.observe(true, Duration::ZERO);
        for i in 1..100u32 {
            assert_eq!(
                t.observe(i % 2 == 0, i * S),
                None,
                "flap at {i}s moved the backend"
            );
        }
        assert!(t.is_up());
        // Down, then flapping keeps it down.
        t.observe(false, 100 * S);
        t.observe(false, 101 * S);
        for i in 102..200u32 {
            assert_eq!(t.observe(i % 2 == 0, i * S), None);
        }
        assert_eq!(t.health, Health::Down);
    }

    #[test]
    fn a_seeded_tracker_is_up_and_leaves_only_at_the_threshold() {
        let th = Thresholds {
            unhealthy_after: 3,
            healthy_after: 2,
        };
        let mut t = Tracker::seeded_up(th);
        assert!(t.is_up());
        assert_eq!(t.observe(true, S), None, "already up: no transition");
        assert_eq!(t.observe(false, 2 * S), None);
        assert_eq!(t.observe(false, 3 * S), None);
        assert_eq!(
            t.observe(false, 4 * S),
            Some(Transition {
                from: Health::Up,
                to: Health::Down
            })
        );
    }

    #[test]
    fn a_first_failure_from_unknown_needs_the_threshold_too() {
        let mut t = Tracker::new(Thresholds::default());
        assert_eq!(t.observe(false, S), None);
        assert_eq!(t.observe(false, 2 * S).map(|x| x.to), Some(Health::Down));
    }
}
