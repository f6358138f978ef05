//! The event path: 20 000 S3 notifications drained from SQS by the daemon's poller (parse, lock
//! the key's event state and the record, HEAD, mark missing, audit, commit, batch-delete), beside
//! a bare drain of the same messages from the same queue (receive 10, batch-delete), one loop
//! each as `events.pollers = 1` runs. Run through `scripts/bench` (it needs MOTO_ENDPOINT and
//! Postgres at 127.0.0.1:5432).
//!
//! The events are ObjectRemoved for docs `uploaded` whose objects are not there: each one's effect
//! is a HEAD of the object (gone), a status change and its audit row. The bucket is on garage,
//! as in `bench/garage.rs`, and only the queue on moto: moto serves every request from one
//! Python thread, and HEADs sent to it would be measured as moto's work, not the daemon's.
//!
//! The queue is filled and drained [`CHUNK`] messages at a time, each drain timed: moto's
//! SendMessage reads the queue's attributes, which walk every message in it, so filling one
//! queue with 20 000 messages would take hours (quadratic), and so would draining it (its
//! DeleteMessage walks them too). Both drains see the same queue sizes.

mod common;

use aws_sdk_sqs::types::SendMessageBatchRequestEntry;
use common::show;
use futures::stream::{self, StreamExt, TryStreamExt};
use sqlx::postgres::PgPoolOptions;
use std::sync::Arc;
use std::time::{Duration, Instant};
use upload_reconciler::catalog::Catalog;
use upload_reconciler::catalog::sql::SqlCatalog;
use upload_reconciler::config::Config;
use upload_reconciler::events::effect::Effects;
use upload_reconciler::events::sqs::{Poller, Queue};
use upload_reconciler::metrics::Metrics;

const DB: &str = "reconcile_bench_events";
const EVENTS: u64 = 20_000;
/// Messages in the queue at a time.
const CHUNK: u64 = 200;

fn message(bucket: &str, i: u64) -> String {
    serde_json::json!({"Records": [{
        "eventVersion": "2.1", "eventSource": "aws:s3", "awsRegion": "us-east-1",
        "eventTime": chrono::Utc::now().to_rfc3339(), "eventName": "ObjectRemoved:Delete",
        "s3": {"s3SchemaVersion": "1.0", "bucket": {"name": bucket},
               "object": {"key": format!("docs/{i:09}"), "sequencer": format!("{i:016X}")}}
    }]})
    .to_string()
}

/// Send the notifications of docs `docs`, 10 a request, 8 requests at a time.
async fn fill(queue: &Queue, bucket: &str, docs: std::ops::Range<u64>) {
    stream::iter(docs.collect::<Vec<_>>().chunks(10).map(<[u64]>::to_vec))
        .map(|chunk| async move {
            let entries = chunk
                .iter()
                .map(|i| {
                    SendMessageBatchRequestEntry::builder()
                        .id(i.to_string())
                        .message_body(message(bucket, *i))
                        .build()
                        .expect("batch entry")
                })
                .collect();
            queue
                .client
                .send_message_batch()
                .queue_url(&queue.url)
                .set_entries(Some(entries))
                .send()
                .await
                .map(|_| ())
        })
        .buffer_unordered(8)
        .try_collect::<()>()
        .await
        .expect("fill the queue");
}

/// Receive 10, delete them in one batch, until a receive comes back empty: what draining costs
/// without doing anything with the messages.
async fn bare_drain(queue: &Queue) -> u64 {
    let mut drained = 0;
    loop {
        let out = queue
            .client
            .receive_message()
            .queue_url(&queue.url)
            .max_number_of_messages(10)
            .wait_time_seconds(0)
            .send()
            .await
            .expect("receive");
        let messages = out.messages();
        if messages.is_empty() {
            return drained;
        }
        let entries = messages
            .iter()
            .enumerate()
            .map(|(n, m)| {
                aws_sdk_sqs::types::DeleteMessageBatchRequestEntry::builder()
                    .id(n.to_string())
                    .set_receipt_handle(m.receipt_handle().map(str::to_owned))
                    .build()
                    .expect("delete entry")
            })
            .collect();
        queue
            .client
            .delete_message_batch()
            .queue_url(&queue.url)
            .set_entries(Some(entries))
            .send()
            .await
            .expect("delete batch");
        drained += messages.len() as u64;
    }
}

