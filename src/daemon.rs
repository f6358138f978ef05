//! `reconcile daemon`: the sidecar. Every task runs under a supervisor that restarts it with
//! backoff if it ends or panics; one shutdown signal stops them all, each finishing the batch,
//! job or action in hand, and the log says how each ended.
//!
//! Tasks: the HTTP server (/metrics, /healthz, /readyz), the scheduled sweeps (one replica at a
//! time, by a Postgres advisory lock), the event pollers (when `events.queue_url` is set; the file
//! watcher instead when the bucket is a local folder) and the
//! processing workers (when a hook is configured). `--dry-run` is audit mode: dry-run sweeps and
//! the server only; nothing is consumed and nothing is written anywhere.

use crate::backoff::Backoff;
use crate::bucket::Bucket;
use crate::catalog::Catalog;
use crate::config::{BucketLocation, Config};
use crate::error::{Error, Result};
use crate::events::effect::Effects;
use crate::events::folder::{self, FolderWatcher};
#[cfg(feature = "s3")]
use crate::events::sqs::{self, Poller};
use crate::metrics::Metrics;
use crate::model::FindingKind;
use crate::processing::hook::Hook;
use crate::processing::worker::Worker;
use crate::processing::{RetryPolicy, SystemClock};
use crate::redact;
use crate::report::{self, Format};
use crate::server::{self, Health, LastSweep};
use crate::sweep::{self, Quiet, Sweep};
use chrono::Utc;
use futures::FutureExt;
use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;
use tokio::task::JoinSet;

#[derive(Debug, Clone, Copy, Default)]
pub struct Options {
    /// Audit mode: dry-run sweeps and metrics only.
    pub dry_run: bool,
}

/// The log target of the lines an operator reads at the default level: the start (what runs,
/// where), one line per scheduled sweep, and the shutdown. `telemetry` lets it through at `info`
/// while everything else stays at `warn`.
pub const LIFECYCLE: &str = "reconcile::lifecycle";

/// The daemon's supervised tasks, and their names for the start line.
#[derive(Default)]
struct Tasks {
    set: JoinSet<()>,
    /// Each kind of task started, with how many of it.
    started: Vec<(&'static str, usize)>,
}

impl Tasks {
    /// Run `make`'s task under [`supervise`] until shutdown.
    fn supervise<F, Fut>(
        &mut self,
        task: &'static str,
        n: usize,
        stopped: &watch::Receiver<bool>,
        make: F,
    ) where
        F: FnMut(watch::Receiver<bool>) -> Fut + Send + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        match self.started.iter_mut().find(|(name, _)| *name == task) {
            Some((_, count)) => *count += 1,
            None => self.started.push((task, 1)),
        }
        self.set.spawn(supervise(task, n, stopped.clone(), make));
    }

    /// `http server, scheduled sweeps, 2 event pollers, ...`, in the order they started.
    fn started(&self) -> String {
        let names: Vec<String> = self
            .started
            .iter()
            .map(|(name, count)| match count {
                1 => (*name).to_owned(),
                n => format!("{n} {name}s"),
            })
            .collect();
        names.join(", ")
    }
}

/// When the schedule runs the next sweep, for the log.
fn next_sweep(config: &Config) -> String {
    match config.sweep.cron() {
        Ok(schedule) => schedule.upcoming(Utc).next().map_or_else(
            || "never".to_owned(),
            |at| at.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
        ),
        Err(_) => "never (sweep.schedule does not parse)".to_owned(),
    }
}

