//! The op profiler (`PIGMENT_PROFILE=1`, `pigment bench … --profile`): GPU time per kernel
//! family and shape.
//!
//! Ops describe each call with [`Context::profile_op`] (family = the `kernels/` file, a shape
//! string, FLOPs or bytes); the description is a closure that only runs while profiling, so a
//! disabled profiler costs one relaxed atomic load per op. Every dispatch is its own compute
//! pass, so where the adapter has TIMESTAMP_QUERY each pass gets a begin/end timestamp pair
//! (resolved at flush, read back when the report is made, no extra syncs in between);
//! elsewhere each dispatch is submitted and waited for alone and timed on the host.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;

/// The work of one op call, for the rate column.
#[derive(Clone, Copy, Debug)]
pub enum Work {
    /// Floating-point operations (2 per multiply-add): reported in GFLOP/s.
    Flops(f64),
    /// Bytes read and written: reported in GB/s (bandwidth-bound ops).
    Bytes(f64),
}

/// One row of the report: every call of one family at one shape.
#[derive(Clone, Debug)]
pub struct ProfileRow {
    pub family: &'static str,
    pub shape: String,
    pub calls: usize,
    pub dispatches: usize,
    pub ms: f64,
    /// Total work of all calls; `None` for dispatches no op described.
    pub work: Option<Work>,
}

impl ProfileRow {
    /// (rate, unit): GFLOP/s or GB/s over the measured time.
    pub fn rate(&self) -> Option<(f64, &'static str)> {
        if self.ms <= 0.0 {
            return None;
        }
        match self.work? {
            Work::Flops(f) => Some((f / self.ms / 1e6, "GFLOP/s")),
            Work::Bytes(b) => Some((b / self.ms / 1e6, "GB/s")),
        }
    }
}

#[derive(Default)]
pub(crate) struct Profiler {
    pub enabled: AtomicBool,
    pub state: Mutex<State>,
}

