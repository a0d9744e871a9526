//! Key/value cache memory kept for the life of the engine: a sequence that ends (finished,
//! cancelled, timed out) gives its cache back to the pool, and a later sequence takes it
//! instead of allocating a new one.
//!
//! Why: on a machine whose memory is backed lazily (a VM, or any fresh `mmap`) the first
//! write to each page of a new cache faults, and a cache `[heads, capacity, head_dim]` is
//! written one position per head and block at a time, so a decoding sequence touches a new
//! page every few positions in every head of every block. Reused memory has been touched
//! already. Serving engines keep their cache memory allocated for the same reason.
//!
//! **Budget.** The pool accounts in bytes: the caches lent out (in use) plus the idle ones
//! never exceed the budget (`--btlm.kv_cache_mb`, [`KvPoolConfig::budget_bytes`]). A lease
//! counts the real size of the memory it gets, which may exceed what the sequence needs:
//!
//! - new caches are rounded up to a multiple of [`POSITION_GRANULE`] positions (capped by the
//!   context and the budget), so that caches of sequences of similar lengths fit each other;
//! - an idle cache is reused only when it holds at least the positions needed and at most
//!   twice the rounded need (which one: see "Prefixes"), so a lease reserves at most twice
//!   the rounded need;
//! - otherwise a new cache is allocated, dropping idle caches (the least recently used
//!   first) until the budget has room for it; when even the caches in use leave no room,
//!   the lease is refused and the sequence waits.
//!
//! The budget in force may be lower than the configured one ([`KvPool::set_limit`]: the
//! engine lowers it while the host has less memory left than the budget's room for more
//! caches, `host_memory::MemoryWatch`); the same rules then hold for the lower figure.
//!
//! Least recently used first: the idle cache given back last is the one most likely to be
//! asked for again (a conversation's next turn comes soon after its answer), and the
//! largest ones, which were dropped first before, are the longest conversations'.
//!
//! Without recycling ([`KvPoolConfig::recycle`] false) a lease is exactly the positions
//! needed and nothing is kept: the accounting of an engine without the pool.
//!
//! **Prefixes.** An idle cache may still hold keys and values a later sequence can keep
//! (the engine's prefix reuse: a prompt starting like an earlier one). A lease
//! ([`KvPool::lease_reusing`]) gets the positions its caller says the new sequence can keep
//! the most of; the caller keeps those and overwrites the rest. Taking an idle cache as it
//! is loses what else it holds, which is worth keeping for its own conversation's next
//! turn: so while the budget has room for new memory beside every idle cache (blank ones
//! aside, see "Blank caches"), the lease is new memory (or a blank cache) unless one idle
//! cache alone gives the sequence the most (its own conversation's last turn) and fits;
//! once the budget is full (new memory would drop an idle cache anyway), the fitting idle
//! cache the sequence keeps the most of is taken (ties: the least recently used). When the
//! lease is new memory (or a blank cache) and an idle cache gives positions (one too small
//! for a longer conversation's next turn, or one of those giving a shared start), it comes
//! with the lease as the source to copy them from ([`Handed::copy`]): it leaves the pool's
//! count at once, and the caller puts it back ([`KvPool::put_back`]) unless the sequence
//! continues all it holds, so meanwhile the caches may exceed the budget by one. (The
//! engine's CPU caches are backed by the OS only as they are written, and the copy writes
//! only the positions kept, so that excess is mostly address space.)
//!
//! Without prefix reuse ([`KvPool::lease`]) only an idle cache's memory counts: the
//! smallest that fits is taken as it is.
//!
//! **The price of a copy.** New memory is slow the first time it is written (the OS backs
//! each page on its first write: [`first_touch_bytes_per_sec`]), memory an idle cache lends
//! as it is has been written already. So when an idle cache fits and the budget is full
//! (the choice is between memory written already and new memory, not between new memory
//! and dropping nothing), a copy must keep enough positions more to pay for the new memory
//! the sequence will write:
//! [`KvPool::price_copies`] sets that price, in kept positions per position needed (the
//! engine derives it from the first-touch speed and what a prompt token costs it).
//!
//! **Blank caches.** While the engine has nothing to run, it can write new memory ahead of
//! the requests to come ([`KvPool::add_blank`]: caches holding nothing, sized by
//! [`KvPool::next_blank`] for the positions recent sequences needed), so that their writes
//! meet memory the OS backs already. A blank cache holds nothing anyone keeps, so it is
//! worth only its memory: a lease that would get new memory takes a blank one that fits
//! instead (as it is, or as the memory a copy goes into), blank caches do not count as
//! idle caches to keep when the pool weighs whether the budget has room, and they are the
//! first dropped. A blank cache is added only where the budget has room for it beside
//! every cache in use and idle: it never drops one.
//!
//! The pool is generic over the cache type `C`; it never looks inside a cache (the caller's
//! judgement of what a cache holds does). Whoever gives a cache back says how many
//! positions its memory holds (for [`Cache`](crate::kv_cache::Cache):
//! [`Cache::capacity`](crate::kv_cache::Cache::capacity)). A reused cache is not zeroed:
//! attention reads only the positions written for the current sequence, or kept for it.

/// New caches hold a multiple of this many positions (see the module's "Budget").
pub const POSITION_GRANULE: usize = 64;

/// What the pool refuses.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KvPoolError {
    /// A budget or a size per token of zero.
    #[error(
        "a key/value cache pool needs a budget and a size per token of at least one byte \
         (got a budget of {budget_bytes} bytes and {bytes_per_token} bytes per token)"
    )]
    Empty {
        /// The budget asked for.
        budget_bytes: usize,
        /// The size per token asked for.
        bytes_per_token: usize,
    },
    /// A lease given back to a pool that has fewer bytes lent out (another pool's lease).
    #[error("a lease of {bytes} bytes was given back to a pool that lent {in_use} bytes")]
    NotLent {
        /// The lease's bytes.
        bytes: usize,
        /// The bytes the pool has lent.
        in_use: usize,
    },
}

