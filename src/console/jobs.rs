//! Replays and purges started from the console. Each job first runs a dry run, then waits; a
//! replay moves 1, 10, 100, then the rest, waiting for the operator between steps, and before
//! each step looks for messages it already replayed back in the DLQ: if any failed again the
//! ramp stops. Steps run in chunks through [`dlq::replay`] / [`dlq::purge`], so each message is
//! acked in its DLQ only after the broker confirmed its copy, and a pause takes effect within
//! one message.

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};

use tokio_util::sync::CancellationToken;

use super::Console;
use super::query::FilterForm;
use crate::dlq::{self, DlqRef, Filter, Outcome, ReplayOptions, Report};
use crate::error::Error;

mod view;

pub(super) use view::{list_page, live, page};

/// Messages a step handles per chunk: pages can read the DLQs between chunks.
const CHUNK: usize = 200;

/// Replay or purge.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Op {
    /// Back to the queue each failed in.
    Replay,
    /// Deleted.
    Purge,
}

impl Op {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Op::Replay => "replay",
            Op::Purge => "purge",
        }
    }
}

/// Where a job stands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Phase {
    /// The dry run is reading the DLQs.
    DryRun,
    /// Waiting for the operator to start the next step (or to resume a paused one).
    Waiting,
    /// A step is running.
    Running,
    /// Pausing: the running chunk stops at the next message.
    Pausing,
    /// The ramp stopped on its own; the reason says why. Nothing more will happen.
    Stopped(String),
    /// Every step done, or nothing left to do.
    Done,
    /// The operator cancelled it.
    Cancelled,
}

impl Phase {
    pub(crate) fn finished(&self) -> bool {
        matches!(self, Phase::Stopped(_) | Phase::Done | Phase::Cancelled)
    }
}

/// One step of the ramp.
#[derive(Debug, Clone)]
pub(crate) struct Step {
    /// How many messages it moves; `None` for the rest.
    pub(crate) size: Option<usize>,
    /// Moved so far.
    pub(crate) done: usize,
    /// Left in the DLQ because they could not be moved (the report says why).
    pub(crate) failed: usize,
}

/// A job's state, as its page shows it.
#[derive(Debug, Clone)]
pub(crate) struct JobState {
    pub(crate) op: Op,
    pub(crate) scope: FilterForm,
    /// The selected ids; empty when the job acts on everything the filter matches.
    pub(crate) ids: BTreeSet<String>,
    pub(crate) phase: Phase,
    /// What the dry run would move, and what it could not.
    pub(crate) planned: usize,
    pub(crate) unmovable: usize,
    /// Where the dry run would send them: (queue, count).
    pub(crate) targets: Vec<(String, usize)>,
    pub(crate) steps: Vec<Step>,
    /// The step to run next (or running).
    pub(crate) current: usize,
    /// Ids moved so far; a replay leaves them out of later steps and watches for them.
    pub(crate) moved: BTreeSet<String>,
    /// Ids a step could not move; left out of later steps.
    pub(crate) skipped: BTreeSet<String>,
    /// Replayed messages found back in the DLQ at the last check.
    pub(crate) failed_again: usize,
    /// Problems worth showing (the last report's errors).
    pub(crate) notes: Vec<String>,
}

impl JobState {
    /// Moves to `phase` unless the job already finished (a cancel wins over a step's end).
    fn set(&mut self, phase: Phase) {
        if !self.phase.finished() {
            self.phase = phase;
        }
    }

    /// Messages moved by every step so far.
    pub(crate) fn moved_total(&self) -> usize {
        self.steps.iter().map(|s| s.done).sum()
    }
}

/// A job: its state and the token that pauses its running step.
pub(crate) struct Job {
    pub(crate) id: u64,
    pub(crate) state: Mutex<JobState>,
    pause: Mutex<CancellationToken>,
    dlqs: Vec<DlqRef>,
    filter: Filter,
}

