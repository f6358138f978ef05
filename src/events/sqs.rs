//! The SQS consumer: long-poll a batch, apply each message's events, delete what was committed,
//! keep the visibility of a slow batch extended, back off on errors.
//!
//! A message leaves the queue only after every event in it took effect. One that cannot be parsed
//! or whose effect fails on its own stays: SQS makes it visible again and, after the queue's
//! maxReceiveCount, its redrive policy moves it to the dead-letter queue. Nothing is dropped here.
//!
//! A failing dependency is not the message's fault, and must not send healthy events to the
//! dead-letter queue however long it lasts: the poller keeps the batch in hand (its visibility
//! extended), closes the pollers' shared gate so that no new batch is received, probes the
//! dependency with backoff, and once it answers applies the event again and goes on.

use super::effect::Effects;
use super::gate::Gate;
use super::hold::{Held, apply_holding, took_effect};
use super::parse::{self, Message as Parsed, S3Event};
use crate::backoff::Backoff;
use crate::config::EventsConfig;
use crate::error::{Error, Result, describe_sdk};
use crate::metrics::Metrics;
use aws_sdk_sqs::Client;
use aws_sdk_sqs::config::{BehaviorVersion, Region};
use aws_sdk_sqs::types::{
    ChangeMessageVisibilityBatchRequestEntry, DeleteMessageBatchRequestEntry, Message,
    QueueAttributeName,
};
use chrono::Utc;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::watch;

/// SQS's limits: 10 messages a receive, 12 hours of total invisibility per receipt.
const MAX_BATCH: i32 = 10;
const MAX_INVISIBLE: Duration = Duration::from_secs(12 * 3600);

/// How handling one message (or one event) ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Handled {
    /// Every effect committed (or found nothing to do): the message may be deleted.
    Done,
    /// Left to the queue and its redrive policy.
    Kept,
    /// A stop came while waiting for a dependency: the message stays in the queue.
    Stopped,
}

/// One lock per key of a batch, so that the batch's events for one key apply in the order its
/// messages came, while other keys' apply at the same time. The messages are started in order
/// and each asks for its key's lock before it first waits; the locks serve first come, first
/// served.
#[derive(Default)]
struct KeyOrder(std::sync::Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>);

impl KeyOrder {
    fn turn(&self, key: &str) -> Arc<tokio::sync::Mutex<()>> {
        let mut locks = self
            .0
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        locks.entry(key.to_owned()).or_default().clone()
    }
}

/// An SQS client and the endpoint it talks to, named in every error about the queue.
#[derive(Clone)]
pub struct Queue {
    pub client: Client,
    pub url: String,
    /// Where requests go: the configured endpoint, the queue URL's own host when that is not
    /// AWS, or AWS's regional endpoint.
    pub endpoint: String,
}

impl Queue {
    /// The client for `queue_url`. Endpoint, first that applies: `events.endpoint_url`, the
    /// SDK's `AWS_ENDPOINT_URL_SQS` / `AWS_ENDPOINT_URL`, the queue URL's scheme and host when
    /// that host is not AWS's (a local SQS-compatible server), AWS's endpoint for the region.
    pub async fn connect(
        config: &EventsConfig,
        queue_url: &str,
        fallback_region: Option<&str>,
    ) -> Queue {
        let mut loader = aws_config::defaults(BehaviorVersion::latest());
        if let Some(region) = config.region.as_deref().or(fallback_region) {
            loader = loader.region(Region::new(region.to_owned()));
        }
        let shared = loader.load().await;
        let mut builder = aws_sdk_sqs::config::Builder::from(&shared);
        let region = match shared.region() {
            Some(region) => region.to_string(),
            None => {
                builder = builder.region(Region::new("us-east-1"));
                "us-east-1".to_owned()
            }
        };
        let chosen = config
            .endpoint_url
            .clone()
            .or_else(|| shared.endpoint_url().map(str::to_owned))
            .or_else(|| endpoint_of_local_queue(queue_url));
        let endpoint = match chosen {
            Some(endpoint) => {
                builder = builder.endpoint_url(&endpoint);
                endpoint
            }
            None => format!("https://sqs.{region}.amazonaws.com"),
        };
        // A receive answers after its long poll at the latest; past that and `read_timeout`,
        // the queue is not answering, and a poller waiting on it forever would never say so.
        let read_timeout = config.wait_time + config.read_timeout;
        builder =
            builder.timeout_config(crate::bucket::s3::with_read_timeout(&shared, read_timeout));
        Queue {
            client: Client::from_conf(builder.build()),
            url: queue_url.to_owned(),
            endpoint,
        }
    }

