//! Whether the key/value cache budget fits the memory the host has left: checked once at
//! start-up, then watched while the engine runs.
//!
//! The engine never lets its caches outgrow `--btlm.kv_cache_mb`, and under load they grow
//! to it (idle caches are kept for reuse while the budget has room). A budget larger than
//! what the host, or the process's cgroup (a container's memory limit), has left after
//! the weights are loaded is a miner that swaps or is killed for memory hours later, under
//! load. So the miner reads what is left (`MemAvailable`, and the cgroup's limit less its
//! usage) and warns with a budget that fits ([`report`]).
//!
//! Memory other processes take later (a second miner on the host, a validator, a build)
//! shrinks that room while the miner runs. [`MemoryWatch`] reads it again every
//! `--btlm.memory_check_ms`, and the engine holds its caches to what it allows
//! ([`cache_limit`]): idle caches are dropped and new requests wait, rather than the
//! kernel killing the miner for memory.

use std::time::{Duration, Instant};

/// Memory the engine needs beside the caches and the allocator's slack (activations and
/// scratch of a step, the tokenizer, the server), kept free in the budget the warning
/// suggests.
pub const HEADROOM_BYTES: u64 = 256 << 20;

/// A cgroup limit at or above this is no limit (cgroup v1 writes "unlimited" as
/// 9223372036854771712).
const UNLIMITED: u64 = 1 << 60;

/// What is left for the process, as the host and its cgroup say.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Room {
    /// The host's `MemAvailable` (`/proc/meminfo`), bytes.
    pub host: Option<u64>,
    /// The cgroup's limit less what it uses (less its inactive file pages, which the
    /// kernel reclaims first), bytes; `None` without a limit.
    pub cgroup: Option<u64>,
}

impl Room {
    /// The smaller of the two; `None` if neither is known.
    pub fn bytes(&self) -> Option<u64> {
        match (self.host, self.cgroup) {
            (Some(h), Some(c)) => Some(h.min(c)),
            (h, c) => h.or(c),
        }
    }

    /// This process's room; both parts `None` where the files cannot be read (not
    /// Linux).
    pub fn of_this_process() -> Room {
        Room::reader()()
    }

    /// Reads this process's room as [`Self::of_this_process`] does each time it is
    /// called, its cgroup's files found once (`/proc/self/cgroup` read now: a process
    /// stays in its cgroup), for readings taken again and again ([`MemoryWatch`]).
    pub fn reader() -> impl FnMut() -> Room + Send + 'static {
        let files = read_file("/proc/self/cgroup")
            .map(|list| cgroup_files(&list))
            .unwrap_or_default();
        move || Room {
            host: read_file("/proc/meminfo").and_then(|m| kb_field(&m, "MemAvailable:")),
            cgroup: files.iter().find_map(|f| {
                cgroup_room(
                    &read_file(&f.limit)?,
                    &read_file(&f.usage)?,
                    &read_file(&f.stat)?,
                )
            }),
        }
    }
}

/// The file at `path` as text; `None` if it cannot be read.
fn read_file(path: &str) -> Option<String> {
    std::fs::read_to_string(path).ok()
}

/// The `Name:   123 kB` field of `/proc/meminfo`, in bytes.
fn kb_field(meminfo: &str, name: &str) -> Option<u64> {
    meminfo
        .lines()
        .find_map(|line| crate::huge_pages::field_kb(line, name))
        .map(|kb| kb * 1024)
}

/// The three files of a cgroup's memory controller the room is read from.
#[derive(Debug, Clone, PartialEq, Eq)]
struct CgroupFiles {
    limit: String,
    usage: String,
    stat: String,
}

