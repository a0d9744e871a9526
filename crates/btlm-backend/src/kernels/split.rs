//! A tile-kernel product whose tasks threads of the caller's own claim, for callers that
//! keep their threads busy across many products (the model's decode step, `crate::team`)
//! instead of forking and joining rayon's pool for each.

use std::marker::PhantomData;
use std::sync::atomic::{AtomicUsize, Ordering};

use super::{
    Acts, KernelError, KernelPath, OutPtr, PackedMatrix, Route, avx512_bf16, check_operands,
    tile_group, tiles_into,
};

/// Tasks per thread, whatever the rows: claiming one costs an atomic add, and the smaller the
/// tasks the less the others wait for the last one at the end of a product; a task of the
/// smallest decode product (2560 × 2560 in q4k, two threads) is still 5 tiles, a 115 KB
/// stream. Every task starts a weight stream whose first 8 KiB (the kernels' prefetch
/// distance) are not prefetched and ends prefetching bytes another thread multiplies, so
/// more rows do not make more tasks: 4× as many at 8 rows (sessions 9–13) made the
/// eight-sequence decode step 10–15% slower on Zen 5 (q4k 67–84 → 59–70 ms, q8_0 107–110 →
/// 98–99, bf16 128–171 → 101–118; session 14, docs/benchmarks.md).
const TASKS_PER_THREAD: usize = 16;

/// `y = x · Wᵀ (+ bias)` on the tile kernels, split into tasks of whole tiles: every thread
/// that calls [`TileProduct::work`] claims tasks until none is left, so the product is done
/// once every call has returned (each task runs exactly once, whoever claims it).
pub struct TileProduct<'a> {
    path: KernelPath,
    w: &'a PackedMatrix,
    acts: Prepared<'a>,
    rows: usize,
    bias: Option<&'a [f32]>,
    out: OutPtr,
    per_task: usize,
    segments: Box<[Segment]>,
    _y: PhantomData<&'a mut [f32]>,
}

/// A run of consecutive tasks, first claimed by the member of its index (see
/// [`TileProduct::work`]).
struct Segment {
    /// The next unclaimed task.
    next: AtomicUsize,
    /// One past the last task.
    end: usize,
}

/// The activations of a product: its own, or shared with other products of the same input.
enum Prepared<'a> {
    Own(Acts<'a>),
    Shared(&'a Acts<'a>),
}

impl<'a> Prepared<'a> {
    fn get(&self) -> &Acts<'a> {
        match self {
            Prepared::Own(a) => a,
            Prepared::Shared(a) => a,
        }
    }
}

impl<'a> TileProduct<'a> {
    /// Prepares the product of `rows` rows `x` (`rows × n_in`) into `y` (`rows × n_out`),
    /// in tasks for `threads` threads, or `None` when that many rows run other kernels than
    /// the tile kernels (see [`KernelPath::many_rows`]; [`super::matmul`] runs those,
    /// parallel on rayon's pool).
    pub fn new(
        path: KernelPath,
        w: &'a PackedMatrix,
        x: &'a [f32],
        rows: usize,
        bias: Option<&'a [f32]>,
        y: &'a mut [f32],
        threads: usize,
    ) -> Result<Option<Self>, KernelError> {
        check_operands(path, w, x, rows, bias, y)?;
        if path.route(w.format(), rows) != Route::Tiles {
            return Ok(None);
        }
        let acts = Prepared::Own(Acts::prepare(w.format(), x, rows, w.n_in(), w.k_pad()));
        Ok(Some(Self::build(path, w, acts, rows, bias, y, threads)))
    }