/// The pool's settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KvPoolConfig {
    /// Bytes that caches in use and idle caches may take together.
    pub budget_bytes: usize,
    /// Bytes of cache one position takes.
    pub bytes_per_token: usize,
    /// The longest a sequence can be (the context): new caches are not rounded past it.
    pub max_positions: usize,
    /// Keep caches given back for later sequences (and round new ones up to
    /// [`POSITION_GRANULE`]); `false`: lease exactly what is needed and keep nothing.
    pub recycle: bool,
}

/// Cache memory lent to one sequence; give it back with [`KvPool::give_back`].
#[derive(Debug, PartialEq, Eq)]
pub struct Lease {
    positions: usize,
    bytes: usize,
}

impl Lease {
    /// Positions the sequence's cache holds (at least what it asked for).
    pub fn positions(&self) -> usize {
        self.positions
    }

    /// Bytes counted against the budget.
    pub fn bytes(&self) -> usize {
        self.bytes
    }
}

/// An idle cache handed out by [`KvPool::lease_reusing`].
#[derive(Debug, PartialEq, Eq)]
pub struct Handed<C> {
    /// The cache.
    pub cache: C,
    /// How many of its first positions the sequence keeps.
    pub keep: usize,
    /// Whether the lease is other memory of [`Lease::positions`] (`into`, else new memory
    /// the caller allocates), into which the caller copies the kept positions from `cache`,
    /// rather than `cache` itself.
    pub copy: bool,
    /// For a copy: a blank cache ([`KvPool::add_blank`]) whose memory the copy goes into;
    /// `None`: new memory.
    pub into: Option<C>,
}

impl<C> Handed<C> {
    /// `cache` lent as it is, keeping none of it.
    pub fn as_it_is(cache: C) -> Self {
        Handed {
            cache,
            keep: 0,
            copy: false,
            into: None,
        }
    }
}

/// What a lease takes: idle cache `at` as the source of a copy into blank cache `into` or
/// new memory, idle cache `at` as it is, or new memory; `keep`: the positions the sequence
/// keeps.
enum Choice {
    Copy {
        at: usize,
        keep: usize,
        into: Option<usize>,
    },
    Reuse {
        at: usize,
        keep: usize,
    },
    New,
}

/// The pool's counters and gauges.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct KvPoolStats {
    /// Bytes lent out now.
    pub in_use_bytes: usize,
    /// Bytes of the idle caches now.
    pub idle_bytes: usize,
    /// Idle caches now.
    pub idle_caches: usize,
    /// The most bytes in use and idle together, ever.
    pub peak_bytes: usize,
    /// Leases served with an idle cache.
    pub reused: u64,
    /// Leases served with new memory.
    pub allocated: u64,
    /// Leases served with an idle cache some of whose positions the new sequence keeps
    /// (those copied into new memory included).
    pub prefix_hits: u64,
    /// Positions kept that way, summed: prompt tokens not run again.
    pub prefix_tokens: u64,
    /// Idle caches dropped to make room (or because they no longer fitted).
    pub dropped: u64,
    /// Blank caches idle now ([`KvPool::add_blank`]; counted in `idle_caches` too).
    pub blank_caches: usize,
    /// Blank caches added.
    pub blanks_added: u64,
    /// Leases served with a blank cache, as it is or as the memory of a copy (counted in
    /// `reused` too).
    pub blank_leases: u64,
}

/// An idle cache, the positions its memory holds, and whether it is blank (holds nothing
/// anyone keeps: [`KvPool::add_blank`]).
#[derive(Debug)]
struct Idle<C> {
    cache: C,
    positions: usize,
    blank: bool,
}

/// Cache memory owned by the engine (see the module documentation).
#[derive(Debug)]
pub struct KvPool<C> {
    config: KvPoolConfig,
    /// The budget in force: [`KvPoolConfig::budget_bytes`], or less while the memory the
    /// host has left says so ([`KvPool::set_limit`]).
    limit: usize,
    idle: Vec<Idle<C>>,
    stats: KvPoolStats,
    /// Positions a copy must keep beyond a fitting idle cache, per position needed.
    copy_price: f64,
}

/// Bytes per second at which this process writes memory it never wrote before (the OS
/// backing each page on its first write): the fastest of two writes, one byte per page, of
/// 32 MiB of fresh anonymous memory. `None` when no memory could be mapped.
pub fn first_touch_bytes_per_sec() -> Option<f64> {
    const LEN: usize = 32 << 20;
    const PAGE: usize = 4096;
    let mut fastest: Option<f64> = None;
    for _ in 0..2 {
        let mut map = memmap2::MmapOptions::new().len(LEN).map_anon().ok()?;
        let start = std::time::Instant::now();
        for at in (0..LEN).step_by(PAGE) {
            map[at] = 1;
        }
        std::hint::black_box(&map[..]);
        let took = start.elapsed().as_secs_f64();
        if took > 0.0 {
            let rate = LEN as f64 / took;
            fastest = Some(fastest.map_or(rate, |f: f64| f.max(rate)));
        }
    }
    fastest
}

impl<C> KvPool<C> {
    /// An empty pool.
    pub fn new(config: KvPoolConfig) -> Result<Self, KvPoolError> {
        if config.budget_bytes == 0 || config.bytes_per_token == 0 {
            return Err(KvPoolError::Empty {
                budget_bytes: config.budget_bytes,
                bytes_per_token: config.bytes_per_token,
            });
        }
        Ok(KvPool {
            config,
            limit: config.budget_bytes,
            idle: Vec::new(),
            stats: KvPoolStats::default(),
            copy_price: 0.0,
        })
    }

    /// Prices copies (see the module's "The price of a copy"): from now on, when an idle
    /// cache fits and new memory would drop an idle cache, a lease copies from one that
    /// does not fit only if that keeps at least
    /// `positions_per_position` × the positions needed more (rounded up; at least one).
    /// 0 (the start): any position more. Negative or NaN counts as 0.
    pub fn price_copies(&mut self, positions_per_position: f64) {
        self.copy_price = positions_per_position.max(0.0);
    }

    /// The pool's settings.
    pub fn config(&self) -> &KvPoolConfig {
        &self.config
    }

    /// The counters and gauges now.
    pub fn stats(&self) -> KvPoolStats {
        self.stats
    }