/// Where this process's memory cgroup's files may be, best first, from `/proc/self/cgroup`:
/// its own cgroup's (v2 `0::/path`, or v1's `memory` hierarchy), then the mount's root
/// (a container without a cgroup namespace sees the host's path there, but its own cgroup
/// mounted at the root).
fn cgroup_files(proc_self_cgroup: &str) -> Vec<CgroupFiles> {
    let v2 = |dir: &str| CgroupFiles {
        limit: format!("{dir}/memory.max"),
        usage: format!("{dir}/memory.current"),
        stat: format!("{dir}/memory.stat"),
    };
    let v1 = |dir: &str| CgroupFiles {
        limit: format!("{dir}/memory.limit_in_bytes"),
        usage: format!("{dir}/memory.usage_in_bytes"),
        stat: format!("{dir}/memory.stat"),
    };
    let mut files = Vec::new();
    for line in proc_self_cgroup.lines() {
        let mut parts = line.splitn(3, ':');
        let (Some(id), Some(controllers), Some(path)) = (parts.next(), parts.next(), parts.next())
        else {
            continue;
        };
        let path = path.trim_end_matches('/');
        if id == "0" && controllers.is_empty() {
            files.push(v2(&format!("/sys/fs/cgroup{path}")));
        } else if controllers.split(',').any(|c| c == "memory") {
            files.push(v1(&format!("/sys/fs/cgroup/memory{path}")));
        }
    }
    files.push(v2("/sys/fs/cgroup"));
    files.push(v1("/sys/fs/cgroup/memory"));
    files
}

/// A cgroup's room from its limit file (`max`, or bytes), usage file (bytes) and
/// `memory.stat` (its `inactive_file`, or v1's `total_inactive_file`): `None` without a
/// limit.
fn cgroup_room(limit: &str, usage: &str, stat: &str) -> Option<u64> {
    let limit: u64 = limit.trim().parse().ok().filter(|&l| l < UNLIMITED)?;
    let usage: u64 = usage.trim().parse().ok()?;
    let stat_field = |name: &str| {
        stat.lines().find_map(|l| {
            l.strip_prefix(name)?
                .strip_prefix(' ')?
                .trim()
                .parse::<u64>()
                .ok()
        })
    };
    let inactive = stat_field("total_inactive_file")
        .or_else(|| stat_field("inactive_file"))
        .unwrap_or(0);
    Some(limit.saturating_sub(usage.saturating_sub(inactive)))
}

/// The warning for a cache budget of `kv_cache_mb` MiB beside an allocator slack of
/// `heap_slack_mb` MiB when they and [`HEADROOM_BYTES`] do not fit `room`, with a budget
/// that does; `None` when they fit or the room is unknown.
pub fn report(kv_cache_mb: usize, heap_slack_mb: usize, room: Room) -> Option<String> {
    let left = room.bytes()?;
    let mib = |n: usize| (n as u64) << 20;
    let needed = mib(kv_cache_mb) + mib(heap_slack_mb) + HEADROOM_BYTES;
    if needed <= left {
        return None;
    }
    let show = |b: Option<u64>, none: &str| {
        b.map_or_else(|| none.to_string(), |b| format!("{} MiB", b >> 20))
    };
    // Whole 256 MiB steps, as the operator would write it.
    let fits = left.saturating_sub(mib(heap_slack_mb) + HEADROOM_BYTES) >> 20 >> 8 << 8;
    let advice = if fits > 0 {
        format!("a budget of {fits} MiB fits (--btlm.kv_cache_mb {fits})")
    } else {
        "no cache budget fits: free memory, or run a smaller weight format \
         (--btlm.quantize)"
            .to_string()
    };
    Some(format!(
        "the key/value cache budget (--btlm.kv_cache_mb {kv_cache_mb}) and the allocator's \
         slack (--btlm.heap_slack_mb {heap_slack_mb}) are more than the {} MiB left after \
         loading (host MemAvailable {}, cgroup limit less usage {}): under load the caches \
         grow to their budget, and the kernel would then swap the miner or kill it for \
         memory; {advice}",
        left >> 20,
        show(room.host, "unknown"),
        show(room.cgroup, "no limit"),
    ))
}

/// Reads this process's room and logs it at debug level, and [`report`]'s warning if any.
pub fn log_kv_budget(kv_cache_mb: usize, heap_slack_mb: usize) {
    let room = Room::of_this_process();
    tracing::debug!(
        host_mib = room.host.map(|b| b >> 20),
        cgroup_mib = room.cgroup.map(|b| b >> 20),
        "memory left after loading"
    );
    if let Some(warning) = report(kv_cache_mb, heap_slack_mb, room) {
        tracing::warn!("{warning}");
    }
}

