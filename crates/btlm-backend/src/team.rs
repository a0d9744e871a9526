//! A team of threads that runs one model step: the calling thread and `threads − 1` helpers
//! spawned for the step. Between parallel sections the helpers spin for a short while and
//! only then park, so the sections of a step (five products and the attention of every
//! layer) start without waking a sleeping pool, and the caller works in every section
//! instead of blocking while a pool works: `threads` busy threads on `threads` cores.
//!
//! Rayon's pool, called from outside it once per section, costs two wake-ups a section (its
//! workers, then the blocked caller): on a 2-core VM about a sixth of a decode step went to
//! them. Work inside a section is claimed dynamically (see [`Team::for_each`]), so a helper
//! that wakes late or is descheduled delays a section by at most one task.

use std::cell::UnsafeCell;
use std::panic::{AssertUnwindSafe, catch_unwind, resume_unwind};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::thread::{self, Thread};
use std::time::{Duration, Instant};

/// How long a waiting thread spins before it yields (leader) or parks (helpers): longer
/// than the serial work between two sections of a step, far shorter than a step.
const SPIN: Duration = Duration::from_micros(300);

/// The work of one section, called once on every member with its index (0: the caller).
type Job<'a> = dyn Fn(usize) + Sync + 'a;

/// A team running one step; see the module documentation. Made by [`run`].
pub(crate) struct Team<'t> {
    shared: &'t Shared,
    helpers: Vec<Thread>,
}

/// What the members share.
struct Shared {
    /// Bumped by the caller to start a section (or to stop the helpers).
    epoch: AtomicUsize,
    /// The current section's job, valid from an `epoch` bump until every helper has
    /// reported `done` (written only by the caller, between sections).
    job: UnsafeCell<Option<*const Job<'static>>>,
    /// Helpers that finished the current section.
    done: AtomicUsize,
    /// Set (before a last `epoch` bump) when the helpers must return.
    stop: AtomicBool,
    /// A helper's job panicked in the current section.
    panicked: AtomicBool,
    /// Per helper: it is parked or about to park, and needs an unpark to see a new epoch.
    sleeping: Vec<AtomicBool>,
}

// SAFETY: `job` is written by the caller only while no helper reads it (before the `epoch`
// bump that publishes it, after every helper's `done` for the previous one), and the job
// it points to is `Sync`; every other field is atomic.
unsafe impl Sync for Shared {}

