//! Allocators: `LB_RING` regions, service / backend / ACL-set ids, and their deferred release
//! after the grace period (a packet that read the old entry finishes within it).

use std::{
    collections::{BTreeSet, VecDeque},
    time::{Duration, Instant},
};

use lb_common::{
    acl,
    consts::{MAX_BACKENDS, MAX_SERVICES},
    maps::BackendId,
};

/// How long a freed table region, backend id or ACL set stays unused before it is reused. A
/// packet that read the old entry finishes in microseconds, far within it.
pub const GRACE: Duration = Duration::from_millis(100);

/// Something no map entry points at any more, reusable once the grace period is over.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Deferred {
    /// A table region: offset, length.
    Region(u32, u32),
    /// A backend id whose entry is inactive and whose flows are purged.
    Backend(BackendId),
    /// An ACL set no service or VIP points at: its id and the prefixes to delete.
    Acl(u32, Vec<acl::Prefix>),
}

/// No room: the message names the limit.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Exhausted(pub String);

/// First-fit allocator of `LB_RING` regions.
#[derive(Clone, Debug)]
pub struct Ring {
    pub size: u32,
    /// Free (offset, length) ranges, sorted and coalesced.
    pub free: Vec<(u32, u32)>,
}

impl Ring {
    #[must_use]
    pub fn new(size: u32) -> Self {
        Self {
            size,
            free: vec![(0, size)],
        }
    }

    pub fn alloc(&mut self, len: u32) -> Option<u32> {
        let i = self.free.iter().position(|&(_, l)| l >= len)?;
        let (off, l) = self.free[i];
        if l == len {
            self.free.remove(i);
        } else {
            self.free[i] = (off + len, l - len);
        }
        Some(off)
    }

    /// Marks `off..off + len` used, if it is wholly free (a live table found at start).
    pub fn reserve(&mut self, off: u32, len: u32) -> bool {
        let Some(end) = off.checked_add(len) else {
            return false;
        };
        let Some(i) = self
            .free
            .iter()
            .position(|&(o, l)| o <= off && end <= o + l)
        else {
            return false;
        };
        let (o, l) = self.free.remove(i);
        let mut at = i;
        for piece in [(o, off - o), (end, o + l - end)] {
            if piece.1 > 0 {
                self.free.insert(at, piece);
                at += 1;
            }
        }
        true
    }

    pub fn release(&mut self, off: u32, len: u32) {
        let i = self.free.partition_point(|&(o, _)| o < off);
        self.free.insert(i, (off, len));
        // Coalesce with the neighbours.
        if i + 1 < self.free.len() && self.free[i].0 + self.free[i].1 == self.free[i + 1].0 {
            self.free[i].1 += self.free[i + 1].1;
            self.free.remove(i + 1);
        }
        if i > 0 && self.free[i - 1].0 + self.free[i - 1].1 == self.free[i].0 {
            self.free[i - 1].1 += self.free[i].1;
            self.free.remove(i);
        }
    }

    #[must_use]
    pub fn used(&self) -> u64 {
        u64::from(self.size) - self.free.iter().map(|&(_, l)| u64::from(l)).sum::<u64>()
    }
}

/// Lowest-free-first id allocator over `lo..hi`.
#[derive(Clone, Debug)]
pub struct Ids {
    lo: u32,
    hi: u32,
    /// Ids in use.
    used: BTreeSet<u32>,
    /// Ids below `next` that were released: reused first, lowest first.
    released: BTreeSet<u32>,
    /// The lowest id never handed out.
    next: u32,
}

impl Ids {
    #[must_use]
    pub fn new(lo: u32, hi: u32) -> Self {
        Self {
            lo,
            hi,
            used: BTreeSet::new(),
            released: BTreeSet::new(),
            next: lo,
        }
    }

    /// The lowest free id, in O(log n) (a scan of the used set made provisioning 10k services
    /// quadratic).
    pub fn alloc(&mut self) -> Option<u32> {
        let id = match self.released.pop_first() {
            Some(id) => id,
            None if self.next < self.hi => {
                self.next += 1;
                self.next - 1
            }
            None => return None,
        };
        self.used.insert(id);
        Some(id)
    }

    /// Marks `id` used (an id found live at start); `false` if it is out of range or taken.
    pub fn reserve(&mut self, id: u32) -> bool {
        if id < self.lo || id >= self.hi || self.used.contains(&id) {
            return false;
        }
        if id >= self.next {
            self.released.extend(self.next..id);
            self.next = id + 1;
        } else {
            self.released.remove(&id);
        }
        self.used.insert(id);
        true
    }

    /// Releases an id for reuse.
    pub fn free(&mut self, id: u32) {
        if self.used.remove(&id) {
            self.released.insert(id);
        }
    }

    #[must_use]
    pub fn free_count(&self) -> usize {
        (self.hi - self.lo) as usize - self.used.len()
    }
}

/// Every allocator of the agent, and what waits out its grace period.
#[derive(Clone, Debug)]
pub struct Alloc {
    pub ring: Ring,
    pub services: Ids,
    pub backends: Ids,
    pub acl_sets: Ids,
    /// Oldest first: releases pop from the front.
    deferred: VecDeque<(Instant, Deferred)>,
}