/// The least time between two warnings of the caches held back ([`MemoryWatch::check`]).
pub const WARN_EVERY: Duration = Duration::from_secs(600);

/// How often the engine reads the memory left by default (`--btlm.memory_check_ms`): a
/// reading takes ~20–40 µs; in 100 ms another process growing at 2.5 GB/s takes the
/// [`HEADROOM_BYTES`]. Measured in a full cgroup (docs/benchmarks.md, session 59): against
/// a process taking 80 MB/s the miner lived; at 320 MB/s it was killed at 1 s and at
/// 100 ms alike (its engine thread stalled in the kernel's reclaim).
pub const DEFAULT_CHECK_MS: u64 = 100;

/// Bytes the key/value caches may take together when they have `written` bytes in memory
/// already (what the caches in use have written so far, and the idle ones) and `room`
/// bytes are left: `written + room − reserve`, none when the room is that far below the
/// reserve. Caches lent but not yet written are backed by the OS only as they are written,
/// so they count against the room, not as taken.
pub fn cache_limit(written: usize, room: u64, reserve: u64) -> usize {
    let allowed = (written as u128 + room as u128).saturating_sub(reserve as u128);
    usize::try_from(allowed).unwrap_or(usize::MAX)
}

/// The memory left, read again every so often while the engine runs (see the module
/// documentation).
pub struct MemoryWatch {
    every: Duration,
    reserve: u64,
    next: Option<Instant>,
    /// Whether the limit was last reported below the budget.
    cut: bool,
    /// When the last warning of a cut was logged.
    warned_at: Option<Instant>,
    /// Whether the current cut was warned about (its end is then logged too).
    announced: bool,
    read: Box<dyn FnMut() -> Room + Send>,
}

impl std::fmt::Debug for MemoryWatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MemoryWatch")
            .field("every", &self.every)
            .field("reserve", &self.reserve)
            .field("cut", &self.cut)
            .finish_non_exhaustive()
    }
}

impl MemoryWatch {
    /// A watch reading the room with `read` every `every`, keeping `reserve` bytes free.
    pub fn new(every: Duration, reserve: u64, read: impl FnMut() -> Room + Send + 'static) -> Self {
        MemoryWatch {
            every,
            reserve,
            next: None,
            cut: false,
            warned_at: None,
            announced: false,
            read: Box::new(read),
        }
    }

    /// A watch of this process's room ([`Room::of_this_process`]) every `every`, keeping
    /// [`HEADROOM_BYTES`] free for the engine's other memory to grow into (a longer
    /// prompt's step buffers). Unlike [`report`] at start-up it keeps no room for the
    /// allocator's slack: what the heaps hold free is resident already, counted as used.
    pub fn of_this_process(every: Duration) -> Self {
        MemoryWatch::new(every, HEADROOM_BYTES, Room::reader())
    }

    /// How often it reads the room.
    pub fn every(&self) -> Duration {
        self.every
    }

    /// Whether [`Self::check`] would read the room at `now`.
    pub fn due(&self, now: Instant) -> bool {
        self.next.is_none_or(|next| now >= next)
    }

