//! `reconcile daemon`: the sidecar. For now it runs the event pollers until SIGTERM or SIGINT;
//! each poller finishes the batch it holds before it stops.

use crate::config::Config;
use crate::error::Result;
use crate::events::effect::Effects;
use crate::events::sqs::{self, Poller};
use crate::metrics::Metrics;
use std::future::Future;
use tokio::sync::watch;
use tokio::task::JoinSet;

pub async fn run(config: &Config, shutdown: impl Future<Output = ()>) -> Result<()> {
    let queue_url = config.queue_url()?.to_owned();
    let (catalog, bucket) = crate::app::connect(config).await?;
    catalog.migrate().await?;
    let client = sqs::client(&config.events, config.storage.region.as_deref()).await;
    let metrics = Metrics::new();
    let effects = std::sync::Arc::new(Effects {
        catalog,
        bucket,
        prefix: config.storage.prefix.clone(),
        settings: config.sweep.clone(),
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
    for i in 0..config.events.pollers {
        let poller = poller(i);
        let stopped = stopped.clone();
        tasks.spawn(async move {
            poller.run(stopped).await;
            i
        });
    }
    tracing::info!(queue = %queue_url, pollers = config.events.pollers, "daemon started");
    shutdown.await;
    tracing::info!("shutting down: finishing the batches in hand");
    let _ = stop.send(true);
    while let Some(ended) = tasks.join_next().await {
        match ended {
            Ok(i) => tracing::info!(poller = i, "poller stopped"),
            Err(e) => tracing::error!(error = %e, "poller ended abnormally"),
        }
    }
    Ok(())
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
