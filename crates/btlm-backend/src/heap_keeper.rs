//! Gives the C allocator's free memory back to the OS once its heaps hold too much of it.
//!
//! glibc keeps the memory a process frees in its heaps (one per thread that allocates, up
//! to eight per core) and by itself gives back only a heap's free end. What is freed in the
//! middle stays resident: what loading left, a prompt step's working buffers, and (until
//! session 47 made each cache a mapping of its own, `Cache::allocate`) the key/value
//! caches the pool dropped. Under long mixed traffic that was ~700 MB with a 1 GiB cache
//! budget, 580 MB of it in the main heap (docs/benchmarks.md, session 46).
//! `malloc_trim(0)` gives every whole free page of every heap back
//! (`madvise(MADV_DONTNEED)`): the memory stays the allocator's, and the OS backs a page
//! again on its next write.
//!
//! The keeper is a thread that reads every [`CHECK_EVERY`] how many bytes the heaps hold
//! free (`mallinfo2`) and trims once they held `slack` bytes more than the least since its
//! last trim through a window of readings ([`TrimPolicy`]): free memory given back stays
//! counted as free, free space smaller than a page cannot be given back, and memory freed
//! after a step and taken again by the next is not worth giving back. The price: the trim
//! itself (25–50 ms for 300–400 MB, the heaps locked in turn while it walks them) and the
//! first write again to each page given back, once reused. Linux with glibc only;
//! elsewhere [`HeapKeeper::start`] starts nothing.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// How often the keeper reads the heaps' free bytes.
pub const CHECK_EVERY: Duration = Duration::from_secs(1);

/// What the keeper did, for logs and metrics.
#[derive(Debug, Default)]
pub struct HeapStats {
    /// Trims run.
    pub trims: AtomicU64,
    /// Resident bytes the trims gave back, summed: the process's RSS before each trim less
    /// after (other threads allocate meanwhile, so an estimate).
    pub released_bytes: AtomicU64,
    /// Microseconds the trims took, summed.
    pub trim_micros: AtomicU64,
    /// Bytes the heaps held free at the last reading (given back or not).
    pub free_bytes: AtomicUsize,
}

/// Readings of the heaps' free bytes a trim looks back on: [`CHECK_EVERY`] apart, 30 s.
pub const WINDOW: usize = 30;

/// When to trim: once the heaps held, at every reading of the last [`WINDOW`], `slack`
/// bytes free more than the least they held since the last trim (the floor).
///
/// - A trim does not change the count (what it gives back stays the allocator's free
///   memory), so the count right after it is the new floor; memory taken from the heaps
///   since (resident again once written) lowers the floor with it.
/// - The least of the window, not the last reading: a step's working buffers are freed
///   after the step and taken again by the next one, so the free count swings by
///   hundreds of MB step by step. Trimming at the top of a swing gives back memory the
///   next step writes again, page by page (a first trim every ~45 s measured ~half the
///   validators' answers in the soak, docs/benchmarks.md, session 46). Memory that stays
///   free through the window (what loading left, buffers of a larger step than the recent
///   ones) is what a trim is for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TrimPolicy {
    slack: usize,
    floor: usize,
    window: std::collections::VecDeque<usize>,
}

impl TrimPolicy {
    /// A policy that trims once `slack` bytes (at least one) stayed free beyond the floor,
    /// which starts at 0, through a window.
    pub fn new(slack: usize) -> Self {
        TrimPolicy {
            slack: slack.max(1),
            floor: 0,
            window: std::collections::VecDeque::with_capacity(WINDOW),
        }
    }

    /// Takes a reading of the heaps' free bytes: whether to trim now.
    pub fn due(&mut self, free: usize) -> bool {
        self.floor = self.floor.min(free);
        if self.window.len() == WINDOW {
            self.window.pop_front();
        }
        self.window.push_back(free);
        let least = self.window.iter().copied().min().unwrap_or(0);
        self.window.len() == WINDOW && least >= self.floor.saturating_add(self.slack)
    }

    /// Records a trim, after which the heaps held `free` bytes free: the new floor, and a
    /// new window.
    pub fn trimmed(&mut self, free: usize) {
        self.floor = free;
        self.window.clear();
    }
}

/// The keeper thread (see the module documentation); it stops when dropped.
#[derive(Debug)]
pub struct HeapKeeper {
    stop: Arc<(Mutex<bool>, Condvar)>,
    thread: Option<JoinHandle<()>>,
}