    /// Caps the budget at `bytes` (never above [`KvPoolConfig::budget_bytes`]; the budget
    /// again from `usize::MAX`): e.g. while the memory the host has left is less than the
    /// budget's room for more caches. From now on no lease, blank cache or idle cache is
    /// kept past it; idle caches are dropped at once (blank ones first, then the least
    /// recently given back) until those in use and idle fit, and when the caches in use
    /// alone exceed it, leases wait until enough of them are given back.
    pub fn set_limit(&mut self, bytes: usize) {
        self.limit = bytes.min(self.config.budget_bytes);
        self.trim();
    }

    /// The budget in force ([`Self::set_limit`]).
    pub fn limit(&self) -> usize {
        self.limit
    }

    /// Positions a new cache for a sequence of `needed` positions holds: `needed` rounded up
    /// to [`POSITION_GRANULE`] when recycling, but never past the context or the budget
    /// (and never below `needed`).
    pub fn positions_for(&self, needed: usize) -> usize {
        if !self.config.recycle {
            return needed;
        }
        let rounded = needed
            .div_ceil(POSITION_GRANULE)
            .saturating_mul(POSITION_GRANULE);
        let limit = self
            .config
            .max_positions
            .min(self.limit / self.config.bytes_per_token);
        rounded.min(limit).max(needed)
    }

    /// Bytes of `positions` positions.
    fn bytes_of(&self, positions: usize) -> usize {
        positions.saturating_mul(self.config.bytes_per_token)
    }

    /// Lends cache memory for a sequence of `needed` positions: an idle cache that fits
    /// (`Some` second member, emptied by the caller) or room for a new one of
    /// [`Lease::positions`] (`None`: the caller allocates it). `None` when the caches in
    /// use leave no room for it yet.
    pub fn lease(&mut self, needed: usize) -> Option<(Lease, Option<C>)> {
        self.lease_choosing(needed, |_| 0, false)
            .map(|(lease, idle)| (lease, idle.map(|h| h.cache)))
    }

    /// [`Self::lease`] for a sequence that may keep what an idle cache holds:
    /// `reusable(cache)` says how many of its first positions (fewer than `needed`). What
    /// idle caches hold is worth keeping for later sequences too (see the module's
    /// "Prefixes"):
    ///
    /// - while the budget has room for new memory and every idle cache that holds
    ///   something (or a blank cache fits: [`Self::add_blank`]), the lease is new memory,
    ///   or that blank cache, unless one idle cache alone gives the sequence the most and
    ///   fits (then it is taken as it is); the most kept is copied into that memory from
    ///   one of the caches giving it ([`Handed::copy`]), which goes back idle after the
    ///   copy ([`Self::put_back`]) unless the sequence continues all it holds;
    /// - otherwise the fitting idle cache it keeps the most of is taken as it is (ties: the
    ///   least recently given back), unless one that does not fit holds more (by the
    ///   [price](Self::price_copies) of a copy) and the caches in use leave room for new
    ///   memory: then the lease is new memory and that cache the source to copy from.
    ///
    /// An idle cache comes with the count kept.
    pub fn lease_reusing(
        &mut self,
        needed: usize,
        reusable: impl Fn(&C) -> usize,
    ) -> Option<(Lease, Option<Handed<C>>)> {
        self.lease_choosing(needed, reusable, true)
    }

    /// [`Self::lease_reusing`]; `contents`: see [`Self::choose`].
    fn lease_choosing(
        &mut self,
        needed: usize,
        reusable: impl Fn(&C) -> usize,
        contents: bool,
    ) -> Option<(Lease, Option<Handed<C>>)> {
        match self.choose(needed, &reusable, contents) {
            Choice::Copy { at, keep, into } => {
                // Of two, the later index first, so that the other stays where it is.
                let (source, target) = match into {
                    Some(into) if into > at => {
                        let target = self.take_idle(into);
                        (self.take_idle(at), Some(target))
                    }
                    Some(into) => {
                        let source = self.take_idle(at);
                        (source, Some(self.take_idle(into)))
                    }
                    None => (self.take_idle(at), None),
                };
                let positions = target
                    .as_ref()
                    .map_or_else(|| self.positions_for(needed), |t| t.positions);
                let bytes = self.bytes_of(positions);
                self.stats.in_use_bytes += bytes;
                if target.is_some() {
                    // A blank cache's memory, counted among the idle bytes until now.
                    self.stats.reused += 1;
                    self.stats.blank_leases += 1;
                } else {
                    self.trim();
                    self.stats.allocated += 1;
                    self.note_peak();
                }
                self.stats.prefix_hits += 1;
                self.stats.prefix_tokens += keep as u64;
                let handed = Handed {
                    cache: source.cache,
                    keep,
                    copy: true,
                    into: target.map(|t| t.cache),
                };
                return Some((Lease { positions, bytes }, Some(handed)));
            }
            Choice::Reuse { at, keep } => {
                let Idle {
                    cache,
                    positions,
                    blank,
                } = self.take_idle(at);
                let bytes = self.bytes_of(positions);
                self.stats.in_use_bytes += bytes;
                self.stats.reused += 1;
                if blank {
                    self.stats.blank_leases += 1;
                }
                if keep > 0 {
                    self.stats.prefix_hits += 1;
                    self.stats.prefix_tokens += keep as u64;
                }
                let handed = Handed {
                    cache,
                    keep,
                    copy: false,
                    into: None,
                };
                return Some((Lease { positions, bytes }, Some(handed)));
            }
            Choice::New => {}
        }
        let positions = self.positions_for(needed);
        let bytes = self.bytes_of(positions);
        if self.stats.in_use_bytes.saturating_add(bytes) > self.limit {
            return None;
        }
        self.stats.in_use_bytes += bytes;
        self.trim();
        self.stats.allocated += 1;
        self.note_peak();
        Some((Lease { positions, bytes }, None))
    }

    /// How many positions [`Self::lease_reusing`] would hand out for the sequence to keep,
    /// now (0 if it would hand out none, or lend nothing): e.g. to weigh what is left of
    /// its prompt before deciding to admit it.
    pub fn keep_on_lease(&self, needed: usize, reusable: impl Fn(&C) -> usize) -> usize {
        match self.choose(needed, &reusable, true) {
            Choice::Copy { keep, .. } | Choice::Reuse { keep, .. } => keep,
            Choice::New => 0,
        }
    }

