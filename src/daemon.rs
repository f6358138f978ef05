//! `reconcile daemon`: the sidecar. It runs the event pollers and the processing workers until
//! SIGTERM or SIGINT; each finishes the batch or job it holds before it stops.

use crate::config::Config;
use crate::error::Result;
use crate::events::effect::Effects;
use crate::events::sqs::{self, Poller};
use crate::execute::AfterUpload;
use crate::metrics::Metrics;
use crate::processing::hook::Hook;
use crate::processing::worker::Worker;
use crate::processing::{RetryPolicy, SystemClock};
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;
use tokio::task::JoinSet;

pub async fn run(config: &Config, shutdown: impl Future<Output = ()>) -> Result<()> {
    let queue_url = config.queue_url()?.to_owned();
    let (catalog, bucket) = crate::app::connect(config).await?;
    catalog.migrate().await?;
    let client = sqs::client(&config.events, config.storage.region.as_deref()).await;
    let metrics = Metrics::new();
    let effects = Arc::new(Effects {
        catalog,
        bucket,
        prefix: config.storage.prefix.clone(),
        settings: config.sweep.clone(),
        after_upload: AfterUpload::from_config(&config.processing),
    });
    let poller = |_: usize| Poller {
        client: client.clone(),
        queue_url: queue_url.clone(),
        wait_time: config.events.wait_time,
        visibility: config.events.visibility_timeout,
        effects: effects.clone(),
        metrics: metrics.clone(),
    };
    poller(0).check_redrive_policy().await?;

    let (stop, stopped) = watch::channel(false);
    let mut tasks = JoinSet::new();
    if let Some(hook) = Hook::from_config(&config.processing) {
        let hook = Arc::new(hook);
        let p = &config.processing;
        for n in 0..p.workers {
            let worker = Worker {
                id: format!("{}:{}:{n}", host_name(), std::process::id()),
                catalog: effects.catalog.clone(),
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
            };
            let stopped = stopped.clone();
            tasks.spawn(async move {
                worker.run(stopped, Duration::from_secs(1)).await;
                ("processing worker", n)
            });
        }
    }
    for i in 0..config.events.pollers {
        let poller = poller(i);
        let stopped = stopped.clone();
        tasks.spawn(async move {
            poller.run(stopped).await;
            ("event poller", i)
        });
    }
    tracing::info!(queue = %queue_url, pollers = config.events.pollers, "daemon started");
    shutdown.await;
    tracing::info!("shutting down: finishing the batches in hand");
    let _ = stop.send(true);
    while let Some(ended) = tasks.join_next().await {
        match ended {
            Ok((task, n)) => tracing::info!(task, n, "stopped"),
            Err(e) => tracing::error!(error = %e, "poller ended abnormally"),
        }
    }
    Ok(())
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

/// Resolves on SIGTERM or SIGINT.
pub async fn shutdown_signal() {
    let interrupt = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::terminate()) {
            Ok(mut terminate) => {
                tokio::select! {
                    _ = interrupt => {}
                    _ = terminate.recv() => {}
                }
            }
            Err(_) => {
                let _ = interrupt.await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = interrupt.await;
    }
}