/// Runs `f` with a team of `threads` threads (at least 1: the caller alone; fewer if the
/// OS cannot start them), the helpers living until `f` returns.
pub(crate) fn run<R>(threads: usize, f: impl FnOnce(&Team<'_>) -> R) -> R {
    let n_helpers = threads.max(1) - 1;
    let shared = Shared {
        epoch: AtomicUsize::new(0),
        job: UnsafeCell::new(None),
        done: AtomicUsize::new(0),
        stop: AtomicBool::new(false),
        panicked: AtomicBool::new(false),
        sleeping: (0..n_helpers).map(|_| AtomicBool::new(false)).collect(),
    };
    thread::scope(|scope| {
        // A helper the OS refuses to start only makes the team smaller.
        let helpers = (0..n_helpers)
            .map_while(|i| {
                let shared = &shared;
                thread::Builder::new()
                    .name(format!("btlm-step-{}", i + 1))
                    .spawn_scoped(scope, move || helper(shared, i))
                    .ok()
                    .map(|h| h.thread().clone())
            })
            .collect();
        let team = Team {
            shared: &shared,
            helpers,
        };
        // Stops the helpers however `f` ends (a panic included), so the scope can join them.
        let _stop = StopOnDrop(&team);
        f(&team)
    })
}

/// Tells the helpers to return when dropped.
struct StopOnDrop<'a, 't>(&'a Team<'t>);

impl Drop for StopOnDrop<'_, '_> {
    fn drop(&mut self) {
        self.0.shared.stop.store(true, Ordering::SeqCst);
        self.0.publish();
    }
}

impl Team<'_> {
    /// Number of members (the caller included).
    pub(crate) fn threads(&self) -> usize {
        self.helpers.len() + 1
    }

    /// Runs `job(member)` once on every member, the caller being member 0, and returns
    /// when all have returned. A panic in any member's job is resumed here.
    pub(crate) fn broadcast(&self, job: &(dyn Fn(usize) + Sync)) {
        if self.helpers.is_empty() {
            job(0);
            return;
        }
        let s = self.shared;
        // SAFETY: the helpers read `job` only between the `publish` below and their `done`
        // increment, and this function returns only after every helper's increment
        // (`wait_for_helpers`, also when the caller's own share panics), so the erased
        // lifetime is never outlived; no helper reads the cell while it is written (the
        // previous section ended the same way).
        unsafe {
            *s.job.get() = Some(std::mem::transmute::<*const Job<'_>, *const Job<'static>>(
                job as *const Job<'_>,
            ));
        }
        s.done.store(0, Ordering::Relaxed);
        s.panicked.store(false, Ordering::Relaxed);
        self.publish();
        let own = catch_unwind(AssertUnwindSafe(|| job(0)));
        self.wait_for_helpers();
        // SAFETY: every helper is done with the job (above).
        unsafe { *s.job.get() = None };
        if let Err(payload) = own {
            resume_unwind(payload);
        }
        if s.panicked.load(Ordering::Acquire) {
            panic!("a team thread panicked");
        }
    }

    /// Runs `task(i)` for every `i` in `0..tasks`, each exactly once, on whichever member
    /// claims it first (tasks are claimed in order, one at a time).
    pub(crate) fn for_each(&self, tasks: usize, task: &(dyn Fn(usize) + Sync)) {
        self.claim_runs(tasks, 1, task);
    }

    /// [`Self::for_each`] with the tasks claimed in runs of consecutive ones, about a
    /// quarter of a member's share at a time: tasks that read neighbouring memory (the heads
    /// of one sequence's key/value cache, stored one after the other) stay together on one
    /// core, whose prefetchers follow the stream from one to the next, and the shared
    /// counter moves between the cores a few times a section instead of once a task.
    /// Eight sequences' decode attention took 6–10% less time than claimed one head at a
    /// time, one sequence's 1–6% (`batch_decode --sections`, session 35).
    pub(crate) fn for_each_in_runs(&self, tasks: usize, task: &(dyn Fn(usize) + Sync)) {
        self.claim_runs(tasks, (tasks / (4 * self.threads())).max(1), task);
    }

    /// Runs every task of `0..tasks` once, members claiming `run` consecutive ones at a
    /// time (the last run may be shorter).
    fn claim_runs(&self, tasks: usize, run: usize, task: &(dyn Fn(usize) + Sync)) {
        match tasks {
            0 => {}
            1 => task(0),
            _ => {
                let next = AtomicUsize::new(0);
                self.broadcast(&|_| {
                    loop {
                        let first = next.fetch_add(run, Ordering::Relaxed);
                        if first >= tasks {
                            break;
                        }
                        (first..(first + run).min(tasks)).for_each(task);
                    }
                });
            }
        }
    }

    /// Starts a section (or the stop): bumps the epoch, then unparks the helpers that
    /// parked or are about to.
    fn publish(&self) {
        let s = self.shared;
        s.epoch.fetch_add(1, Ordering::SeqCst);
        for (flag, t) in s.sleeping.iter().zip(&self.helpers) {
            if flag.load(Ordering::SeqCst) {
                t.unpark();
            }
        }
    }

    /// Waits until every helper has finished the current section.
    fn wait_for_helpers(&self) {
        let s = self.shared;
        let mut spin = Spin::new();
        while s.done.load(Ordering::Acquire) < self.helpers.len() {
            if !spin.spin() {
                thread::yield_now();
            }
        }
    }
}

/// A helper's loop: wait for a new epoch, run the job (or return on stop), report done.
fn helper(s: &Shared, index: usize) {
    let mut seen = 0;
    loop {
        seen = wait_for_epoch(s, seen, index);
        if s.stop.load(Ordering::SeqCst) {
            return;
        }
        // SAFETY: the caller wrote the job before the epoch bump this thread just observed
        // (acquire) and keeps it alive and unchanged until this thread's `done` below.
        let job = unsafe { (*s.job.get()).map(|j| &*j) };
        if let Some(job) = job
            && catch_unwind(AssertUnwindSafe(|| job(index + 1))).is_err()
        {
            s.panicked.store(true, Ordering::Release);
        }
        s.done.fetch_add(1, Ordering::AcqRel);
    }
}