    /// What a lease for `needed` positions takes (see [`Self::lease_reusing`]); `contents`:
    /// whether what the idle caches hold is worth keeping for later sequences (prefix reuse)
    /// or only their memory is.
    fn choose(&self, needed: usize, reusable: &impl Fn(&C) -> usize, contents: bool) -> Choice {
        if !self.config.recycle {
            return Choice::New;
        }
        let positions = self.positions_for(needed);
        let most = positions.saturating_mul(2);
        let fits = |i: &Idle<C>| i.positions >= needed && i.positions <= most;
        let kept: Vec<usize> = self
            .idle
            .iter()
            .map(|i| reusable(&i.cache).min(needed.saturating_sub(1)))
            .collect();
        let after = |idle: usize| {
            self.stats
                .in_use_bytes
                .saturating_add(idle)
                .saturating_add(self.bytes_of(positions))
                <= self.limit
        };
        // The blank cache that fits with the fewest positions: memory written already, worth
        // nothing else.
        let blank = (0..self.idle.len())
            .filter(|&at| self.idle[at].blank && fits(&self.idle[at]))
            .min_by_key(|&at| self.idle[at].positions);
        if contents && (blank.is_some() || after(self.stats.idle_bytes - self.blank_bytes())) {
            // New memory (or a blank cache) drops no idle cache holding something: every
            // such cache keeps what it holds for the sequences it is worth more to, unless
            // it alone gives this one the most (a conversation's own last turn, which this
            // sequence continues).
            let top = kept.iter().copied().max().unwrap_or(0);
            if top == 0 {
                return match blank {
                    Some(at) => Choice::Reuse { at, keep: 0 },
                    None => Choice::New,
                };
            }
            let tops: Vec<usize> = (0..kept.len()).filter(|&at| kept[at] == top).collect();
            return match tops[..] {
                [at] if fits(&self.idle[at]) => Choice::Reuse { at, keep: top },
                // From the most recently given back of them; the source goes back idle
                // after the copy (`KvPool::put_back`).
                _ => Choice::Copy {
                    at: tops.last().copied().unwrap_or(0),
                    keep: top,
                    into: blank,
                },
            };
        }
        // Among caches alike: the least recently given back when contents count (it is the
        // one the next new memory would drop), else the smallest.
        let best = (0..self.idle.len())
            .filter(|&at| fits(&self.idle[at]))
            .min_by_key(|&at| {
                let tie = if contents {
                    at
                } else {
                    self.idle[at].positions
                };
                (std::cmp::Reverse(kept[at]), tie)
            });
        // Without a fitting idle cache the memory is new either way: any position kept pays.
        let (fit_keep, min_gain) = match best {
            Some(at) => (kept[at], (self.copy_price * needed as f64).ceil() as usize),
            None => (0, 0),
        };
        let enough = fit_keep.saturating_add(min_gain.max(1));
        let source = (0..self.idle.len())
            .filter(|&at| !fits(&self.idle[at]) && kept[at] >= enough)
            .max_by_key(|&at| kept[at]);
        match (source, best) {
            (Some(at), _) if after(0) => Choice::Copy {
                at,
                keep: kept[at],
                into: None,
            },
            (_, Some(at)) => Choice::Reuse { at, keep: kept[at] },
            _ => Choice::New,
        }
    }

    /// Takes back, as the most recently used idle cache, one handed as the source of a copy
    /// ([`Handed::copy`]) after the copy, with the positions its memory holds: when it
    /// holds more than the sequence kept of it (put back unless the sequence continues all
    /// of it). Idle caches are dropped, the least recently given back first, if the budget
    /// has no room for it. Nothing is kept without recycling or without positions.
    pub fn put_back(&mut self, cache: C, positions: usize) {
        if !self.config.recycle || positions == 0 {
            return;
        }
        self.idle.push(Idle {
            cache,
            positions,
            blank: false,
        });
        self.stats.idle_bytes = self
            .stats
            .idle_bytes
            .saturating_add(self.bytes_of(positions));
        self.stats.idle_caches += 1;
        self.trim();
        self.note_peak();
    }

    /// Takes back a lease and, when recycling, the sequence's cache with the positions its
    /// memory holds (`None`, or 0 positions: nothing to keep, e.g. a cache that never got
    /// memory or one left unusable by a failed step). The cache is kept idle if the budget
    /// has room for it, else dropped.
    pub fn give_back(
        &mut self,
        lease: Lease,
        cache: Option<(C, usize)>,
    ) -> Result<(), KvPoolError> {
        if lease.bytes > self.stats.in_use_bytes {
            return Err(KvPoolError::NotLent {
                bytes: lease.bytes,
                in_use: self.stats.in_use_bytes,
            });
        }
        self.stats.in_use_bytes -= lease.bytes;
        if let Some((cache, positions)) = cache {
            self.put_back(cache, positions);
        }
        Ok(())
    }

    /// Drops every idle cache.
    pub fn drop_idle(&mut self) {
        self.stats.dropped += self.idle.len() as u64;
        self.idle.clear();
        self.stats.idle_bytes = 0;
        self.stats.idle_caches = 0;
        self.stats.blank_caches = 0;
    }

    /// Drops idle caches, blank ones first, then the least recently given back first,
    /// until caches in use and idle fit the budget.
    fn trim(&mut self) {
        while self
            .stats
            .in_use_bytes
            .saturating_add(self.stats.idle_bytes)
            > self.limit
            && !self.idle.is_empty()
        {
            let at = self.idle.iter().position(|i| i.blank).unwrap_or(0);
            self.take_idle(at);
            self.stats.dropped += 1;
        }
    }

    /// Takes idle cache `at` out of the pool's count, keeping the others in the order they
    /// were given back.
    fn take_idle(&mut self, at: usize) -> Idle<C> {
        let idle = self.idle.remove(at);
        self.stats.idle_bytes -= self.bytes_of(idle.positions);
        self.stats.idle_caches -= 1;
        if idle.blank {
            self.stats.blank_caches -= 1;
        }
        idle
    }