impl Job {
    pub(crate) fn snapshot(&self) -> JobState {
        self.state.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    fn update<R>(&self, f: impl FnOnce(&mut JobState) -> R) -> R {
        f(&mut self.state.lock().unwrap_or_else(|p| p.into_inner()))
    }

    /// The filter of the next chunk: the scope, minus what earlier steps moved or skipped.
    fn chunk_filter(&self, limit: usize) -> Filter {
        let s = self.snapshot();
        let mut f = self.filter.clone();
        f.skip = s.moved.union(&s.skipped).cloned().collect();
        f.limit = Some(limit);
        f
    }
}

/// Registers a job over `dlqs` and `filter` and starts its dry run.
pub(crate) fn start(
    c: &Arc<Console>,
    op: Op,
    scope: FilterForm,
    ids: BTreeSet<String>,
    dlqs: Vec<DlqRef>,
    mut filter: Filter,
) -> u64 {
    filter.ids = ids.clone();
    let sizes: Vec<Option<usize>> = match op {
        Op::Replay => vec![Some(1), Some(10), Some(100), None],
        Op::Purge => vec![None],
    };
    let mut jobs = c.jobs.lock().unwrap_or_else(|p| p.into_inner());
    let id = jobs.keys().next_back().map_or(1, |k| k + 1);
    let job = Arc::new(Job {
        id,
        state: Mutex::new(JobState {
            op,
            scope,
            ids,
            phase: Phase::DryRun,
            planned: 0,
            unmovable: 0,
            targets: vec![],
            steps: sizes
                .into_iter()
                .map(|size| Step {
                    size,
                    done: 0,
                    failed: 0,
                })
                .collect(),
            current: 0,
            moved: BTreeSet::new(),
            skipped: BTreeSet::new(),
            failed_again: 0,
            notes: vec![],
        }),
        pause: Mutex::new(CancellationToken::new()),
        dlqs,
        filter,
    });
    jobs.insert(id, job.clone());
    drop(jobs);
    let c2 = c.clone();
    c.tasks.spawn(async move { dry_run(&c2, &job).await });
    id
}

async fn dry_run(c: &Console, job: &Job) {
    let op = job.snapshot().op;
    let report = {
        let _turn = c.read_conn().await;
        match op {
            Op::Replay => replay(c, job, &job.filter, true).await,
            Op::Purge => purge(c, job, &job.filter, true).await,
        }
    };
    job.update(|s| match report {
        Ok(r) => {
            let mut targets: std::collections::BTreeMap<String, usize> = Default::default();
            for i in &r.items {
                match i.outcome {
                    Outcome::WouldReplay | Outcome::WouldPurge => {
                        s.planned += 1;
                        let to = match op {
                            Op::Replay => i.origin.clone().unwrap_or_else(|| "-".into()),
                            Op::Purge => i.dlq.clone(),
                        };
                        *targets.entry(to).or_default() += 1;
                    }
                    _ => s.unmovable += 1,
                }
            }
            s.targets = targets.into_iter().collect();
            note_errors(s, &r);
            s.set(if s.planned == 0 {
                Phase::Done
            } else {
                Phase::Waiting
            });
        }
        Err(e) => s.set(Phase::Stopped(format!("the dry run failed: {e}"))),
    });
}

/// Runs the job's next step (or the rest of a paused one), unless it finished.
pub(crate) async fn advance(c: &Console, job: &Job) {
    let token = CancellationToken::new();
    *job.pause.lock().unwrap_or_else(|p| p.into_inner()) = token.clone();
    let op = job.snapshot().op;
    if op == Op::Replay && !check_failed_again(c, job).await {
        return;
    }
    loop {
        let (step_left, op) = job.update(|s| {
            let step = &s.steps[s.current];
            let left = step
                .size
                .map(|n| n.saturating_sub(step.done + step.failed))
                .unwrap_or(usize::MAX);
            (left, s.op)
        });
        if step_left == 0 {
            break;
        }
        if token.is_cancelled() || c.shutdown.is_cancelled() {
            job.update(|s| s.set(Phase::Waiting));
            return;
        }
        let filter = job.chunk_filter(step_left.min(CHUNK));
        let report = {
            let _turn = c.read_conn().await;
            match op {
                Op::Replay => replay_paused(c, job, &filter, &token).await,
                Op::Purge => purge_paused(c, job, &filter, &token).await,
            }
        };
        c.metrics.change(op.as_str());
        let report = match report {
            Ok(r) => r,
            Err(e) => {
                job.update(|s| s.set(Phase::Stopped(format!("{}: {e}", op.as_str()))));
                return;
            }
        };
        let handled = job.update(|s| record(s, &report));
        if report.aborted.is_some() && !token.is_cancelled() {
            let why = report.aborted.clone().unwrap_or_default();
            job.update(|s| s.set(Phase::Stopped(format!("the step stopped: {why}"))));
            return;
        }
        if token.is_cancelled() {
            job.update(|s| s.set(Phase::Waiting));
            return;
        }
        if handled == 0 {
            job.update(|s| s.set(Phase::Done));
            return;
        }
    }
    job.update(|s| {
        s.current += 1;
        let next = if s.current >= s.steps.len() {
            Phase::Done
        } else {
            Phase::Waiting
        };
        s.set(next);
    });
}

/// Counts one chunk's report into the current step; returns how many messages it handled.
fn record(s: &mut JobState, r: &Report) -> usize {
    let step = s.current;
    for i in &r.items {
        let id = i.id.clone();
        match i.outcome {
            Outcome::Replayed | Outcome::Purged => {
                s.steps[step].done += 1;
                if let Some(id) = id {
                    s.moved.insert(id);
                }
            }
            _ => {
                s.steps[step].failed += 1;
                if let Some(id) = id {
                    s.skipped.insert(id);
                }
            }
        }
    }
    note_errors(s, r);
    r.items.len()
}

fn note_errors(s: &mut JobState, r: &Report) {
    for i in r.items.iter().filter(|i| i.error.is_some()).take(5) {
        let id = i.id.as_deref().unwrap_or("(no id)");
        s.notes
            .push(format!("{id}: {}", i.error.as_deref().unwrap_or("")));
    }
    s.notes.truncate(20);
}

/// Looks for replayed messages back in the DLQ; stops the ramp (returning false) if any.
async fn check_failed_again(c: &Console, job: &Job) -> bool {
    let moved = job.snapshot().moved;
    if moved.is_empty() {
        return true;
    }
    let filter = Filter {
        ids: moved,
        ..Filter::default()
    };
    let found = {
        let conn = match c.read_conn().await {
            Ok(conn) => conn,
            Err(e) => {
                job.update(|s| s.set(Phase::Stopped(format!("checking for new failures: {e}"))));
                return false;
            }
        };
        dlq::list(&conn, &job.dlqs, &filter).await
    };
    match found {
        Ok(listing) if listing.items.is_empty() => true,
        Ok(listing) => {
            let n = listing.items.len();
            let example = listing.items[0].error.clone();
            job.update(|s| {
                s.failed_again = n;
                s.set(Phase::Stopped(format!(
                    "{n} replayed message(s) failed again and are back in the DLQ (e.g. {example}); the ramp stopped"
                )));
            });
            false
        }
        Err(e) => {
            job.update(|s| s.set(Phase::Stopped(format!("checking for new failures: {e}"))));
            false
        }
    }
}

async fn replay(c: &Console, job: &Job, filter: &Filter, dry_run: bool) -> Result<Report, Error> {
    let opts = ReplayOptions {
        filter: filter.clone(),
        dry_run,
        rate: None,
        window: 32,
        progress: false,
    };
    dlq::replay(
        &c.settings.url,
        &c.settings.topology,
        &job.dlqs,
        &opts,
        &CancellationToken::new(),
    )
    .await
}

async fn replay_paused(
    c: &Console,
    job: &Job,
    filter: &Filter,
    pause: &CancellationToken,
) -> Result<Report, Error> {
    let opts = ReplayOptions {
        filter: filter.clone(),
        dry_run: false,
        rate: None,
        window: 32,
        progress: false,
    };
    dlq::replay(
        &c.settings.url,
        &c.settings.topology,
        &job.dlqs,
        &opts,
        pause,
    )
    .await
}

async fn purge(c: &Console, job: &Job, filter: &Filter, dry_run: bool) -> Result<Report, Error> {
    purge_with(c, job, filter, dry_run, &CancellationToken::new()).await
}

async fn purge_paused(
    c: &Console,
    job: &Job,
    filter: &Filter,
    pause: &CancellationToken,
) -> Result<Report, Error> {
    purge_with(c, job, filter, false, pause).await
}

async fn purge_with(
    c: &Console,
    job: &Job,
    filter: &Filter,
    dry_run: bool,
    pause: &CancellationToken,
) -> Result<Report, Error> {
    let conn = dlq::connect(&c.settings.url, "console-purge").await?;
    let report = dlq::purge(&conn, &job.dlqs, filter, dry_run, pause).await;
    crate::amqp::close(&conn).await;
    report
}

/// Pauses the running step of job `id` (it stops at the next message).
pub(crate) fn pause(job: &Job) {
    job.update(|s| {
        if s.phase == Phase::Running {
            s.phase = Phase::Pausing;
        }
    });
    job.pause.lock().unwrap_or_else(|p| p.into_inner()).cancel();
}

/// Cancels job `id`: a running step stops at the next message, and nothing more happens.
pub(crate) fn cancel(job: &Job) {
    job.pause.lock().unwrap_or_else(|p| p.into_inner()).cancel();
    job.update(|s| {
        if !s.phase.finished() {
            s.phase = Phase::Cancelled;
        }
    });
}

/// Marks the job running if it is waiting; false if it is not (already running, finished).
pub(crate) fn begin(job: &Job) -> bool {
    job.update(|s| {
        if s.phase == Phase::Waiting {
            s.phase = Phase::Running;
            true
        } else {
            false
        }
    })
}