impl HeapKeeper {
    /// Starts the keeper, trimming with `slack` bytes of slack. `None` where the allocator
    /// is not glibc's or the thread could not start (said in the log).
    pub fn start(slack: usize, stats: Arc<HeapStats>) -> Option<HeapKeeper> {
        Self::start_reading_every(slack, CHECK_EVERY, stats)
    }

    /// [`Self::start`] with readings `every` apart.
    fn start_reading_every(
        slack: usize,
        every: Duration,
        stats: Arc<HeapStats>,
    ) -> Option<HeapKeeper> {
        if !allocator::CAN_TRIM {
            tracing::info!(
                "btlm engine: --btlm.heap_slack_mb has no effect here: giving free heap \
                 memory back needs glibc on Linux"
            );
            return None;
        }
        let stop = Arc::new((Mutex::new(false), Condvar::new()));
        let stopped = stop.clone();
        let spawned = std::thread::Builder::new()
            .name("btlm-heap-keeper".into())
            .spawn(move || keep(slack, every, &stats, &stopped));
        match spawned {
            Ok(thread) => Some(HeapKeeper {
                stop,
                thread: Some(thread),
            }),
            Err(e) => {
                tracing::warn!(
                    "btlm engine: free heap memory is not given back: cannot start its \
                     thread: {e}"
                );
                None
            }
        }
    }
}