pub async fn run(
    config: &Config,
    options: Options,
    shutdown: impl Future<Output = ()>,
) -> Result<()> {
    let (catalog, bucket) = crate::adapters::connect(config).await?;
    if !options.dry_run {
        catalog.migrate().await?;
    }
    // A wrong bucket or missing credentials should stop the start, not fail every event later.
    bucket.ping().await?;
    let metrics = Metrics::new();
    let health = Arc::new(Health::default());
    let (listener, addr) = server::bind(&config.server.listen).await?;
    let config = Arc::new(config.clone());
    let (stop, stopped) = watch::channel(false);
    let mut tasks = Tasks::default();

    {
        let (metrics, catalog, health) = (metrics.clone(), catalog.clone(), health.clone());
        let mut first = Some(listener);
        tasks.supervise("http server", 0, &stopped, move |stopped| {
            let (metrics, catalog, health) = (metrics.clone(), catalog.clone(), health.clone());
            let listener = first.take();
            async move {
                let listener = match listener {
                    Some(listener) => listener,
                    None => match server::bind(&addr.to_string()).await {
                        Ok((listener, _)) => listener,
                        Err(e) => return tracing::error!(error = %e, "cannot bind again"),
                    },
                };
                let mut stopped = stopped;
                let stopping = async move { crate::stop::requested(&mut stopped).await };
                if let Err(e) = server::serve(listener, metrics, catalog, health, stopping).await {
                    tracing::error!(error = %e, "http server failed");
                }
            }
        });
    }

    let sweeper = Arc::new(Sweeper {
        config: config.clone(),
        catalog: catalog.clone(),
        bucket: bucket.clone(),
        metrics: metrics.clone(),
        health: health.clone(),
        dry_run: options.dry_run,
    });
    tasks.supervise("scheduled sweeps", 0, &stopped, move |stopped| {
        let sweeper = sweeper.clone();
        async move { sweeper.run(stopped).await }
    });

    if !options.dry_run {
        spawn_pollers(
            &mut tasks, &config, &catalog, &bucket, &metrics, &health, &stopped,
        )
        .await?;
        spawn_workers(&mut tasks, &config, &catalog, &metrics, &stopped);
        spawn_housekeeping(&mut tasks, &config, &catalog, &stopped);
    }

    tracing::info!(
        target: LIFECYCLE,
        version = %env!("CARGO_PKG_VERSION"),
        listen = %addr,
        dry_run = options.dry_run,
        database = %redact::url(config.database.url.as_deref().unwrap_or_default()),
        bucket = %redact::url(&config.storage.bucket),
        prefix = %config.storage.prefix,
        queue = config.events.queue_url.as_deref().filter(|u| !u.is_empty()).map(redact::url),
        tasks = tasks.started().as_str(),
        next_sweep = %next_sweep(&config),
        "daemon started, listening on {addr}"
    );
    shutdown.await;
    tracing::info!(target: LIFECYCLE, "shutting down: finishing what is in hand");
    let _ = stop.send(true);
    while let Some(ended) = tasks.set.join_next().await {
        if let Err(e) = ended {
            tracing::error!(error = %e, "a task could not be joined");
        }
    }
    tracing::info!(target: LIFECYCLE, "daemon stopped");
    Ok(())
}

/// The event sources: a folder bucket's file notifications, or the SQS pollers of
/// `events.queue_url` (config refuses a queue beside a folder).
async fn spawn_pollers(
    tasks: &mut Tasks,
    config: &Arc<Config>,
    catalog: &Arc<dyn Catalog>,
    bucket: &Arc<dyn Bucket>,
    metrics: &Arc<Metrics>,
    health: &Arc<Health>,
    stopped: &watch::Receiver<bool>,
) -> Result<()> {
    let effects = Arc::new(Effects {
        catalog: catalog.clone(),
        bucket: bucket.clone(),
        prefix: config.storage.prefix.clone(),
        rules: config.rules(),
    });
    if let Ok(BucketLocation::Folder(root)) = config.storage.location() {
        // A folder's events are its file notifications (config validation refuses a queue here).
        let watcher = Arc::new(FolderWatcher {
            root: root.to_owned(),
            filter: folder::Filter {
                prefix: config.storage.prefix.clone(),
                quarantine: config.sweep.quarantine(),
            },
            effects,
            metrics: metrics.clone(),
            gate: health.events.clone(),
        });
        tasks.supervise("folder watcher", 0, stopped, move |stopped| {
            let watcher = watcher.clone();
            async move { watcher.run(stopped).await }
        });
        return Ok(());
    }
    let Some(queue_url) = config.events.queue_url.clone().filter(|u| !u.is_empty()) else {
        tracing::info!("events.queue_url is not set: no event consumption, sweeps only");
        return Ok(());
    };
    spawn_sqs_pollers(tasks, config, queue_url, effects, metrics, health, stopped).await
}

/// Without S3 support there is no queue to consume (config refuses `events.queue_url` then).
#[cfg(not(feature = "s3"))]
async fn spawn_sqs_pollers(
    _: &mut Tasks,
    _: &Arc<Config>,
    _: String,
    _: Arc<Effects>,
    _: &Arc<Metrics>,
    _: &Arc<Health>,
    _: &watch::Receiver<bool>,
) -> Result<()> {
    Ok(())
}