    /// [`TileProduct::new`] with activations already prepared (by [`Acts::prepare`] or
    /// [`Acts::prepare_on`] for `w`'s format and padded inputs, `rows` rows), so that
    /// products of the same input share one preparation.
    pub fn with_acts(
        path: KernelPath,
        w: &'a PackedMatrix,
        acts: &'a Acts<'a>,
        rows: usize,
        bias: Option<&'a [f32]>,
        y: &'a mut [f32],
        threads: usize,
    ) -> Result<Option<Self>, KernelError> {
        if !acts.fits(w.format(), rows, w.k_pad()) {
            return Err(KernelError::Shape(format!(
                "activations not prepared for {rows} rows of {} inputs in {}",
                w.k_pad(),
                w.format()
            )));
        }
        // `acts` stands for `rows × n_in` values (checked above); the rest as `new` checks.
        if y.len() != rows * w.n_out() || bias.is_some_and(|b| b.len() != w.n_out()) {
            return Err(KernelError::Shape(format!(
                "{rows} rows: y has {} values and the bias {:?} for {} outputs",
                y.len(),
                bias.map(<[f32]>::len),
                w.n_out()
            )));
        }
        if !path.supported() {
            return Err(KernelError::Unsupported(path));
        }
        if path.route(w.format(), rows) != Route::Tiles {
            return Ok(None);
        }
        Ok(Some(Self::build(
            path,
            w,
            Prepared::Shared(acts),
            rows,
            bias,
            y,
            threads,
        )))
    }

    fn build(
        path: KernelPath,
        w: &'a PackedMatrix,
        acts: Prepared<'a>,
        rows: usize,
        bias: Option<&'a [f32]>,
        y: &'a mut [f32],
        threads: usize,
    ) -> Self {
        let per_task = w.tiles().div_ceil(TASKS_PER_THREAD * threads.max(1)).max(1);
        let tasks = if rows == 0 {
            0
        } else {
            w.tiles().div_ceil(per_task)
        };
        let members = threads.clamp(1, tasks.max(1));
        let segments = (0..members)
            .map(|m| Segment {
                next: AtomicUsize::new(tasks * m / members),
                end: tasks * (m + 1) / members,
            })
            .collect();
        TileProduct {
            // Without AVX512-BF16 the AVX-512 paths run bf16 weights on the AVX2 kernel
            // (see `matmul`).
            path: path.tile_path(w.format(), avx512_bf16()),
            w,
            acts,
            rows,
            bias,
            out: OutPtr(y.as_mut_ptr()),
            per_task,
            segments,
            _y: PhantomData,
        }
    }