impl Drop for HeapKeeper {
    fn drop(&mut self) {
        let (lock, wake) = &*self.stop;
        if let Ok(mut stop) = lock.lock() {
            *stop = true;
        }
        wake.notify_all();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// The keeper's loop: a reading `every` so often, a trim when the policy says so.
fn keep(slack: usize, every: Duration, stats: &HeapStats, stop: &(Mutex<bool>, Condvar)) {
    let mut policy = TrimPolicy::new(slack);
    let (lock, wake) = stop;
    loop {
        {
            let Ok(stopped) = lock.lock() else { return };
            let Ok((stopped, _)) = wake.wait_timeout_while(stopped, every, |s| !*s) else {
                return;
            };
            if *stopped {
                return;
            }
        }
        let free = allocator::free_bytes();
        stats.free_bytes.store(free, Ordering::Relaxed);
        if !policy.due(free) {
            continue;
        }
        let before = allocator::resident_bytes();
        let start = Instant::now();
        allocator::trim();
        let took = start.elapsed();
        let released = before.saturating_sub(allocator::resident_bytes());
        let free = allocator::free_bytes();
        policy.trimmed(free);
        stats.trims.fetch_add(1, Ordering::Relaxed);
        stats
            .released_bytes
            .fetch_add(released as u64, Ordering::Relaxed);
        stats
            .trim_micros
            .fetch_add(took.as_micros() as u64, Ordering::Relaxed);
        tracing::debug!(
            target: "btlm_engine",
            released_mb = released >> 20,
            heap_free_mb = free >> 20,
            took_ms = took.as_secs_f64() * 1e3,
            "btlm free heap memory given back to the OS"
        );
    }
}

#[cfg(all(target_os = "linux", target_env = "gnu"))]
mod allocator {
    /// glibc's allocator can give free pages back.
    pub const CAN_TRIM: bool = true;

    /// Bytes free in every heap (`mallinfo2`'s `fordblks`: free blocks and the heaps' free
    /// ends, given back or not).
    pub fn free_bytes() -> usize {
        // SAFETY: mallinfo2 takes no argument and only reads the allocator's state under
        // its locks.
        unsafe { libc::mallinfo2() }.fordblks
    }

    /// The process's resident bytes (`/proc/self/statm`), 0 where unknown.
    pub fn resident_bytes() -> usize {
        // SAFETY: sysconf only reads a system setting.
        let page = usize::try_from(unsafe { libc::sysconf(libc::_SC_PAGESIZE) }).unwrap_or(4096);
        std::fs::read_to_string("/proc/self/statm")
            .ok()
            .and_then(|s| s.split_whitespace().nth(1)?.parse::<usize>().ok())
            .map_or(0, |pages| pages.saturating_mul(page))
    }

    /// Gives every whole free page of every heap back to the OS.
    pub fn trim() {
        // SAFETY: malloc_trim only walks and trims the allocator's free lists under its
        // locks; 0 keeps no padding at a heap's end.
        unsafe {
            libc::malloc_trim(0);
        }
    }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
mod allocator {
    /// Only glibc's allocator is trimmed.
    pub const CAN_TRIM: bool = false;

    pub fn free_bytes() -> usize {
        0
    }

    pub fn resident_bytes() -> usize {
        0
    }

    pub fn trim() {}
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Feeds `readings` and returns the indices of those a trim was due at (trimming then,
    /// with the reading as the count after).
    fn trims(p: &mut TrimPolicy, readings: impl IntoIterator<Item = usize>) -> Vec<usize> {
        let mut at = Vec::new();
        for (i, free) in readings.into_iter().enumerate() {
            if p.due(free) {
                p.trimmed(free);
                at.push(i);
            }
        }
        at
    }

    #[test]
    fn a_trim_is_due_once_the_free_bytes_stayed_past_the_floor_by_the_slack_for_a_window() {
        let mut p = TrimPolicy::new(100);
        assert_eq!(trims(&mut p, [99; 3 * WINDOW]), Vec::<usize>::new());
        let mut p = TrimPolicy::new(100);
        assert_eq!(trims(&mut p, [100; WINDOW]), vec![WINDOW - 1]);
        // What the trim gave back stays counted as free: the floor.
        assert_eq!(trims(&mut p, [150; 2 * WINDOW]), Vec::<usize>::new());
        assert_eq!(trims(&mut p, [200; WINDOW]), vec![WINDOW - 1]);
    }

    #[test]
    fn free_bytes_swinging_step_by_step_do_not_trim() {
        // Working buffers freed after a step and taken by the next: 0 to 500 free.
        let mut p = TrimPolicy::new(100);
        let swing = (0..10 * WINDOW)
            .map(|i| if i % 7 == 0 { 0 } else { 500 })
            .chain([0]);
        assert_eq!(trims(&mut p, swing), Vec::<usize>::new());
        // Then 300 bytes stay free through the swings: one trim, a window later.
        let rising = (0..3 * WINDOW).map(|i| if i % 7 == 0 { 300 } else { 800 });
        assert_eq!(trims(&mut p, rising), vec![WINDOW - 1]);
    }

    #[test]
    fn memory_reused_since_a_trim_lowers_the_floor() {
        let mut p = TrimPolicy::new(100);
        p.trimmed(500);
        // 300 bytes taken from the heaps (written again, resident), then freed.
        assert!(!p.due(200));
        assert_eq!(trims(&mut p, [299; WINDOW]), Vec::<usize>::new());
        assert_eq!(trims(&mut p, [300; WINDOW]), vec![WINDOW - 1]);
    }

    #[test]
    fn a_slack_of_zero_counts_as_one_byte() {
        let mut p = TrimPolicy::new(0);
        p.trimmed(10);
        assert_eq!(trims(&mut p, [10; 2 * WINDOW]), Vec::<usize>::new());
        assert_eq!(trims(&mut p, [11; WINDOW]), vec![WINDOW - 1]);
    }

    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    #[test]
    fn the_keeper_gives_freed_heap_pages_back() {
        // Blocks below glibc's mmap threshold come from a heap; freed in the middle of it
        // (a block kept after them), they stay resident until trimmed.
        const BLOCK: usize = 64 << 10;
        const BLOCKS: usize = 1024;
        let mut blocks: Vec<Vec<u8>> = (0..BLOCKS).map(|_| vec![1u8; BLOCK]).collect();
        let keep_end = blocks.pop();
        let stats = Arc::new(HeapStats::default());
        let keeper =
            HeapKeeper::start_reading_every(16 << 20, Duration::from_millis(10), stats.clone())
                .expect("glibc can trim");
        drop(blocks);
        let deadline = Instant::now() + Duration::from_secs(30);
        while stats.trims.load(Ordering::Relaxed) == 0 && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(50));
        }
        drop(keeper);
        drop(keep_end);
        assert!(stats.trims.load(Ordering::Relaxed) >= 1, "no trim in 30 s");
        // 64 MiB freed and resident: most of it given back (other tests of this binary
        // may allocate meanwhile).
        let released = stats.released_bytes.load(Ordering::Relaxed);
        assert!(released >= 16 << 20, "the trims gave back {released} bytes");
    }
}