    /// "queue URL at ENDPOINT", for error contexts and logs; credentials in either are hidden.
    pub fn describe(&self) -> String {
        format!(
            "queue {} at {}",
            crate::redact::url(&self.url),
            crate::redact::url(&self.endpoint)
        )
    }

    /// Check that the queue exists and these credentials may read its attributes.
    pub async fn check(&self) -> Result<()> {
        self.client
            .get_queue_attributes()
            .queue_url(&self.url)
            .attribute_names(QueueAttributeName::QueueArn)
            .send()
            .await
            .map_err(|e| {
                Error::storage(format!("reaching {}", self.describe()), describe_sdk(&e))
            })?;
        Ok(())
    }
}

/// A queue URL on a host that is not AWS's is served by that host: `http://127.0.0.1:4566/
/// 000000000000/uploads` is LocalStack's or moto's, and AWS's endpoint would not know it.
fn endpoint_of_local_queue(queue_url: &str) -> Option<String> {
    let url = url::Url::parse(queue_url).ok()?;
    let host = url.host_str()?;
    let aws = ["amazonaws.com", "amazonaws.com.cn", "api.aws"]
        .iter()
        .any(|domain| host == *domain || host.ends_with(&format!(".{domain}")));
    if aws {
        return None;
    }
    Some(match url.port() {
        Some(port) => format!("{}://{host}:{port}", url.scheme()),
        None => format!("{}://{host}", url.scheme()),
    })
}

/// One consumer loop; `events.pollers` of them run side by side.
pub struct Poller {
    pub queue: Queue,
    pub wait_time: Duration,
    pub visibility: Duration,
    pub effects: Arc<Effects>,
    pub metrics: Arc<Metrics>,
    /// Shared by every poller of the daemon (and `/readyz`).
    pub gate: Arc<Gate>,
}

/// What one batch came to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Batch {
    pub received: usize,
    pub deleted: usize,
    pub kept: usize,
}

impl Poller {
    /// Warn once when failed messages would come back forever instead of reaching a dead-letter
    /// queue: this consumer never deletes what it could not apply.
    pub async fn check_redrive_policy(&self) -> Result<()> {
        let out = self
            .queue
            .client
            .get_queue_attributes()
            .queue_url(&self.queue.url)
            .attribute_names(QueueAttributeName::RedrivePolicy)
            .send()
            .await
            .map_err(|e| {
                Error::storage(
                    format!("reading {}", self.queue.describe()),
                    describe_sdk(&e),
                )
            })?;
        let has_redrive = out
            .attributes()
            .is_some_and(|a| a.contains_key(&QueueAttributeName::RedrivePolicy));
        if !has_redrive {
            tracing::warn!(
                queue = %self.queue.describe(),
                "the queue has no redrive policy: messages that cannot be parsed or applied are \
                 never deleted and will be received again and again; give it a dead-letter queue"
            );
        }
        Ok(())
    }

    /// Long-poll one batch.
    pub async fn receive(&self) -> Result<Vec<Message>> {
        let out = self
            .queue
            .client
            .receive_message()
            .queue_url(&self.queue.url)
            .max_number_of_messages(MAX_BATCH)
            .wait_time_seconds(self.wait_time.as_secs().min(20) as i32)
            .visibility_timeout(secs(self.visibility))
            .send()
            .await
            .map_err(|e| {
                Error::storage(
                    format!("receiving from {}", self.queue.describe()),
                    describe_sdk(&e),
                )
            })?;
        Ok(out.messages.unwrap_or_default())
    }

    /// Receive and handle one batch, with no stop to listen to: what the tests drive.
    pub async fn poll_once(&self) -> Result<Batch> {
        let messages = self.receive().await?;
        Ok(self.handle(messages, crate::stop::never()).await)
    }