/// Returns the epoch once it differs from `seen`: spinning for [`SPIN`], then parked
/// (helper `index`'s `sleeping` flag tells the caller to unpark it).
fn wait_for_epoch(s: &Shared, seen: usize, index: usize) -> usize {
    let mut spin = Spin::new();
    loop {
        let epoch = s.epoch.load(Ordering::Acquire);
        if epoch != seen {
            return epoch;
        }
        if spin.spin() {
            continue;
        }
        // Announce the park, then re-check: the caller bumps the epoch before it reads the
        // flag, so either this load sees the new epoch or the caller sees the flag.
        s.sleeping[index].store(true, Ordering::SeqCst);
        if s.epoch.load(Ordering::SeqCst) == seen {
            thread::park();
        }
        s.sleeping[index].store(false, Ordering::SeqCst);
    }
}

/// A busy wait's budget: [`SPIN`] of spinning, the clock read every 64 spins.
struct Spin {
    started: Instant,
    spins: u32,
}

impl Spin {
    fn new() -> Self {
        Spin {
            started: Instant::now(),
            spins: 0,
        }
    }

    /// Spins once and returns `true` while within the budget; `false` once it is spent
    /// (the caller then yields or parks).
    fn spin(&mut self) -> bool {
        self.spins = self.spins.wrapping_add(1);
        if !self.spins.is_multiple_of(64) || self.started.elapsed() < SPIN {
            std::hint::spin_loop();
            true
        } else {
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    #[test]
    fn every_task_runs_once_for_any_team_size_and_task_count() {
        for threads in [0, 1, 2, 3, 5] {
            run(threads, |team| {
                assert_eq!(team.threads(), threads.max(1));
                for tasks in [0, 1, 2, 3, 7, 64, 1000] {
                    let counts: Vec<AtomicUsize> =
                        (0..tasks).map(|_| AtomicUsize::new(0)).collect();
                    team.for_each(tasks, &|i| {
                        counts[i].fetch_add(1, Ordering::Relaxed);
                    });
                    team.for_each_in_runs(tasks, &|i| {
                        counts[i].fetch_add(1, Ordering::Relaxed);
                    });
                    assert!(
                        counts.iter().all(|c| c.load(Ordering::Relaxed) == 2),
                        "{threads} threads, {tasks} tasks"
                    );
                }
            });
        }
    }

    #[test]
    fn tasks_in_runs_run_a_run_on_one_member() {
        run(2, |team| {
            for tasks in [8, 64, 256, 1000] {
                let run = tasks / 8;
                let ran: Vec<Mutex<Option<thread::ThreadId>>> =
                    (0..tasks).map(|_| Mutex::new(None)).collect();
                team.for_each_in_runs(tasks, &|i| {
                    *ran[i].lock().expect("lock") = Some(thread::current().id());
                });
                let ran: Vec<_> = ran
                    .into_iter()
                    .map(|m| m.into_inner().expect("lock").expect("ran"))
                    .collect();
                for (r, block) in ran.chunks(run).enumerate() {
                    assert!(
                        block.iter().all(|id| *id == block[0]),
                        "{tasks} tasks: run {r} split between members"
                    );
                }
            }
        });
    }

    #[test]
    fn broadcast_reaches_every_member_once_per_section() {
        run(3, |team| {
            for _ in 0..200 {
                let members = Mutex::new(Vec::new());
                team.broadcast(&|m| members.lock().expect("lock").push(m));
                let mut m = members.into_inner().expect("lock");
                m.sort_unstable();
                assert_eq!(m, [0, 1, 2]);
            }
        });
    }

    #[test]
    fn parked_helpers_wake_for_the_next_section() {
        run(2, |team| {
            let hits = AtomicUsize::new(0);
            for _ in 0..3 {
                // Longer than the spin: the helper parks between sections.
                thread::sleep(SPIN * 4);
                team.broadcast(&|_| {
                    hits.fetch_add(1, Ordering::Relaxed);
                });
            }
            assert_eq!(hits.load(Ordering::Relaxed), 6);
        });
    }

    #[test]
    fn a_panicking_task_reaches_the_caller_and_the_helpers_stop() {
        for bad in [0, 1] {
            let r = std::panic::catch_unwind(|| {
                run(2, |team| {
                    team.broadcast(&|m| {
                        if m == bad {
                            panic!("task of member {m}");
                        }
                    })
                })
            });
            assert!(r.is_err(), "member {bad}");
        }
        // The team still works after a panic was caught inside it.
        let sum = run(2, |team| {
            let _ = catch_unwind(AssertUnwindSafe(|| team.broadcast(&|m| assert_ne!(m, 1))));
            let sum = AtomicUsize::new(0);
            team.for_each(10, &|i| {
                sum.fetch_add(i, Ordering::Relaxed);
            });
            sum.into_inner()
        });
        assert_eq!(sum, 45);
    }
}