impl Alloc {
    #[must_use]
    pub fn new(ring_slots: u32) -> Self {
        Self {
            ring: Ring::new(ring_slots),
            services: Ids::new(0, MAX_SERVICES),
            backends: Ids::new(1, MAX_BACKENDS),
            acl_sets: Ids::new(1, 2 * MAX_SERVICES + 1),
            deferred: VecDeque::new(),
        }
    }

    /// Queues `d` for release once the grace period from now is over.
    pub fn defer(&mut self, d: Deferred) {
        self.deferred.push_back((Instant::now(), d));
    }

    /// Whether anything waits for its grace period.
    #[must_use]
    pub fn has_deferred(&self) -> bool {
        !self.deferred.is_empty()
    }

    /// Takes what is due: everything whose grace period is over, or, with `wait`, everything,
    /// after sleeping out the youngest one's grace period (at most [`GRACE`]: only when an
    /// allocation cannot succeed otherwise). Amortised O(1) per item.
    pub fn due(&mut self, wait: bool) -> Vec<Deferred> {
        if wait && let Some((youngest, _)) = self.deferred.back() {
            // Not a test sleep: the agent's grace period for in-flight packets. The writer runs
            // on a thread of its own, so this blocks no async task.
            std::thread::sleep(GRACE.saturating_sub(youngest.elapsed()));
        }
        let now = Instant::now();
        let mut out = Vec::new();
        while let Some((t, _)) = self.deferred.front() {
            if now.duration_since(*t) < GRACE {
                break;
            }
            if let Some((_, d)) = self.deferred.pop_front() {
                out.push(d);
            }
        }
        out
    }

    /// A table region of `len` slots.
    ///
    /// # Errors
    /// No free range is long enough.
    pub fn region(&mut self, len: u32) -> Result<u32, Exhausted> {
        self.ring.alloc(len).ok_or_else(|| {
            Exhausted(format!(
                "no room for a {len}-slot table: {} of {} slots in use",
                self.ring.used(),
                self.ring.size
            ))
        })
    }

    /// A backend id.
    ///
    /// # Errors
    /// Every id is in use.
    pub fn backend_id(&mut self) -> Result<BackendId, Exhausted> {
        self.backends.alloc().ok_or_else(|| {
            Exhausted(format!(
                "the backend map is full ({} backends)",
                MAX_BACKENDS - 1
            ))
        })
    }

    /// A service id.
    ///
    /// # Errors
    /// Every id is in use.
    pub fn service_id(&mut self) -> Result<u32, Exhausted> {
        self.services
            .alloc()
            .ok_or_else(|| Exhausted("the service map is full".into()))
    }

    /// An ACL set id.
    ///
    /// # Errors
    /// Every id is in use.
    pub fn acl_set(&mut self) -> Result<u32, Exhausted> {
        self.acl_sets
            .alloc()
            .ok_or_else(|| Exhausted("no free ACL set id".into()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reserving_live_ids_and_regions_carves_exactly_them() {
        let mut ids = Ids::new(1, 10);
        assert!(ids.reserve(5));
        assert!(!ids.reserve(5), "taken");
        assert!(!ids.reserve(0) && !ids.reserve(10), "out of range");
        let got: Vec<u32> = std::iter::from_fn(|| ids.alloc()).collect();
        assert_eq!(got, vec![1, 2, 3, 4, 6, 7, 8, 9]);
        let mut ring = Ring::new(100);
        assert!(ring.reserve(10, 5));
        assert_eq!(ring.free, vec![(0, 10), (15, 85)]);
        assert!(!ring.reserve(12, 5), "overlaps a used region");
        assert!(!ring.reserve(95, 10), "past the end");
        assert!(ring.reserve(0, 10));
        assert_eq!(ring.alloc(85), Some(15));
        assert_eq!(ring.alloc(1), None);
    }

    /// Ids come lowest-free first, released ones are reused, and the range is respected.
    #[test]
    fn ids_reuse_the_lowest_free() {
        let mut ids = Ids::new(1, 5);
        assert_eq!(
            (ids.alloc(), ids.alloc(), ids.alloc()),
            (Some(1), Some(2), Some(3))
        );
        ids.free(2);
        ids.free(1);
        assert_eq!(ids.free_count(), 3);
        assert_eq!(
            (ids.alloc(), ids.alloc(), ids.alloc()),
            (Some(1), Some(2), Some(4))
        );
        assert_eq!(ids.alloc(), None);
        ids.free(9); // never handed out: no effect
        assert_eq!(ids.alloc(), None);
    }

    #[test]
    fn released_neighbours_coalesce() {
        let mut ring = Ring::new(1000);
        let a = ring.alloc(400).unwrap();
        let b = ring.alloc(400).unwrap();
        assert_eq!(ring.alloc(400), None);
        ring.release(a, 400);
        ring.release(b, 400);
        assert_eq!(ring.free, vec![(0, 1000)]);
    }

    /// Deferred items come back oldest first, only once their grace period is over (or all of
    /// them when waited for).
    #[test]
    fn deferred_items_wait_out_the_grace_period() {
        let mut a = Alloc::new(10);
        a.defer(Deferred::Backend(1));
        a.defer(Deferred::Region(0, 5));
        assert!(a.has_deferred());
        let all = a.due(true);
        assert_eq!(all, vec![Deferred::Backend(1), Deferred::Region(0, 5)]);
        assert!(!a.has_deferred());
        a.defer(Deferred::Backend(2));
        assert_eq!(a.due(false), Vec::new(), "released before its grace period");
    }
}
