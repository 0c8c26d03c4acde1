//! The FIFO job queue between the HTTP handlers and the GPU worker, and the job registry that
//! `/sdapi/v1/progress` and `/pigment/v1/jobs` read. Jobs are never dropped: a push only fails
//! once shutdown has begun, and closing answers every job still waiting.

use super::{JobResult, Work};
use crate::serve::errors::ApiError;
use std::collections::{BTreeMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Instant, SystemTime};
use tokio::sync::{oneshot, watch};

/// Finished jobs kept for `GET /pigment/v1/jobs/{id}` (each may hold its images).
const KEEP_FINISHED: usize = 64;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum State {
    Queued,
    Running,
    Done,
    Failed,
}

impl State {
    pub fn name(self) -> &'static str {
        match self {
            State::Queued => "queued",
            State::Running => "running",
            State::Done => "done",
            State::Failed => "failed",
        }
    }

    pub fn finished(self) -> bool {
        matches!(self, State::Done | State::Failed)
    }
}

/// A job's progress, published through a `watch` channel (SSE streams wait on it).
#[derive(Clone)]
pub struct Status {
    pub state: State,
    /// Model evaluations done / planned for the current image.
    pub step: usize,
    pub steps: usize,
    /// Index of the current image and the job's image count.
    pub image: usize,
    pub images: usize,
    pub started: Option<Instant>,
    /// Base64 PNG of the latest preview (VAE decode of the latents so far).
    pub preview: Option<Arc<String>>,
    /// The latest preview's step (counted as `step`).
    pub preview_step: usize,
    pub interrupted: bool,
    pub error: Option<String>,
    /// The job's output once done (images stay here for `GET /pigment/v1/jobs/{id}`).
    pub result: Option<Arc<super::Output>>,
}

impl Status {
    /// Share of the whole job done, 0..=1.
    pub fn progress(&self) -> f64 {
        match self.state {
            State::Done => 1.0,
            State::Queued | State::Failed => 0.0,
            State::Running => {
                let per = if self.steps > 0 { self.step as f64 / self.steps as f64 } else { 0.0 };
                ((self.image as f64 + per) / self.images.max(1) as f64).min(1.0)
            }
        }
    }

    /// A1111's `eta_relative`: elapsed / progress - elapsed, in seconds.
    pub fn eta(&self) -> f64 {
        let (Some(t), p) = (self.started, self.progress()) else { return 0.0 };
        if p <= 0.0 || self.state != State::Running {
            return 0.0;
        }
        let elapsed = t.elapsed().as_secs_f64();
        (elapsed / p - elapsed).max(0.0)
    }
}

/// One job as the registry knows it.
pub struct JobInfo {
    pub id: u64,
    /// `txt2img`, `img2img`, `openai`, `options`.
    pub kind: &'static str,
    pub created: SystemTime,
    pub status: watch::Sender<Status>,
}

impl JobInfo {
    pub fn snapshot(&self) -> Status {
        self.status.borrow().clone()
    }

    pub fn update(&self, f: impl FnOnce(&mut Status)) {
        self.status.send_modify(f);
    }
}

pub struct Job {
    pub info: Arc<JobInfo>,
    pub work: Work,
    pub reply: oneshot::Sender<JobResult>,
}

struct Pending {
    jobs: VecDeque<Job>,
    closed: bool,
}

pub struct Queue {
    pending: Mutex<Pending>,
    ready: Condvar,
    next_id: AtomicU64,
    registry: Mutex<BTreeMap<u64, Arc<JobInfo>>>,
}

impl Default for Queue {
    fn default() -> Self {
        Queue {
            pending: Mutex::new(Pending { jobs: VecDeque::new(), closed: false }),
            ready: Condvar::new(),
            next_id: AtomicU64::new(1),
            registry: Mutex::new(BTreeMap::new()),
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // A panic elsewhere never leaves these structures half-changed, so keep serving.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Queue {
    /// Queue `work` (`images` = how many images it makes, for progress); the receiver gets the
    /// result. 503 once shutdown has begun.
    pub fn push(&self, kind: &'static str, images: usize, work: Work) -> Result<(Arc<JobInfo>, oneshot::Receiver<JobResult>), ApiError> {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let status = Status {
            state: State::Queued,
            step: 0,
            steps: 0,
            image: 0,
            images,
            started: None,
            preview: None,
            preview_step: 0,
            interrupted: false,
            error: None,
            result: None,
        };
        let info = Arc::new(JobInfo { id, kind, created: SystemTime::now(), status: watch::channel(status).0 });
        let (tx, rx) = oneshot::channel();
        let mut p = lock(&self.pending);
        if p.closed {
            return Err(ApiError::unavailable("the server is shutting down; retry against the restarted server"));
        }
        self.register(&info);
        p.jobs.push_back(Job { info: info.clone(), work, reply: tx });
        self.ready.notify_one();
        Ok((info, rx))
    }

    fn register(&self, info: &Arc<JobInfo>) {
        let mut r = lock(&self.registry);
        r.insert(info.id, info.clone());
        // Forget the oldest finished jobs beyond the limit (queued and running ones stay).
        let finished: Vec<u64> = r.iter().filter(|(_, j)| j.status.borrow().state.finished()).map(|(&id, _)| id).collect();
        for id in finished.iter().take(finished.len().saturating_sub(KEEP_FINISHED)) {
            r.remove(id);
        }
    }

    /// The next job, blocking; `None` once closed and empty (the worker then stops).
    pub fn pop(&self) -> Option<Job> {
        let mut p = lock(&self.pending);
        loop {
            if let Some(job) = p.jobs.pop_front() {
                return Some(job);
            }
            if p.closed {
                return None;
            }
            p = self.ready.wait(p).unwrap_or_else(|e| e.into_inner());
        }
    }

    /// Jobs waiting (not counting the one running).
    pub fn len(&self) -> usize {
        lock(&self.pending).jobs.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Ids waiting, in order.
    pub fn waiting(&self) -> Vec<u64> {
        lock(&self.pending).jobs.iter().map(|j| j.info.id).collect()
    }

    /// Stop taking jobs: every waiting job is answered 503, and [`Queue::pop`] returns `None`
    /// once the running job is done.
    pub fn close(&self) {
        let drained: Vec<Job> = {
            let mut p = lock(&self.pending);
            p.closed = true;
            self.ready.notify_all();
            p.jobs.drain(..).collect()
        };
        for job in drained {
            let e = ApiError::unavailable("the server shut down before this job started; retry against the restarted server");
            job.info.update(|s| {
                s.state = State::Failed;
                s.error = Some(e.message.clone());
            });
            let _ = job.reply.send(Err(e));
        }
    }

    pub fn job(&self, id: u64) -> Option<Arc<JobInfo>> {
        lock(&self.registry).get(&id).cloned()
    }

    /// Every job known, oldest first.
    pub fn jobs(&self) -> Vec<Arc<JobInfo>> {
        lock(&self.registry).values().cloned().collect()
    }
}