    /// Claims and runs tasks until every task is claimed: first those of the segment of
    /// `member` (the caller's index among the threads the product was split for), in order,
    /// so that each thread streams one contiguous run of the weights, then any left in the
    /// others'. Any `member` is correct (out-of-range ones start at another segment).
    pub fn work(&self, member: usize) {
        let n = self.segments.len();
        for k in 0..n {
            let segment = &self.segments[(member + k) % n];
            loop {
                let task = segment.next.fetch_add(1, Ordering::Relaxed);
                if task >= segment.end {
                    break;
                }
                let first = task * self.per_task;
                let last = (first + self.per_task).min(self.w.tiles());
                // Each task is claimed once, so no two calls write the same tiles' columns;
                // `out` is `y`, borrowed mutably for `'a`, of `rows × n_out` values (checked).
                tiles_into(
                    self.path,
                    self.w,
                    self.acts.get(),
                    self.rows,
                    self.bias,
                    self.out,
                    first..last,
                    tile_group(self.w),
                );
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::{Source, WeightFormat, matmul};
    use super::*;

    /// Runs `p` on `threads` scoped threads, each working until no task is left.
    fn work_on_threads(p: TileProduct<'_>, threads: usize) {
        std::thread::scope(|s| {
            for member in 0..threads {
                let p = &p;
                s.spawn(move || p.work(member));
            }
        });
    }

    #[test]
    fn split_products_equal_matmul_on_every_thread_count() {
        let (n_out, n_in) = (75, 300); // a partial last tile, padded inputs
        let w: Vec<f32> = (0..n_out * n_in)
            .map(|i| ((i * 31 % 97) as f32 - 48.0) / 50.0)
            .collect();
        let bias: Vec<f32> = (0..n_out).map(|i| i as f32 * 0.01).collect();
        for format in [WeightFormat::F32, WeightFormat::Q8_0, WeightFormat::Q4K] {
            let m = PackedMatrix::pack(format, &Source::f32(&w, n_out, n_in)).expect("pack");
            for path in KernelPath::ALL.into_iter().filter(|p| p.supported()) {
                for rows in [1, 3, 8] {
                    let x: Vec<f32> = (0..rows * n_in).map(|i| (i as f32 * 0.7).sin()).collect();
                    let mut want = vec![0f32; rows * n_out];
                    matmul(path, &m, &x, rows, Some(&bias), &mut want).expect("matmul");
                    for threads in [1, 2, 3] {
                        let mut got = vec![f32::NAN; rows * n_out];
                        let p =
                            TileProduct::new(path, &m, &x, rows, Some(&bias), &mut got, threads)
                                .expect("operands")
                                .expect("tile kernels for few rows");
                        work_on_threads(p, threads);
                        assert_eq!(got, want, "{format} {path} {rows} rows {threads} threads");
                        // The same with activations prepared beforehand (and shared).
                        let acts = Acts::prepare(format, &x, rows, n_in, m.k_pad());
                        let mut got = vec![f32::NAN; rows * n_out];
                        let p = TileProduct::with_acts(
                            path,
                            &m,
                            &acts,
                            rows,
                            Some(&bias),
                            &mut got,
                            threads,
                        )
                        .expect("operands")
                        .expect("tile kernels for few rows");
                        work_on_threads(p, threads);
                        assert_eq!(got, want, "shared: {format} {path} {rows} {threads}");
                    }
                }
            }
        }
    }

    #[test]
    fn any_member_finishes_the_product() {
        // 40 tiles for 3 threads: 3 segments of consecutive tasks.
        let (n_out, n_in) = (640, 64);
        let w: Vec<f32> = (0..n_out * n_in).map(|i| (i % 13) as f32 - 6.0).collect();
        let m = PackedMatrix::pack(WeightFormat::F32, &Source::f32(&w, n_out, n_in)).expect("pack");
        let x: Vec<f32> = (0..2 * n_in).map(|i| (i % 5) as f32).collect();
        let path = KernelPath::Scalar;
        let mut want = vec![0f32; 2 * n_out];
        matmul(path, &m, &x, 2, None, &mut want).expect("matmul");
        // One member alone (the others never call), or more callers than segments (indices
        // past the last segment start at another one).
        for members in [vec![2], vec![0, 1, 2, 3, 4, 5]] {
            let mut got = vec![f32::NAN; 2 * n_out];
            let p = TileProduct::new(path, &m, &x, 2, None, &mut got, 3)
                .expect("operands")
                .expect("tile kernels");
            assert_eq!(p.segments.len(), 3);
            std::thread::scope(|s| {
                for &member in &members {
                    let p = &p;
                    s.spawn(move || p.work(member));
                }
            });
            assert_eq!(got, want, "members {members:?}");
        }
    }

    #[test]
    fn bad_operands_and_many_rows_are_refused() {
        let w = vec![0.5f32; 16 * 32];
        let m = PackedMatrix::pack(WeightFormat::Bf16, &Source::f32(&w, 16, 32)).expect("pack");
        let x = vec![1f32; 2 * 32];
        let mut y = vec![0f32; 16];
        let path = KernelPath::Scalar;
        assert!(matches!(
            TileProduct::new(path, &m, &x, 2, None, &mut y, 1),
            Err(KernelError::Shape(_))
        ));
        // Activations of another shape or format, an output of the wrong size.
        let acts = Acts::prepare(WeightFormat::Bf16, &x[..32], 1, 32, 32);
        assert!(matches!(
            TileProduct::with_acts(path, &m, &acts, 2, None, &mut y, 1),
            Err(KernelError::Shape(_))
        ));
        let q8 = Acts::prepare(WeightFormat::Q8_0, &x[..32], 1, 32, 32);
        assert!(matches!(
            TileProduct::with_acts(path, &m, &q8, 1, None, &mut y, 1),
            Err(KernelError::Shape(_))
        ));
        let mut short = vec![0f32; 15];
        assert!(matches!(
            TileProduct::with_acts(path, &m, &acts, 1, None, &mut short, 1),
            Err(KernelError::Shape(_))
        ));
        let mut y0: Vec<f32> = Vec::new();
        let empty = TileProduct::new(path, &m, &[], 0, None, &mut y0, 2).expect("no rows");
        empty.expect("tiles").work(0);
        if KernelPath::Avx2.supported() {
            let rows = 64;
            let x = vec![1f32; rows * 32];
            let mut y = vec![0f32; rows * 16];
            let many = KernelPath::Avx2.many_rows(WeightFormat::Bf16, rows);
            let p = TileProduct::new(KernelPath::Avx2, &m, &x, rows, None, &mut y, 2).expect("ok");
            assert_eq!(p.is_none(), many);
        }
    }
}