    /// Bytes of the blank idle caches.
    fn blank_bytes(&self) -> usize {
        self.idle
            .iter()
            .filter(|i| i.blank)
            .map(|i| self.bytes_of(i.positions))
            .sum()
    }

    /// Whether a cache of `positions` positions fits the budget beside every cache in use
    /// and idle.
    fn has_room_for(&self, positions: usize) -> bool {
        self.stats
            .in_use_bytes
            .saturating_add(self.stats.idle_bytes)
            .saturating_add(self.bytes_of(positions))
            <= self.limit
    }

    /// Positions of the next blank cache to make ([`Self::add_blank`]) so that sequences
    /// needing `needs` positions (one each: e.g. the most recent ones, whose like are
    /// likely to come next) each find a blank cache that fits, the longest first: those a
    /// blank cache fits already are served. `None` when each has one, when the budget has
    /// no room for the next beside every cache in use and idle, or without recycling.
    pub fn next_blank(&self, needs: impl IntoIterator<Item = usize>) -> Option<usize> {
        if !self.config.recycle {
            return None;
        }
        let mut blanks: Vec<usize> = self
            .idle
            .iter()
            .filter(|i| i.blank)
            .map(|i| i.positions)
            .collect();
        blanks.sort_unstable();
        let mut needs: Vec<usize> = needs.into_iter().collect();
        needs.sort_unstable_by(|a, b| b.cmp(a));
        for needed in needs.into_iter().filter(|&n| n > 0) {
            let most = self.positions_for(needed).saturating_mul(2);
            match blanks.iter().position(|&b| b >= needed && b <= most) {
                Some(at) => {
                    blanks.remove(at);
                }
                None => {
                    let positions = self.positions_for(needed);
                    return self.has_room_for(positions).then_some(positions);
                }
            }
        }
        None
    }

    /// Adds `cache`, blank (it holds nothing anyone keeps; its memory of `positions`
    /// positions written already), for later leases (see the module's "Blank caches").
    /// Refused, the cache given back, when the budget has no room for it beside every cache
    /// in use and idle, without recycling, or without positions.
    pub fn add_blank(&mut self, cache: C, positions: usize) -> Result<(), C> {
        if !self.config.recycle || positions == 0 || !self.has_room_for(positions) {
            return Err(cache);
        }
        // Dropped before any other (`trim`).
        self.idle.push(Idle {
            cache,
            positions,
            blank: true,
        });
        self.stats.idle_bytes += self.bytes_of(positions);
        self.stats.idle_caches += 1;
        self.stats.blank_caches += 1;
        self.stats.blanks_added += 1;
        self.note_peak();
        Ok(())
    }