async fn missing(pool: &sqlx::PgPool) -> i64 {
    sqlx::query_scalar("SELECT count(*) FROM docs WHERE status = 'missing'")
        .fetch_one(pool)
        .await
        .expect("count")
}

#[tokio::main]
async fn main() {
    let moto = std::env::var("MOTO_ENDPOINT").expect("MOTO_ENDPOINT (run scripts/bench)");
    let garage = std::env::var("BENCH_S3_ENDPOINT").expect("BENCH_S3_ENDPOINT (run scripts/bench)");
    let rounds: usize = std::env::var("BENCH_ROUNDS")
        .ok()
        .and_then(|r| r.parse().ok())
        .unwrap_or(3);
    let bucket = format!("bench-events-{}", uuid::Uuid::new_v4().simple());
    let config = Config::from_toml(&format!(
        "[database]\nurl = \"{}\"\n\
         [storage]\nbucket = \"{bucket}\"\nprefix = \"docs/\"\nregion = \"garage\"\n\
         endpoint_url = \"{garage}\"\nforce_path_style = true\n\
         [events]\nendpoint_url = \"{moto}\"\nregion = \"us-east-1\"\n",
        common::database_url(DB)
    ))
    .expect("bench config");
    let s3 = upload_reconciler::bucket::s3::client(&config.storage).await;
    s3.create_bucket()
        .bucket(&bucket)
        .send()
        .await
        .expect("create bucket on garage");
    let queue = Queue::connect(&config.events, &format!("{moto}/000000000000/q"), None).await;
    let url = queue
        .client
        .create_queue()
        .queue_name(format!("bench-{}", uuid::Uuid::new_v4().simple()))
        .send()
        .await
        .expect("create queue on moto")
        .queue_url
        .expect("queue url");
    let queue = Queue { url, ..queue };

    println!(
        "\nevent path: {EVENTS} ObjectRemoved events on moto, {CHUNK} in the queue at a time, \
         {rounds} rounds"
    );
    let (mut daemon, mut bare) = (vec![], vec![]);
    for _ in 0..rounds {
        common::seed(DB, EVENTS, "'uploaded'").await;
        let catalog = SqlCatalog::connect(
            &config.database,
            upload_reconciler::adapters::scope(&config),
        )
        .await
        .expect("connect");
        catalog.migrate().await.expect("migrate");
        let bucket = upload_reconciler::adapters::connect_bucket(&config)
            .await
            .expect("bucket");
        let poller = Poller {
            queue: queue.clone(),
            wait_time: Duration::ZERO,
            visibility: config.events.visibility_timeout,
            effects: Arc::new(Effects {
                catalog: Arc::new(catalog),
                bucket,
                prefix: "docs/".into(),
                rules: config.rules(),
            }),
            metrics: Metrics::new(),
            gate: Default::default(),
        };

        let (mut daemon_s, mut bare_s, mut deleted, mut drained) = (0.0, 0.0, 0, 0);
        for start in (0..EVENTS).step_by(CHUNK as usize) {
            fill(&queue, &config.storage.bucket, start..start + CHUNK).await;
            let started = Instant::now();
            loop {
                let batch = poller.poll_once().await.expect("poll");
                if batch.received == 0 {
                    break;
                }
                deleted += batch.deleted as u64;
            }
            daemon_s += started.elapsed().as_secs_f64();

            fill(&queue, &config.storage.bucket, start..start + CHUNK).await;
            let started = Instant::now();
            drained += bare_drain(&queue).await;
            bare_s += started.elapsed().as_secs_f64();
        }
        assert_eq!(deleted, EVENTS, "every message took effect");
        assert_eq!(drained, EVENTS, "every message drained");
        daemon.push(daemon_s);
        bare.push(bare_s);
        let pool = PgPoolOptions::new()
            .max_connections(1)
            .connect(&common::database_url(DB))
            .await
            .expect("connect");
        assert_eq!(
            missing(&pool).await,
            EVENTS as i64,
            "every event marked its doc"
        );
        pool.close().await;
    }
    let daemon_s = show("daemon's poller: drain with effects", &daemon, "s");
    let bare_s = show("bare drain: receive 10 + batch-delete", &bare, "s");
    println!(
        "  drain ratio (daemon/bare) {:.2}   events/s with effects {:.0}",
        daemon_s / bare_s,
        EVENTS as f64 / daemon_s
    );
}
