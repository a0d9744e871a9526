//! Whether the key/value cache budget fits the memory left after loading, checked once at
//! start-up.
//!
//! The engine never lets its caches outgrow `--btlm.kv_cache_mb`, and under load they grow
//! to it (idle caches are kept for reuse while the budget has room). A budget larger than
//! what the host, or the process's cgroup (a container's memory limit), has left after
//! the weights are loaded is a miner that swaps or is killed for memory hours later, under
//! load. So the miner reads what is left (`MemAvailable`, and the cgroup's limit less its
//! usage) and warns with a budget that fits.

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
        let read = |p: &str| std::fs::read_to_string(p).ok();
        let host = read("/proc/meminfo").and_then(|m| kb_field(&m, "MemAvailable:"));
        let cgroup = read("/proc/self/cgroup").and_then(|list| {
            cgroup_files(&list)
                .into_iter()
                .find_map(|f| cgroup_room(&read(&f.limit)?, &read(&f.usage)?, &read(&f.stat)?))
        });
        Room { host, cgroup }
    }
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

    #[cfg(target_os = "linux")]
    #[test]
    fn this_host_tells_its_available_memory() {
        let room = Room::of_this_process();
        assert!(room.host.is_some_and(|b| b > 0), "{room:?}");
    }
}