#[cfg(feature = "s3")]
async fn spawn_sqs_pollers(
    tasks: &mut Tasks,
    config: &Arc<Config>,
    queue_url: String,
    effects: Arc<Effects>,
    metrics: &Arc<Metrics>,
    health: &Arc<Health>,
    stopped: &watch::Receiver<bool>,
) -> Result<()> {
    let queue =
        sqs::Queue::connect(&config.events, &queue_url, config.storage.region.as_deref()).await;
    tracing::info!(queue = %queue.describe(), "consuming S3 events");
    let poller = Arc::new(Poller {
        queue,
        wait_time: config.events.wait_time,
        visibility: config.events.visibility_timeout,
        effects,
        metrics: metrics.clone(),
        gate: health.events.clone(),
    });
    poller.check_redrive_policy().await?;
    for n in 0..config.events.pollers {
        let poller = poller.clone();
        tasks.supervise("event poller", n, stopped, move |stopped| {
            let poller = poller.clone();
            async move { poller.run(stopped).await }
        });
    }
    Ok(())
}

fn spawn_workers(
    tasks: &mut Tasks,
    config: &Arc<Config>,
    catalog: &Arc<dyn Catalog>,
    metrics: &Arc<Metrics>,
    stopped: &watch::Receiver<bool>,
) {
    let Some(hook) = Hook::from_config(&config.processing) else {
        return;
    };
    let hook = Arc::new(hook);
    let p = &config.processing;
    for n in 0..p.workers {
        let worker = Arc::new(Worker {
            id: format!("{}:{}:{n}", host_name(), std::process::id()),
            catalog: catalog.clone(),
            hook: hook.clone(),
            bucket: config.storage.bucket.clone(),
            retry: RetryPolicy {
                max_attempts: p.max_attempts,
                base: p.backoff_base,
                max: p.backoff_max,
            },
            lease: p.lease(),
            clock: Arc::new(SystemClock),
            metrics: metrics.clone(),
        });
        tasks.supervise("processing worker", n, stopped, move |stopped| {
            let worker = worker.clone();
            async move { worker.run(stopped, Duration::from_secs(1)).await }
        });
    }
}

/// Prune what only grows (finished jobs, event states, noted objects) past `[retention]`, now and
/// every `retention.interval`. Each replica may do it: deleting the same old rows twice is
/// harmless.
fn spawn_housekeeping(
    tasks: &mut Tasks,
    config: &Arc<Config>,
    catalog: &Arc<dyn Catalog>,
    stopped: &watch::Receiver<bool>,
) {
    let (catalog, settings) = (catalog.clone(), config.retention.clone());
    tasks.supervise(
        "housekeeping",
        0,
        stopped,
        move |mut stopped| {
            let (catalog, settings) = (catalog.clone(), settings.clone());
            async move {
                while !*stopped.borrow() {
                    match catalog.prune(&settings.retention(), Utc::now()).await {
                        Ok(pruned) => tracing::info!(
                            finished_jobs = pruned.finished_jobs,
                            key_events = pruned.key_events,
                            objects = pruned.objects,
                            "pruned rows past their retention"
                        ),
                        Err(e) => tracing::error!(error = %e, "pruning failed; next try in retention.interval"),
                    }
                    tokio::select! {
                        _ = stopped.changed() => return,
                        _ = tokio::time::sleep(settings.interval) => {}
                    }
                }
            }
        },
    );
}

/// The scheduled sweeps of one daemon.
struct Sweeper {
    config: Arc<Config>,
    catalog: Arc<dyn Catalog>,
    bucket: Arc<dyn Bucket>,
    metrics: Arc<Metrics>,
    health: Arc<Health>,
    dry_run: bool,
}

impl Sweeper {
    async fn run(&self, mut stopped: watch::Receiver<bool>) {
        let schedule = match self.config.sweep.cron() {
            Ok(schedule) => schedule,
            Err(e) => return tracing::error!(error = %e, "sweep.schedule"),
        };
        while !*stopped.borrow() {
            let Some(next) = schedule.upcoming(Utc).next() else {
                return tracing::warn!("sweep.schedule has no future run");
            };
            let wait = (next - Utc::now()).to_std().unwrap_or_default();
            tokio::select! {
                _ = stopped.changed() => return,
                _ = tokio::time::sleep(wait) => {}
            }
            // A shutdown stops the sweep between transactions (an action each, or a batch);
            // its history row says `interrupted`.
            self.sweep_once(&stopped).await;
        }
    }

