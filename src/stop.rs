//! Stopping as a plain value: a `watch::Receiver<bool>` that turns true once (SIGTERM, SIGINT),
//! handed to every long loop, which stops between two units of work and never inside one.

use tokio::sync::watch;

/// Resolves once a stop is requested; never, when nobody is left who could request one.
pub async fn requested(stop: &mut watch::Receiver<bool>) {
    if stop.wait_for(|stopping| *stopping).await.is_err() {
        std::future::pending::<()>().await;
    }
}

/// A stop nobody can request: for runs that have nothing to stop between (a dry run, a test).
pub fn never() -> watch::Receiver<bool> {
    watch::channel(false).1
}

/// A stop that turns true on the first SIGTERM or SIGINT.
pub fn on_signal() -> watch::Receiver<bool> {
    let (stop, stopping) = watch::channel(false);
    tokio::spawn(async move {
        signal().await;
        tracing::warn!("stop requested: finishing the action in hand, then stopping");
        let _ = stop.send(true);
        // Keep the sender: its receivers must not read a dropped sender as "never".
        std::future::pending::<()>().await;
    });
    stopping
}

/// Resolves on SIGTERM or SIGINT.
pub async fn signal() {
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test]
    async fn requested_resolves_on_true_and_never_for_a_sender_gone_silent() {
        let (tx, mut rx) = watch::channel(false);
        let waiting = tokio::spawn(async move { requested(&mut rx).await });
        tx.send(true).expect("receiver alive");
        tokio::time::timeout(Duration::from_secs(1), waiting)
            .await
            .expect("a requested stop is seen (likely deadlocked)")
            .expect("join");

        let (tx, mut rx) = watch::channel(false);
        drop(tx);
        let never = tokio::time::timeout(Duration::from_millis(50), requested(&mut rx)).await;
        assert!(never.is_err(), "a dropped sender is not a stop");
    }
}