    /// When due (the first call, then every [`Self::every`]): reads the room and returns the
    /// caches' limit for caches with `written` bytes in memory under a budget of `budget`
    /// bytes ([`cache_limit`], at most `budget`). `None` when not due or when the room
    /// cannot be read. Logs a warning when the limit falls below 15/16 of the budget (at
    /// most once every [`WARN_EVERY`]: in a cgroup at its limit the room read swings by
    /// hundreds of MB as the kernel moves file pages between its lists, and the limit with
    /// it; debug level otherwise), and a line when it is the whole budget again after a
    /// warning.
    pub fn check(&mut self, now: Instant, written: usize, budget: usize) -> Option<usize> {
        if !self.due(now) {
            return None;
        }
        self.next = Some(now + self.every);
        let room = (self.read)();
        let left = room.bytes()?;
        let limit = cache_limit(written, left, self.reserve).min(budget);
        let mib = |b: usize| b >> 20;
        if !self.cut && limit < budget - budget / 16 {
            self.cut = true;
            let message = format!(
                "btlm engine: only {} MiB of memory are left (host MemAvailable, or the \
                 cgroup's limit less its usage): the key/value caches are held to {} MiB of \
                 their {} MiB budget (--btlm.kv_cache_mb) until memory is freed, idle caches \
                 dropped and requests that need more waiting, rather than the kernel killing \
                 the miner for memory",
                left >> 20,
                mib(limit),
                mib(budget),
            );
            let (host_mib, cgroup_mib) = (room.host.map(|b| b >> 20), room.cgroup.map(|b| b >> 20));
            if self
                .warned_at
                .is_some_and(|at| now.duration_since(at) < WARN_EVERY)
            {
                tracing::debug!(
                    written_mib = mib(written),
                    host_mib,
                    cgroup_mib,
                    "{message}"
                );
            } else {
                self.warned_at = Some(now);
                self.announced = true;
                tracing::warn!(
                    written_mib = mib(written),
                    host_mib,
                    cgroup_mib,
                    "{message}"
                );
            }
        } else if self.cut && limit >= budget {
            self.cut = false;
            let message = "btlm engine: the memory left has room for the whole key/value \
                           cache budget again";
            if std::mem::take(&mut self.announced) {
                tracing::info!(budget_mib = mib(budget), "{message}");
            } else {
                tracing::debug!(budget_mib = mib(budget), "{message}");
            }
        } else {
            tracing::trace!(limit_mib = mib(limit), "btlm engine: memory left read");
        }
        Some(limit)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GIB: u64 = 1 << 30;

    #[test]
    fn mem_available_is_read_from_meminfo() {
        let meminfo =
            "MemTotal:       24683772 kB\nMemFree:  100 kB\nMemAvailable:   24104496 kB\n";
        assert_eq!(kb_field(meminfo, "MemAvailable:"), Some(24104496 * 1024));
        assert_eq!(kb_field("MemTotal: 1 kB\n", "MemAvailable:"), None);
    }

    #[test]
    fn a_cgroup_has_room_only_under_a_limit() {
        // v2: a limit, its usage less the inactive file pages.
        let stat = "anon 1000\nfile 3000\ninactive_file 2048\nactive_file 952\n";
        assert_eq!(
            cgroup_room("8192\n", "6144\n", stat),
            Some(8192 - (6144 - 2048))
        );
        assert_eq!(cgroup_room("max\n", "6144\n", stat), None);
        // v1: "unlimited", and `total_inactive_file` (the hierarchy's) preferred.
        assert_eq!(cgroup_room("9223372036854771712\n", "1\n", ""), None);
        let v1 = "inactive_file 10\ntotal_inactive_file 100\n";
        assert_eq!(cgroup_room("1000", "600", v1), Some(500));
        // Usage past the limit (it happens for a moment): no room, not an overflow.
        assert_eq!(cgroup_room("1000", "5000", ""), Some(0));
    }

    #[test]
    fn cgroup_files_come_from_the_process_cgroup_then_the_mount_root() {
        let v1 = "4:memory:/process_api/abc\n3:cpuset:/\n0::/\n";
        let files = cgroup_files(v1);
        assert_eq!(
            files[0].limit,
            "/sys/fs/cgroup/memory/process_api/abc/memory.limit_in_bytes"
        );
        assert_eq!(files[1].limit, "/sys/fs/cgroup/memory.max");
        assert_eq!(
            files.last().expect("root").limit,
            "/sys/fs/cgroup/memory/memory.limit_in_bytes"
        );
        let v2 = cgroup_files("0::/system.slice/miner.service\n");
        assert_eq!(
            v2[0].usage,
            "/sys/fs/cgroup/system.slice/miner.service/memory.current"
        );
        assert_eq!(
            v2[0].stat,
            "/sys/fs/cgroup/system.slice/miner.service/memory.stat"
        );
    }

    #[test]
    fn a_budget_past_the_room_is_reported_with_one_that_fits() {
        let room = Room {
            host: Some(20 * GIB),
            cgroup: Some(3 * GIB),
        };
        assert_eq!(room.bytes(), Some(3 * GIB));
        let said = report(4096, 256, room).expect("reported");
        assert!(said.contains("the 3072 MiB left after loading"), "{said}");
        assert!(said.contains("cgroup limit less usage 3072 MiB"), "{said}");
        // 3072 − 256 − 256 = 2560.
        assert!(said.contains("--btlm.kv_cache_mb 2560)"), "{said}");
        // What fits is silent, as is an unknown room.
        assert_eq!(report(2560, 256, room), None);
        assert_eq!(report(4096, 256, Room::default()), None);
        let host_only = Room {
            host: Some(GIB / 4),
            cgroup: None,
        };
        let said = report(4096, 256, host_only).expect("reported");
        assert!(
            said.contains("cgroup limit less usage no limit")
                && said.contains("no cache budget fits"),
            "{said}"
        );
    }

    #[test]
    fn the_cache_limit_is_what_is_written_plus_the_room_less_the_reserve() {
        assert_eq!(cache_limit(1000, 500, 200), 1300);
        assert_eq!(cache_limit(1000, 100, 200), 900, "room under the reserve");
        assert_eq!(cache_limit(100, 0, 200), 0);
        assert_eq!(cache_limit(usize::MAX, u64::MAX, 0), usize::MAX);
    }

    #[test]
    fn the_watch_reads_the_room_when_due_and_caps_the_limit_at_the_budget() {
        let room = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(10 * GIB));
        let reads = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
        let (r, n) = (room.clone(), reads.clone());
        let every = Duration::from_secs(1);
        let mut watch = MemoryWatch::new(every, GIB / 4, move || {
            n.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            Room {
                host: Some(r.load(std::sync::atomic::Ordering::Relaxed)),
                cgroup: None,
            }
        });
        let budget = (4 * GIB) as usize;
        let t0 = Instant::now();
        assert_eq!(watch.check(t0, 0, budget), Some(budget), "plenty left");
        assert!(!watch.cut);
        // Not due again for a second, whatever happens meanwhile.
        room.store(GIB, std::sync::atomic::Ordering::Relaxed);
        assert_eq!(watch.check(t0 + every / 2, 0, budget), None);
        assert_eq!(reads.load(std::sync::atomic::Ordering::Relaxed), 1);
        // 512 MiB written, 1 GiB left, 256 MiB kept free: 1280 MiB.
        let written = (GIB / 2) as usize;
        let limit = watch.check(t0 + every, written, budget);
        assert_eq!(limit, Some((GIB + GIB / 4) as usize));
        assert!(watch.cut);
        // Room again: the whole budget.
        room.store(8 * GIB, std::sync::atomic::Ordering::Relaxed);
        assert_eq!(watch.check(t0 + 2 * every, written, budget), Some(budget));
        assert!(!watch.cut);
        // Just under the budget is not reported as a cut (no warning for a few MiB).
        room.store(4 * GIB, std::sync::atomic::Ordering::Relaxed);
        assert_eq!(
            watch.check(t0 + 3 * every, 0, budget),
            Some(budget - (GIB / 4) as usize)
        );
        assert!(!watch.cut);
        // A second cut soon after is not warned about again, nor its end; after
        // `WARN_EVERY` it is.
        let warned = watch.warned_at.expect("the first cut was warned about");
        assert_eq!(warned, t0 + every);
        room.store(GIB, std::sync::atomic::Ordering::Relaxed);
        assert!(watch.check(t0 + 4 * every, written, budget) < Some(budget));
        assert!(watch.cut && !watch.announced);
        assert_eq!(watch.warned_at, Some(warned));
        room.store(8 * GIB, std::sync::atomic::Ordering::Relaxed);
        assert_eq!(watch.check(t0 + 5 * every, written, budget), Some(budget));
        room.store(GIB, std::sync::atomic::Ordering::Relaxed);
        let later = warned + WARN_EVERY;
        assert!(watch.check(later, written, budget) < Some(budget));
        assert!(watch.cut && watch.announced);
        assert_eq!(watch.warned_at, Some(later));
        // A room that cannot be read changes nothing.
        let mut blind = MemoryWatch::new(every, 0, Room::default);
        assert_eq!(blind.check(t0, 0, budget), None);
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn this_host_tells_its_available_memory() {
        let room = Room::of_this_process();
        assert!(room.host.is_some_and(|b| b > 0), "{room:?}");
    }
}