#[derive(Default)]
pub(crate) struct State {
    rows: Vec<ProfileRow>,
    index: HashMap<(&'static str, String), usize>,
    /// The row of the op whose dispatches are being recorded (its family).
    current: Option<(usize, &'static str)>,
}

impl State {
    fn row(&mut self, family: &'static str, shape: String) -> usize {
        if let Some(&i) = self.index.get(&(family, shape.clone())) {
            return i;
        }
        self.rows.push(ProfileRow { family, shape: shape.clone(), calls: 0, dispatches: 0, ms: 0.0, work: None });
        self.index.insert((family, shape), self.rows.len() - 1);
        self.rows.len() - 1
    }

    pub fn begin_op(&mut self, family: &'static str, shape: String, work: Work) {
        let i = self.row(family, shape);
        let r = &mut self.rows[i];
        r.calls += 1;
        r.work = Some(match (r.work, work) {
            (Some(Work::Flops(a)), Work::Flops(b)) => Work::Flops(a + b),
            (Some(Work::Bytes(a)), Work::Bytes(b)) => Work::Bytes(a + b),
            (_, w) => w,
        });
        self.current = Some((i, family));
    }

    /// The row a dispatch of kernel family `family` counts to: the described op in progress
    /// when it is of that family, else an undescribed row (so a missing description shows up).
    pub fn dispatch_row(&mut self, family: &'static str) -> usize {
        let i = match self.current {
            Some((i, f)) if f == family => i,
            _ => self.row(family, "(undescribed)".into()),
        };
        self.rows[i].dispatches += 1;
        i
    }

    #[cfg_attr(target_arch = "wasm32", allow(dead_code))] // reports are native-only
    pub fn add_ms(&mut self, row: usize, ms: f64) {
        self.rows[row].ms += ms;
    }

    #[cfg_attr(target_arch = "wasm32", allow(dead_code))]
    pub fn rows(&self) -> Vec<ProfileRow> {
        self.rows.clone()
    }
}

impl Profiler {
    pub fn on(&self) -> bool {
        self.enabled.load(Ordering::Relaxed)
    }
    #[cfg_attr(target_arch = "wasm32", allow(dead_code))]
    pub fn reset(&self) {
        *self.state.lock().unwrap() = State::default();
    }
}

/// Pass timestamps of one batch: the query set its passes write and the row of each pass.
pub(crate) struct Timestamps {
    pub queries: wgpu::QuerySet,
    pub resolve: wgpu::Buffer,
    pub rows: Vec<usize>,
    /// Resolved batches waiting to be read: (readback buffer, row of each pass).
    pub pending: Vec<(wgpu::Buffer, Vec<usize>)>,
}

impl Timestamps {
    pub fn new(device: &wgpu::Device, passes: u32) -> Timestamps {
        Timestamps {
            queries: device.create_query_set(&wgpu::QuerySetDescriptor {
                label: Some("pigment.profile"),
                ty: wgpu::QueryType::Timestamp,
                count: 2 * passes,
            }),
            resolve: device.create_buffer(&wgpu::BufferDescriptor {
                label: Some("pigment.profile.resolve"),
                size: 16 * passes as u64,
                usage: wgpu::BufferUsages::QUERY_RESOLVE | wgpu::BufferUsages::COPY_SRC,
                mapped_at_creation: false,
            }),
            rows: vec![],
            pending: vec![],
        }
    }

    /// Resolve this batch's timestamps into a new readback buffer (before the batch's submit).
    pub fn resolve(&mut self, device: &wgpu::Device, encoder: &mut wgpu::CommandEncoder) {
        if self.rows.is_empty() {
            return;
        }
        let n = self.rows.len() as u32;
        let readback = device.create_buffer(&wgpu::BufferDescriptor {
            label: Some("pigment.profile.readback"),
            size: 16 * n as u64,
            usage: wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
            mapped_at_creation: false,
        });
        encoder.resolve_query_set(&self.queries, 0..2 * n, &self.resolve, 0);
        encoder.copy_buffer_to_buffer(&self.resolve, 0, &readback, 0, 16 * n as u64);
        self.pending.push((readback, std::mem::take(&mut self.rows)));
    }
}

/// Print a report as a table, slowest rows first; `wall_ms` (the step's host time), when
/// given, is printed beside the GPU total.
pub fn print_profile(rows: &[ProfileRow], wall_ms: Option<f64>) {
    let mut rows = rows.to_vec();
    rows.sort_by(|a, b| b.ms.total_cmp(&a.ms));
    let total: f64 = rows.iter().map(|r| r.ms).sum();
    match wall_ms {
        Some(w) => println!("profile: {total:.1} ms of GPU time in {w:.1} ms wall"),
        None => println!("profile: {total:.1} ms of GPU time"),
    }
    println!("{:<12} {:<40} {:>6} {:>6} {:>10} {:>6} {:>14}", "family", "shape", "calls", "disp", "ms", "%", "rate");
    for r in &rows {
        let rate = r.rate().map(|(v, u)| format!("{v:.2} {u}")).unwrap_or_else(|| "-".into());
        let pct = if total > 0.0 { 100.0 * r.ms / total } else { 0.0 };
        println!("{:<12} {:<40} {:>6} {:>6} {:>10.2} {:>6.1} {:>14}", r.family, r.shape, r.calls, r.dispatches, r.ms, pct, rate);
    }
    // Per family, for the one-glance view.
    let mut fams: Vec<(&str, f64, Option<(f64, f64, bool)>)> = vec![];
    for r in &rows {
        let i = match fams.iter().position(|f| f.0 == r.family) {
            Some(i) => i,
            None => {
                fams.push((r.family, 0.0, None));
                fams.len() - 1
            }
        };
        fams[i].1 += r.ms;
        if let Some(w) = r.work {
            let (v, flops) = match w {
                Work::Flops(f) => (f, true),
                Work::Bytes(b) => (b, false),
            };
            let e = fams[i].2.get_or_insert((0.0, 0.0, flops));
            e.0 += v;
            e.1 += r.ms;
        }
    }
    println!("{:<12} {:>10} {:>6} {:>14}", "family", "ms", "%", "rate");
    for (f, ms, w) in fams {
        let rate = match w {
            Some((v, wms, true)) if wms > 0.0 => format!("{:.2} GFLOP/s", v / wms / 1e6),
            Some((v, wms, false)) if wms > 0.0 => format!("{:.2} GB/s", v / wms / 1e6),
            _ => "-".into(),
        };
        println!("{:<12} {:>10.2} {:>6.1} {:>14}", f, ms, if total > 0.0 { 100.0 * ms / total } else { 0.0 }, rate);
    }
}