    /// Apply a batch, its messages at once, extending its visibility while it runs long (or
    /// waits for a dependency), then delete what took effect. A stop while waiting for a
    /// dependency ends the messages waiting: they come back once their visibility runs out.
    pub async fn handle(&self, messages: Vec<Message>, stop: watch::Receiver<bool>) -> Batch {
        if messages.is_empty() {
            return Batch::default();
        }
        let received_at = Instant::now();
        let mut receipts: Vec<(String, String)> = messages
            .iter()
            .enumerate()
            .filter_map(|(i, m)| m.receipt_handle().map(|r| (i.to_string(), r.to_owned())))
            .collect();
        // The messages of a batch at once: each event is its own transaction; the events of one
        // key still apply in the order received.
        let order = KeyOrder::default();
        let handled: Vec<_> = messages
            .iter()
            .map(|message| self.handle_message(message, &order, stop.clone()))
            .collect();
        let work = async {
            let handled = futures::future::join_all(handled).await;
            let done = handled
                .iter()
                .enumerate()
                .filter(|(_, h)| **h == Handled::Done);
            done.map(|(i, _)| i).collect::<Vec<usize>>()
        };
        tokio::pin!(work);
        let half = (self.visibility / 2).max(Duration::from_secs(1));
        let mut heartbeat = tokio::time::interval_at(tokio::time::Instant::now() + half, half);
        let done = loop {
            tokio::select! {
                done = &mut work => break done,
                _ = heartbeat.tick() => self.extend(&mut receipts, received_at.elapsed()).await,
            }
        };
        let deletable: Vec<DeleteMessageBatchRequestEntry> = done
            .iter()
            .filter_map(|i| {
                let receipt = messages[*i].receipt_handle()?;
                DeleteMessageBatchRequestEntry::builder()
                    .id(i.to_string())
                    .receipt_handle(receipt)
                    .build()
                    .ok()
            })
            .collect();
        let deleted = self.delete(deletable).await;
        Batch {
            received: messages.len(),
            deleted,
            kept: messages.len() - deleted,
        }
    }

    /// One message: `Done` when every effect is committed and it may be deleted.
    async fn handle_message(
        &self,
        message: &Message,
        order: &KeyOrder,
        mut stop: watch::Receiver<bool>,
    ) -> Handled {
        let id = message.message_id().unwrap_or("-");
        let parsed = parse::parse(message.body().unwrap_or_default());
        let events = match parsed {
            Err(e) => {
                self.metrics
                    .events_failed
                    .with_label_values(&[e.reason()])
                    .inc();
                tracing::warn!(message_id = id, reason = e.reason(), error = %e,
                    "cannot parse message; left to the queue's redrive policy");
                return Handled::Kept;
            }
            Ok(Parsed::Test) => {
                self.metrics
                    .events_received
                    .with_label_values(&["test"])
                    .inc();
                return Handled::Done;
            }
            Ok(Parsed::Events(events)) => events,
        };
        for event in &events {
            self.metrics
                .events_received
                .with_label_values(&[event.kind.label()])
                .inc();
            // Until the earlier events of this batch for the same key are through.
            let turn = order.turn(&event.key);
            let _turn = turn.lock().await;
            match self.apply(id, event, &mut stop).await {
                Handled::Done => {}
                other => return other,
            }
        }
        Handled::Done
    }

    /// One event, applied again after each dependency failure once the dependency answers.
    async fn apply(&self, id: &str, event: &S3Event, stop: &mut watch::Receiver<bool>) -> Handled {
        let attempt = || async {
            let effect = self.effects.apply(event, Utc::now()).await?;
            took_effect(&self.metrics, id, event, effect);
            Ok(())
        };
        let holding = "holding the batch and receiving no more";
        match apply_holding(
            &self.effects,
            &self.gate,
            &self.metrics,
            &event.key,
            holding,
            stop,
            attempt,
        )
        .await
        {
            Held::Applied => Handled::Done,
            Held::Stopped => Handled::Stopped,
            Held::Failed(error) => {
                tracing::error!(message_id = id, key = %event.key, error = %error,
                    "event could not be applied; the message stays in the queue");
                Handled::Kept
            }
        }
    }