    fn note_peak(&mut self) {
        let now = self.stats.in_use_bytes + self.stats.idle_bytes;
        self.stats.peak_bytes = self.stats.peak_bytes.max(now);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A cache that remembers its name.
    type Named = &'static str;

    fn pool(budget_tokens: usize, recycle: bool) -> KvPool<Named> {
        KvPool::new(KvPoolConfig {
            budget_bytes: budget_tokens * 10,
            bytes_per_token: 10,
            max_positions: 1000,
            recycle,
        })
        .expect("pool")
    }

    #[test]
    fn a_cache_given_back_serves_the_next_sequence_that_fits() {
        let mut p = pool(1000, true);
        let (lease, cache) = p.lease(100).expect("room");
        assert_eq!((lease.positions(), lease.bytes(), cache), (128, 1280, None));
        p.give_back(lease, Some(("a", 128))).expect("back");
        assert_eq!((p.stats().idle_caches, p.stats().idle_bytes), (1, 1280));
        // Too long for it: a new one.
        let (long, cache) = p.lease(129).expect("room");
        assert_eq!((long.positions(), cache), (192, None));
        // Fits: reused, counted at its real size.
        let (lease, cache) = p.lease(70).expect("room");
        assert_eq!(
            (lease.positions(), lease.bytes(), cache),
            (128, 1280, Some("a"))
        );
        let s = p.stats();
        assert_eq!(
            (s.reused, s.allocated, s.idle_caches, s.idle_bytes),
            (1, 2, 0, 0)
        );
        assert_eq!(s.in_use_bytes, 1280 + 1920);
    }

    #[test]
    fn the_smallest_fitting_cache_is_taken_and_waste_is_bounded() {
        let mut p = pool(10_000, true);
        let leases: Vec<_> = [640, 128, 256, 64]
            .into_iter()
            .map(|n| p.lease(n).expect("room").0)
            .collect();
        for (lease, name) in leases.into_iter().zip(["640", "128", "256", "64"]) {
            let n = lease.positions();
            p.give_back(lease, Some((name, n))).expect("back");
        }
        assert_eq!(p.lease(100).expect("room").1, Some("128"));
        // 256 is within twice 128 (100 → 128 rounded); 640 is not within twice 256.
        assert_eq!(p.lease(100).expect("room").1, Some("256"));
        assert_eq!(p.lease(200).expect("room").1, None);
        assert_eq!(p.lease(64).expect("room").1, Some("64"));
        assert_eq!(p.lease(320).expect("room").1, Some("640"));
    }

    /// `cache` handed as is, keeping `keep` positions.
    fn as_is(cache: Named, keep: usize) -> Option<Handed<Named>> {
        Some(Handed {
            cache,
            keep,
            copy: false,
            into: None,
        })
    }

    /// A pool holding idle "a", "b", "c" (128 positions each) and "d" (320), given back in
    /// that order.
    fn four_idle(budget_tokens: usize) -> KvPool<Named> {
        let mut p = pool(budget_tokens, true);
        let leases: Vec<_> = [100, 100, 100, 300]
            .into_iter()
            .map(|n| p.lease(n).expect("room").0)
            .collect();
        for (lease, name) in leases.into_iter().zip(["a", "b", "c", "d"]) {
            let n = lease.positions();
            p.give_back(lease, Some((name, n))).expect("back");
        }
        p
    }

    /// Keeps 3 positions of "a", 4 of "b", none of the others.
    fn a3_b4(name: &Named) -> usize {
        match *name {
            "a" => 3,
            "b" => 4,
            _ => 0,
        }
    }

    #[test]
    fn while_new_memory_drops_nothing_an_idle_cache_is_taken_only_when_it_alone_gives_the_most() {
        let mut p = four_idle(10_000);
        // "b" alone gives the most and fits: taken as it is.
        let keep = a3_b4;
        assert_eq!(p.lease_reusing(100, keep).expect("room").1, as_is("b", 4));
        // Nothing to keep: new memory, every idle cache stays for whom it is worth more.
        assert_eq!(p.lease_reusing(100, |_| 0).expect("room").1, None);
        assert_eq!(p.stats().idle_caches, 3);
        // "a" and "c" give as much: copied from the later given back, which comes back.
        let shared = |name: &Named| if *name == "d" { 0 } else { 5 };
        assert_eq!(p.keep_on_lease(100, shared), 5);
        let (lease, handed) = p.lease_reusing(100, shared).expect("room");
        let handed = handed.expect("a source");
        assert_eq!((handed.cache, handed.keep, handed.copy), ("c", 5, true));
        assert_eq!((lease.positions(), p.stats().idle_caches), (128, 2));
        p.put_back(handed.cache, 128);
        assert_eq!((p.stats().idle_caches, p.stats().idle_bytes), (3, 5760));
        // "d" alone gives the most but is over twice the need: copied from.
        let (_, handed) = p
            .lease_reusing(100, |n| usize::from(*n == "d") * 7)
            .expect("room");
        assert_eq!(
            handed.map(|h| (h.cache, h.keep, h.copy)),
            Some(("d", 7, true))
        );
        // The count is capped below the need.
        let (_, handed) = p
            .lease_reusing(100, |n| usize::from(*n == "a") * 900)
            .expect("room");
        assert_eq!(handed, as_is("a", 99));
        let s = p.stats();
        assert_eq!(
            (s.reused, s.prefix_hits, s.prefix_tokens),
            (2, 4, 4 + 5 + 7 + 99)
        );
    }

    #[test]
    fn without_room_the_fitting_cache_kept_most_of_is_taken_ties_to_the_least_recent() {
        // 896 positions idle of 900: a new 128 would drop one.
        let mut p = four_idle(900);
        let keep = a3_b4;
        assert_eq!(p.lease_reusing(100, keep).expect("room").1, as_is("b", 4));
        assert_eq!(p.lease_reusing(100, keep).expect("room").1, as_is("a", 3));
        let s = p.stats();
        assert_eq!(
            (s.reused, s.prefix_hits, s.prefix_tokens, s.allocated),
            (2, 2, 7, 4)
        );
        // Alike caches: the least recently given back (the one new memory would drop), even
        // when larger; nothing kept is not a hit.
        for keep in [0, 5] {
            let mut p = pool(400, true);
            let big = p.lease(200).expect("big").0;
            let small = p.lease(100).expect("small").0;
            p.give_back(big, Some(("big", 256))).expect("back");
            p.give_back(small, Some(("small", 128))).expect("back");
            let (_, handed) = p.lease_reusing(100, |_| keep).expect("room");
            assert_eq!(handed, as_is("big", keep));
            assert_eq!(p.stats().prefix_hits, u64::from(keep > 0));
        }
    }

    #[test]
    fn a_cache_too_small_that_holds_more_is_copied_from_into_new_memory() {
        let mut p = pool(1000, true);
        let (small, _) = p.lease(60).expect("small");
        let (other, _) = p.lease(100).expect("other");
        p.give_back(small, Some(("small", 64))).expect("back");
        p.give_back(other, Some(("other", 128))).expect("back");
        let keep = |name: &Named| if *name == "small" { 50 } else { 10 };
        // 120 positions: "other" fits and keeps 10; "small" is too small but keeps 50.
        let (lease, handed) = p.lease_reusing(120, keep).expect("room");
        let handed = handed.expect("a source");
        assert_eq!(
            (handed.cache, handed.keep, handed.copy),
            ("small", 50, true)
        );
        assert_eq!(lease.positions(), 128, "new memory");
        let s = p.stats();
        assert_eq!(
            (s.idle_caches, s.idle_bytes),
            (1, 1280),
            "the source left the pool"
        );
        assert_eq!(
            (s.allocated, s.reused, s.prefix_hits, s.prefix_tokens),
            (3, 0, 1, 50)
        );
        assert_eq!(s.in_use_bytes, 1280);
        // Without room for new memory the sequence waits and the source stays idle.
        let (big, _) = p.lease(800).expect("big");
        p.give_back(lease, Some(("copied", 128))).expect("back");
        assert!(
            p.lease_reusing(200, |_| 100).is_none(),
            "8320 in use + 2560 > 10 000"
        );
        assert_eq!(p.stats().idle_caches, 1);
        p.give_back(big, None).expect("back");
        let (_, handed) = p.lease_reusing(200, |_| 100).expect("room");
        assert_eq!(handed.map(|h| (h.keep, h.copy)), Some((100, true)));
    }

    #[test]
    fn a_copy_must_keep_enough_more_than_a_fitting_cache_to_pay_for_new_memory() {
        let keep = |name: &Named| if *name == "small" { 50 } else { 10 };
        // As above: 120 positions, "other" fits and keeps 10, "small" keeps 40 more; the
        // budget (300) has no room for new memory beside both idle caches.
        for (price, copy) in [(0.0, true), (0.325, true), (0.35, false), (f64::NAN, true)] {
            let mut p = pool(300, true);
            let (small, _) = p.lease(60).expect("small");
            let (other, _) = p.lease(100).expect("other");
            p.give_back(small, Some(("small", 64))).expect("back");
            p.give_back(other, Some(("other", 128))).expect("back");
            p.price_copies(price);
            let (_, handed) = p.lease_reusing(120, keep).expect("room");
            let handed = handed.map(|h| (h.cache, h.keep, h.copy));
            let want = if copy {
                ("small", 50, true)
            } else {
                ("other", 10, false)
            };
            assert_eq!(
                handed,
                Some(want),
                "price {price}: 40 more against {price} x 120"
            );
        }
        // Without a fitting cache the memory is new anyway: any position kept pays.
        let mut p = pool(1000, true);
        let (small, _) = p.lease(60).expect("small");
        p.give_back(small, Some(("small", 64))).expect("back");
        p.price_copies(f64::INFINITY);
        let (_, handed) = p.lease_reusing(120, keep).expect("room");
        assert_eq!(handed.map(|h| (h.keep, h.copy)), Some((50, true)));
    }

    #[test]
    fn blank_caches_are_sized_for_the_needs_given_and_serve_leases_new_memory_would() {
        let mut p = pool(1000, true);
        // The longest need first: 100 → 128 positions; then 60 → 64 (128 went to 100).
        assert_eq!(p.next_blank([60, 100]), Some(128));
        p.add_blank("b128", 128).expect("room");
        assert_eq!(p.next_blank([60, 100]), Some(64));
        p.add_blank("b64", 64).expect("room");
        assert_eq!(p.next_blank([60, 100]), None, "each need has one");
        assert_eq!(
            p.next_blank([60, 0]),
            None,
            "b64 serves 60, nothing needs 0"
        );
        let (lease, _) = p.lease(300).expect("room");
        p.give_back(lease, Some(("big", 320))).expect("back");
        let s = p.stats();
        assert_eq!((s.idle_caches, s.blank_caches, s.blanks_added), (3, 2, 2));
        // Nothing to keep: the blank cache that fits rather than new memory.
        assert_eq!(
            p.lease_reusing(100, |_| 0).expect("room").1,
            as_is("b128", 0)
        );
        // "big" alone gives the most but is over twice the need: copied into "b64".
        let (lease, handed) = p
            .lease_reusing(60, |n| usize::from(*n == "big") * 7)
            .expect("room");
        assert_eq!(
            handed,
            Some(Handed {
                cache: "big",
                keep: 7,
                copy: true,
                into: Some("b64"),
            })
        );
        assert_eq!((lease.positions(), lease.bytes()), (64, 640));
        let s = p.stats();
        assert_eq!(
            (s.allocated, s.reused, s.blank_leases, s.prefix_hits),
            (1, 2, 2, 1)
        );
        assert_eq!((s.idle_caches, s.blank_caches, s.idle_bytes), (0, 0, 0));
        assert_eq!(s.in_use_bytes, 1280 + 640);
        // No blank cache left: new memory again.
        assert_eq!(p.lease_reusing(100, |_| 0).expect("room").1, None);
    }

    #[test]
    fn blank_caches_do_not_count_against_the_room_for_new_memory_and_go_first() {
        // "a" (128, holding what this lease keeps none of) and a blank 64 too small for
        // 100: new memory beside "a" fits 300 once the blank is dropped, so "a" stays for
        // its own conversation rather than be taken as it is.
        let mut p = pool(300, true);
        let (lease, _) = p.lease(100).expect("room");
        p.give_back(lease, Some(("a", 128))).expect("back");
        p.add_blank("b64", 64).expect("room");
        assert_eq!(p.lease_reusing(100, |_| 0).expect("room").1, None);
        let s = p.stats();
        assert_eq!((s.idle_caches, s.blank_caches, s.dropped), (1, 0, 1));
        assert_eq!(s.idle_bytes, 1280, "\"a\" stays");
    }

    #[test]
    fn blank_caches_never_take_room_from_others() {
        let mut p = pool(200, true);
        let (lease, _) = p.lease(100).expect("room");
        assert_eq!(p.next_blank([100]), None, "128 in use + 128 > 200");
        assert_eq!(p.add_blank("x", 128), Err("x"));
        assert_eq!(p.add_blank("x", 0), Err("x"));
        p.add_blank("small", 64).expect("room");
        assert_eq!(p.stats().peak_bytes, 1920);
        p.give_back(lease, Some(("a", 128))).expect("back");
        // Without recycling nothing is kept, blank or not.
        let mut p = pool(1000, false);
        assert_eq!(p.next_blank([100]), None);
        assert_eq!(p.add_blank("x", 128), Err("x"));
    }

    #[test]
    fn fresh_memory_is_timed() {
        let rate = first_touch_bytes_per_sec().expect("anonymous memory");
        assert!(rate.is_finite() && rate > 1e6, "{rate} bytes/s");
    }

    #[test]
    fn idle_caches_are_dropped_least_recently_used_first_when_new_memory_needs_the_room() {
        let mut p = pool(1000, true);
        let a = p.lease(300).expect("a").0;
        let b = p.lease(540).expect("b").0;
        assert_eq!((a.positions(), b.positions()), (320, 576));
        p.give_back(a, Some(("a", 320))).expect("a back");
        p.give_back(b, Some(("b", 576))).expect("b back");
        assert_eq!(p.stats().idle_bytes, 8960);
        // 100 positions fit neither (320 > 2 × 128); a new 128 needs 1280 bytes, 8960 of
        // the 10 000 are idle: the one given back first goes.
        let (c, cache) = p.lease(100).expect("c");
        assert_eq!(cache, None);
        let s = p.stats();
        assert_eq!((s.dropped, s.idle_caches, s.idle_bytes), (1, 1, 5760));
        assert!(s.in_use_bytes + s.idle_bytes <= 10_000);
        assert_eq!(s.peak_bytes, 8960);
        // Room for 700 more positions in use, with the idle 576 dropped for it.
        let (d, cache) = p.lease(700).expect("d");
        assert_eq!((d.positions(), cache), (704, None));
        assert_eq!(p.stats().idle_caches, 0);
        // Now the caches in use leave no room: the next waits.
        assert!(p.lease(200).is_none());
        p.give_back(c, None).expect("c back");
        p.give_back(d, Some(("d", 704))).expect("d back");
        assert!(p.lease(200).is_some());
    }

    #[test]
    fn taking_and_putting_back_idle_caches_keeps_the_order_they_are_dropped_in() {
        let mut p = pool(1000, true);
        let leases: Vec<_> = (0..4).map(|_| p.lease(100).expect("room").0).collect();
        for (lease, name) in leases.into_iter().zip(["w", "x", "y", "z"]) {
            p.give_back(lease, Some((name, 128))).expect("back");
        }
        // "w" is taken and put back (a copy's source): now the most recently used.
        let (lease, handed) = p.lease(100).expect("room");
        assert_eq!(handed, Some("w"));
        p.give_back(lease, None).expect("back");
        p.put_back("w", 128);
        // "x" is taken: "y", "z", "w" stay in that order.
        let (x, handed) = p.lease(100).expect("room");
        assert_eq!(handed, Some("x"));
        // 128 in use and 384 idle: a new 640 drops "y" and "z", then "w" is what is left.
        let (big, handed) = p.lease(600).expect("room");
        assert_eq!((big.positions(), handed), (640, None));
        assert_eq!(p.stats().dropped, 2);
        assert_eq!(p.lease(100).expect("room").1, Some("w"));
        p.give_back(x, None).expect("back");
        // Put back beyond the budget, a cache is dropped at once.
        p.put_back("v", 1000);
        assert_eq!((p.stats().idle_caches, p.stats().dropped), (0, 3));
    }

    #[test]
    fn the_budget_holds_in_use_and_idle_caches_whatever_the_order() {
        let mut p = pool(2000, true);
        let mut held: Vec<Lease> = Vec::new();
        let mut x: u64 = 7;
        for round in 0..2000 {
            x = x.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1);
            let needed = 1 + (x >> 33) as usize % 900;
            if (x >> 20).is_multiple_of(3) && !held.is_empty() {
                let lease = held.swap_remove((x >> 40) as usize % held.len());
                let n = lease.positions();
                // Now and then a cache that grew past its lease, or one without memory.
                let given = match round % 7 {
                    0 => Some(("grown", n + 300)),
                    1 => None,
                    _ => Some(("kept", n)),
                };
                p.give_back(lease, given).expect("back");
            } else if let Some((lease, _)) = p.lease(needed) {
                assert!(lease.positions() >= needed);
                held.push(lease);
            }
            let s = p.stats();
            assert!(
                s.in_use_bytes + s.idle_bytes <= 20_000,
                "round {round}: {s:?}"
            );
            assert_eq!(s.in_use_bytes, held.iter().map(Lease::bytes).sum::<usize>());
            assert_eq!(s.idle_caches, p.idle.len());
        }
        assert!(p.stats().peak_bytes <= 20_000);
        assert!(p.stats().reused > 0 && p.stats().dropped > 0);
    }