    /// One scheduled sweep, if no other replica is sweeping the same table and bucket.
    pub async fn sweep_once(&self, stop: &watch::Receiver<bool>) {
        let c = &self.config;
        let lock = match self.catalog.try_sweep_lock().await {
            Ok(Some(lock)) => lock,
            Ok(None) => {
                self.metrics.sweeps_skipped.inc();
                return tracing::info!(
                    target: LIFECYCLE,
                    "another replica is sweeping; this one skips"
                );
            }
            Err(e) => {
                self.health
                    .sweep_finished(LastSweep::Failed(e.dependency()));
                return tracing::error!(error = %e, "sweep failed");
            }
        };
        let sweep = Sweep {
            catalog: self.catalog.as_ref(),
            bucket: self.bucket.as_ref(),
            prefix: &c.storage.prefix,
            rules: &c.rules(),
            metrics: Some(&self.metrics),
        };
        // The daemon's report is its metrics and this log line; applied, skipped and failed
        // actions are logged by the executor.
        let mut sink = report::sink(Format::Jsonl, Box::new(std::io::sink()));
        let options = sweep::Options {
            dry_run: self.dry_run,
            force: false,
        };
        let began = std::time::Instant::now();
        let result = sweep
            .run(options, Utc::now(), &mut Quiet, sink.as_mut(), stop.clone())
            .await;
        lock.release().await;
        match result {
            Ok(summary) => {
                let (h, a) = (&summary.header, &summary.footer.actions);
                self.health.sweep_finished(if a.failed > 0 {
                    LastSweep::Failed(None)
                } else {
                    LastSweep::Fine
                });
                tracing::info!(
                    target: LIFECYCLE,
                    dry_run = h.dry_run,
                    objects_listed = h.objects_listed,
                    records_scanned = h.records_scanned,
                    found = found(&h.counts).as_str(),
                    applied = a.applied,
                    would_apply = a.dry_run,
                    skipped = a.skipped,
                    failed = a.failed,
                    duration = %format!("{:.2}s", began.elapsed().as_secs_f64()),
                    next_sweep = %next_sweep(c),
                    "sweep finished"
                );
            }
            // A shutdown, not a failure: readiness stays as it was.
            Err(Error::Interrupted(interrupted)) => {
                tracing::info!(target: LIFECYCLE, "{interrupted}")
            }
            Err(Error::SafetyStop(stop)) => {
                // Deliberate, and nothing was written: an operator's call, not an outage.
                self.health.sweep_finished(LastSweep::Fine);
                tracing::error!("{stop}");
            }
            Err(e) => {
                self.health
                    .sweep_finished(LastSweep::Failed(e.dependency()));
                tracing::error!(error = %e, "sweep failed");
            }
        }
    }
}

/// What a sweep found, for its log line: `stale_pending=1 in_grace=2`, or `nothing`.
fn found(counts: &report::Counts) -> String {
    let found: Vec<String> = FindingKind::ALL
        .into_iter()
        .filter(|kind| counts.get(*kind) > 0)
        .map(|kind| format!("{}={}", kind.as_str(), counts.get(kind)))
        .collect();
    if found.is_empty() {
        "nothing".to_owned()
    } else {
        found.join(" ")
    }
}

/// Run a task; if it ends or panics before shutdown, restart it with backoff.
async fn supervise<F, Fut>(
    task: &'static str,
    n: usize,
    stopped: watch::Receiver<bool>,
    mut make: F,
) where
    F: FnMut(watch::Receiver<bool>) -> Fut,
    Fut: Future<Output = ()>,
{
    let mut backoff = Backoff::new(Duration::from_secs(1), Duration::from_secs(60));
    let mut watch = stopped.clone();
    loop {
        let started = std::time::Instant::now();
        let ended = AssertUnwindSafe(make(stopped.clone())).catch_unwind().await;
        if started.elapsed() > Duration::from_secs(300) {
            // It ran well for a while: this is a new failure, not the same one again.
            backoff.reset();
        }
        if *watch.borrow() {
            return tracing::info!(task, n, "stopped");
        }
        let delay = backoff.next_delay();
        match ended {
            Ok(()) => tracing::error!(
                task,
                n,
                retry_in_ms = delay.as_millis() as u64,
                "task ended unexpectedly; restarting"
            ),
            Err(_) => tracing::error!(
                task,
                n,
                retry_in_ms = delay.as_millis() as u64,
                "task panicked; restarting"
            ),
        }
        tokio::select! {
            _ = watch.changed() => return tracing::info!(task, n, "stopped"),
            _ = tokio::time::sleep(delay) => {}
        }
    }
}

/// This host's name for job leases; any stable-enough word does.
fn host_name() -> String {
    std::env::var("HOSTNAME")
        .ok()
        .filter(|h| !h.is_empty())
        .or_else(|| {
            std::fs::read_to_string("/etc/hostname")
                .ok()
                .map(|h| h.trim().to_owned())
        })
        .unwrap_or_else(|| "reconcile".into())
}