    /// Push the batch's visibility out again; receipts SQS calls invalid are dropped.
    async fn extend(&self, receipts: &mut Vec<(String, String)>, elapsed: Duration) {
        let remaining = MAX_INVISIBLE.saturating_sub(elapsed);
        if receipts.is_empty() || remaining.is_zero() {
            return;
        }
        let timeout = secs(self.visibility.min(remaining));
        let entries: Vec<_> = receipts
            .iter()
            .filter_map(|(id, receipt)| {
                ChangeMessageVisibilityBatchRequestEntry::builder()
                    .id(id)
                    .receipt_handle(receipt)
                    .visibility_timeout(timeout)
                    .build()
                    .ok()
            })
            .collect();
        match self
            .queue
            .client
            .change_message_visibility_batch()
            .queue_url(&self.queue.url)
            .set_entries(Some(entries))
            .send()
            .await
        {
            Ok(out) => {
                for failed in out.failed() {
                    tracing::warn!(
                        entry = failed.id(),
                        code = failed.code(),
                        "cannot extend visibility; no more heartbeats for this message"
                    );
                    receipts.retain(|(id, _)| id != failed.id());
                }
            }
            Err(e) => tracing::warn!(error = %describe_sdk(&e), "cannot extend visibility"),
        }
    }

    /// Delete committed messages; returns how many SQS confirmed.
    async fn delete(&self, entries: Vec<DeleteMessageBatchRequestEntry>) -> usize {
        if entries.is_empty() {
            return 0;
        }
        let asked = entries.len();
        match self
            .queue
            .client
            .delete_message_batch()
            .queue_url(&self.queue.url)
            .set_entries(Some(entries))
            .send()
            .await
        {
            Ok(out) => {
                for failed in out.failed() {
                    self.metrics
                        .events_failed
                        .with_label_values(&["delete_failed"])
                        .inc();
                    tracing::warn!(
                        entry = failed.id(),
                        code = failed.code(),
                        "delete failed; the message will come back and change nothing twice"
                    );
                }
                out.successful().len()
            }
            Err(e) => {
                self.metrics
                    .events_failed
                    .with_label_values(&["delete_failed"])
                    .inc_by(asked as u64);
                tracing::warn!(error = %describe_sdk(&e),
                    "delete failed; the messages will come back and change nothing twice");
                0
            }
        }
    }

    /// Poll until `shutdown` turns true: a receive in progress is abandoned (its messages become
    /// visible again), a batch in progress is finished and deleted, a batch waiting for a
    /// dependency is left where it stands. No receive starts while the gate is closed.
    pub async fn run(&self, mut shutdown: watch::Receiver<bool>) {
        let mut backoff = Backoff::new(Duration::from_millis(500), Duration::from_secs(60));
        // Held from a failed receive to the next one that succeeds: `/readyz` tells meanwhile.
        let mut unreached = None;
        while !*shutdown.borrow() {
            tokio::select! {
                _ = shutdown.changed() => break,
                _ = self.gate.opened() => {}
            }
            let received = tokio::select! {
                _ = shutdown.changed() => break,
                received = self.receive() => received,
            };
            match received {
                Ok(messages) => {
                    backoff.reset();
                    unreached = None;
                    self.handle(messages, shutdown.clone()).await;
                }
                Err(e) => {
                    unreached.get_or_insert_with(|| self.gate.queue_unreached());
                    let delay = backoff.next_delay();
                    tracing::error!(error = %e, retry_in_ms = delay.as_millis() as u64,
                        "receive failed");
                    tokio::select! {
                        _ = shutdown.changed() => break,
                        _ = tokio::time::sleep(delay) => {}
                    }
                }
            }
        }
    }
}

fn secs(d: Duration) -> i32 {
    i32::try_from(d.as_secs()).unwrap_or(i32::MAX)
}

#[cfg(test)]
mod tests {
    use super::endpoint_of_local_queue;

    #[test]
    fn a_queue_url_off_aws_is_its_own_endpoint() {
        for (queue_url, endpoint) in [
            (
                "http://127.0.0.1:4566/000000000000/uploads",
                Some("http://127.0.0.1:4566"),
            ),
            (
                "https://sqs.internal.example/1/q",
                Some("https://sqs.internal.example"),
            ),
            (
                "https://sqs.eu-west-1.amazonaws.com/123456789012/uploads",
                None,
            ),
            (
                "https://sqs.cn-north-1.amazonaws.com.cn/123456789012/q",
                None,
            ),
            ("https://sqs.us-east-1.api.aws/123456789012/q", None),
            // A look-alike is not AWS.
            (
                "https://sqs.amazonaws.com.evil.example/1/q",
                Some("https://sqs.amazonaws.com.evil.example"),
            ),
            ("not a url", None),
        ] {
            assert_eq!(
                endpoint_of_local_queue(queue_url).as_deref(),
                endpoint,
                "{queue_url}"
            );
        }
    }
}