    #[test]
    fn a_limit_below_the_budget_drops_idle_caches_and_holds_leases_back() {
        // Idle "a", "b", "c" (1280 bytes each) and "d" (3200), given back in that order.
        let mut p = four_idle(2000);
        assert_eq!(p.limit(), 20_000);
        let (lease, cache) = p.lease(100).expect("room");
        assert_eq!((cache, p.stats().in_use_bytes), (Some("a"), 1280));
        let blank = p.next_blank([100]).expect("room for a blank cache");
        p.add_blank("blank", blank).expect("added");
        // Room for the lease and two idle caches: the blank one goes first, then the least
        // recently given back.
        p.set_limit(1280 + 3200 + 1280 + 100);
        assert_eq!(p.limit(), 5860);
        let s = p.stats();
        assert_eq!((s.idle_caches, s.blank_caches, s.dropped), (2, 0, 2));
        let left: Vec<Named> = p.idle.iter().map(|i| i.cache).collect();
        assert_eq!(left, ["c", "d"]);
        // No new memory past the limit, no blank cache either; an idle cache that fits is
        // still lent.
        assert_eq!(p.next_blank([100]), None);
        assert!(p.lease(500).is_none());
        let (reused, cache) = p.lease(100).expect("an idle cache");
        assert_eq!(cache, Some("c"));
        // Below what is in use: every idle cache dropped, nothing lent until leases are
        // given back.
        p.set_limit(1000);
        assert_eq!(p.stats().idle_caches, 0);
        assert!(p.lease(10).is_none());
        p.give_back(reused, Some(("c", 128))).expect("back");
        assert_eq!(p.stats().idle_caches, 0, "past the limit: dropped");
        p.give_back(lease, None).expect("back");
        let (small, _) = p.lease(60).expect("room under the limit");
        assert_eq!(small.positions(), 64);
        // Never above the budget; the budget again from `usize::MAX`.
        p.set_limit(usize::MAX);
        assert_eq!(p.limit(), 20_000);
        assert!(p.lease(1000).is_some());
    }

