//! How a key/value cache's memory is paged: in 2 MiB huge pages by default on Linux
//! (`madvise(MADV_HUGEPAGE)` over a cache's mapping, honoured when the kernel's transparent
//! huge pages are `always` or `madvise`), `BTLM_KV_PAGES=small` for the kernel's default.
//!
//! Why: a decode step touches every cached sequence's rows of every head of every block,
//! 64 places a sequence and block that lie `capacity × row` bytes apart, each on a 4 KiB
//! page of its own, and the 1.5 GB weight stream between two blocks leaves none of their
//! translations in the TLB. On the AMX Xeon of session 56 the attention of eight
//! 90-position rows took 14.9, 18.5 ms a step in small pages and 12.8, 13.1 in huge ones,
//! one row's 2.7, 4.6 and 2.0, 2.5 (docs/benchmarks.md, session 56); on a Zen 5 VM, at 560
//! positions, reading the caches measured the same either way (session 48).
//!
//! Memory: the key/value budget counts every reserved position, and the engine's blank
//! caches are written whole ahead of their sequences anyway; what huge pages add is at
//! most the last 2 MiB of each of a cache's two mappings past its reservation (peak RSS
//! 75–80 MiB higher end to end with 16 caches, session 56).

use std::sync::OnceLock;

use crate::kernels::env_choice::{env_or, named};

/// The size of a transparent huge page on x86-64 Linux (and aarch64 with 4 KiB pages).
pub(crate) const HUGE_PAGE: usize = 2 << 20;

/// How cache memory is paged.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KvPages {
    /// 2 MiB pages where the kernel gives them (`madvise(MADV_HUGEPAGE)`).
    Huge,
    /// The kernel's default for the mapping.
    Small,
}

impl KvPages {
    /// `BTLM_KV_PAGES`'s value read as a choice (`None`: not `huge` or `small`).
    pub fn parse(value: &str) -> Option<KvPages> {
        named(value, &[("huge", KvPages::Huge), ("small", KvPages::Small)])
    }

    /// The choice of this process: `BTLM_KV_PAGES` if it names one (another value is
    /// ignored with a warning), else [`KvPages::Huge`]; decided once.
    pub fn active() -> KvPages {
        static ACTIVE: OnceLock<KvPages> = OnceLock::new();
        *ACTIVE.get_or_init(|| {
            env_or("BTLM_KV_PAGES", "huge, small", KvPages::parse, || {
                KvPages::Huge
            })
        })
    }
}

/// The whole huge pages inside `start..start + len` (an address range): the range from
/// the first 2 MiB boundary at or after `start` to the last one at or before its end
/// (empty if none fits).
pub(crate) fn huge_interior(start: usize, len: usize) -> std::ops::Range<usize> {
    let first = start.div_ceil(HUGE_PAGE).saturating_mul(HUGE_PAGE);
    let end = start.saturating_add(len) / HUGE_PAGE * HUGE_PAGE;
    first..end.max(first)
}

/// Asks for the whole huge pages inside `values`' memory, as [`KvPages::active`] says,
/// before anything writes it (the kernel backs each 2 MiB of it with one page at its first
/// write). Returns whether the advice was given; a kernel without transparent huge pages
/// refuses it, which leaves the memory as it was (logged once at debug level).
pub(crate) fn advise<T>(values: &[T]) -> bool {
    if KvPages::active() != KvPages::Huge {
        return false;
    }
    let range = huge_interior(values.as_ptr() as usize, std::mem::size_of_val(values));
    if range.is_empty() {
        return false;
    }
    advise_range(range)
}

#[cfg(target_os = "linux")]
fn advise_range(range: std::ops::Range<usize>) -> bool {
    // SAFETY: the range lies inside memory this process owns (the caller's slice), and
    // `MADV_HUGEPAGE` only changes how the kernel backs it, never its contents.
    let status = unsafe {
        libc::madvise(
            range.start as *mut libc::c_void,
            range.end - range.start,
            libc::MADV_HUGEPAGE,
        )
    };
    if status != 0 {
        static ONCE: OnceLock<()> = OnceLock::new();
        ONCE.get_or_init(|| {
            tracing::debug!(
                error = %std::io::Error::last_os_error(),
                "huge pages refused for key/value caches; they stay in small pages"
            );
        });
    }
    status == 0
}

#[cfg(not(target_os = "linux"))]
fn advise_range(_range: std::ops::Range<usize>) -> bool {
    false
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::huge_pages::{ThpMode, mappings_of_this_process};

    /// Whether this machine's kernel gives transparent huge pages to advised memory
    /// (`always` or `madvise`); `false` where the mode cannot be read.
    pub(crate) fn huge_pages_offered() -> bool {
        matches!(
            ThpMode::of_this_host(),
            Some(ThpMode::Always | ThpMode::Madvise)
        )
    }

    /// Whether the mapping holding `addr` may be backed by huge pages (`THPeligible: 1`
    /// in `/proc/self/smaps`).
    pub(crate) fn eligible_for_huge_pages(addr: usize) -> bool {
        mappings_of_this_process()
            .expect("smaps")
            .iter()
            .any(|m| m.range.contains(&addr) && m.eligible)
    }

    #[test]
    fn advised_memory_may_be_backed_by_huge_pages() {
        if KvPages::active() != KvPages::Huge || !huge_pages_offered() {
            eprintln!("skipped: BTLM_KV_PAGES=small or no transparent huge pages here");
            return;
        }
        // A mapping of its own, as a cache's memory is (`kv_cache::OWN_MAPPING_BYTES`).
        let values = bytemuck::allocation::try_zeroed_vec::<u8>(32 << 20).expect("memory");
        let inside = huge_interior(values.as_ptr() as usize, values.len());
        if ThpMode::of_this_host() == Some(ThpMode::Madvise) {
            assert!(!eligible_for_huge_pages(inside.start), "not advised yet");
        }
        assert!(advise(&values));
        assert!(eligible_for_huge_pages(inside.start));
        assert!(eligible_for_huge_pages(inside.end - 1));
    }

    #[test]
    fn the_choice_reads_huge_and_small_only() {
        assert_eq!(KvPages::parse("huge"), Some(KvPages::Huge));
        assert_eq!(KvPages::parse(" Small\n"), Some(KvPages::Small));
        assert_eq!(KvPages::parse("2M"), None);
        assert_eq!(KvPages::parse(""), None);
    }

    #[test]
    fn the_interior_is_the_whole_huge_pages_inside_the_range() {
        let h = HUGE_PAGE;
        assert_eq!(huge_interior(h, 3 * h), h..4 * h);
        assert_eq!(huge_interior(h + 4096, 3 * h), 2 * h..4 * h);
        assert_eq!(huge_interior(h - 4096, 3 * h), h..3 * h);
        assert_eq!(huge_interior(h + 1, h), 2 * h..2 * h);
        assert!(huge_interior(h + 1, h).is_empty());
        assert!(huge_interior(usize::MAX - 10, 100).is_empty());
    }
}