    #[test]
    fn without_recycling_leases_are_exact_and_nothing_is_kept() {
        let mut p = pool(1000, false);
        let (lease, _) = p.lease(100).expect("room");
        assert_eq!(lease.positions(), 100);
        p.give_back(lease, Some(("a", 100))).expect("back");
        assert_eq!(p.stats().idle_caches, 0);
        assert_eq!(p.lease(100).expect("room").1, None);
        assert!(p.lease(901).is_none(), "100 in use + 901 > 1000");
    }

    #[test]
    fn rounding_stops_at_the_context_and_the_budget() {
        let p = pool(100, true);
        assert_eq!(p.positions_for(70), 100, "budget of 100 positions");
        assert_eq!(p.positions_for(1), 64);
        let ctx = KvPool::<Named>::new(KvPoolConfig {
            max_positions: 90,
            ..*p.config()
        })
        .expect("pool");
        assert_eq!(ctx.positions_for(70), 90);
        assert_eq!(ctx.positions_for(95), 95, "never below the need");
    }

    #[test]
    fn bad_settings_and_foreign_leases_are_refused() {
        let bad = KvPool::<Named>::new(KvPoolConfig {
            budget_bytes: 0,
            bytes_per_token: 1,
            max_positions: 1,
            recycle: true,
        });
        assert!(matches!(bad, Err(KvPoolError::Empty { .. })));
        let mut big = pool(1000, true);
        let mut small = pool(10, true);
        let (lease, _) = big.lease(500).expect("room");
        let err = small.give_back(lease, None).expect_err("not lent here");
        assert!(
            matches!(
                err,
                KvPoolError::NotLent {
                    bytes: 5120,
                    in_use: 0
                }
            ),
            "{err}"
        );
        let mut p = pool(1000, true);
        let (lease, _) = p.lease(10).expect("room");
        p.give_back(lease, Some(("a", 64))).expect("back");
        p.drop_idle();
        assert_eq!((p.stats().idle_caches, p.stats().dropped), (0, 1));
    }
}
