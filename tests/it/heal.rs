//! Healing, not only flagging (issue 21): a `missing` record whose file came back is adopted
//! again, and with `missing_action = "restore"` a delete in a versioned bucket is undone by
//! removing its delete marker, within the safety rules. Through the binary, on Postgres and moto.
//!
//! moto 5.2.5 against AWS's documentation (checked for these tests):
//! - GetBucketVersioning on a bucket never versioned answers no `Status`, as AWS does.
//! - DeleteObject in a versioned bucket answers `x-amz-delete-marker: true` and the marker's
//!   version id, and ListObjectVersions lists the marker under `DeleteMarker` with
//!   `IsLatest = true` and the previous version under `Version`, as AWS documents.
//! - Deleting the marker by its VersionId makes the previous version current (HEAD answers
//!   with its ETag), as AWS documents ("Working with delete markers").
//! - GetBucketVersioning: moto answers with a `GetBucketVersioningResponse` root element where
//!   AWS documents `VersioningConfiguration`, and aws-sdk-s3 refuses the answer ("encountered
//!   invalid XML root: expected VersioningConfiguration"). The S3 adapter reads the status of
//!   such a successful answer itself (`versioning_in` in src/bucket/s3.rs).
//! - moto's LastModified in ListObjectVersions is whole seconds (`.000Z`); AWS gives
//!   milliseconds. A marker set in the same second as its version sorts by `IsLatest` first.
//! - moto sends no S3 event for removing a delete marker; AWS sends `ObjectRemoved:Delete`
//!   (with the marker's version id). The HEAD before every mark keeps either harmless.

use crate::daemon::{signal, wait_exit};
use crate::helpers::*;
use serde_json::Value;
use std::time::Duration;

/// A rare schedule: in the daemon tests only events act.
const NEVER: &str = "0 0 0 1 1 *";

impl TestBucket {
    async fn enable_versioning(&self) {
        use aws_sdk_s3::types::{BucketVersioningStatus, VersioningConfiguration};
        self.client
            .put_bucket_versioning()
            .bucket(&self.name)
            .versioning_configuration(
                VersioningConfiguration::builder()
                    .status(BucketVersioningStatus::Enabled)
                    .build(),
            )
            .send()
            .await
            .expect("enable versioning");
    }

    /// Delete one version (a delete marker: the version beneath is current again).
    async fn remove_version(&self, key: &str, version_id: &str) {
        self.client
            .delete_object()
            .bucket(&self.name)
            .key(key)
            .version_id(version_id)
            .send()
            .await
            .unwrap_or_else(|e| panic!("remove version {version_id} of {key:?}: {e:?}"));
    }

    /// The key's delete markers and versions, newest first, as (is a marker, version id, etag).
    async fn history(&self, key: &str) -> Vec<(bool, String, Option<String>)> {
        let out = self
            .client
            .list_object_versions()
            .bucket(&self.name)
            .prefix(key)
            .send()
            .await
            .expect("list object versions");
        let mut all: Vec<_> = out
            .delete_markers()
            .iter()
            .filter(|m| m.key() == Some(key))
            .map(|m| {
                (
                    m.is_latest() == Some(true),
                    m.last_modified().map(|t| t.secs()),
                    (true, m.version_id().unwrap_or("").to_owned(), None),
                )
            })
            .chain(
                out.versions()
                    .iter()
                    .filter(|v| v.key() == Some(key))
                    .map(|v| {
                        (
                            v.is_latest() == Some(true),
                            v.last_modified().map(|t| t.secs()),
                            (
                                false,
                                v.version_id().unwrap_or("").to_owned(),
                                v.e_tag().map(str::to_owned),
                            ),
                        )
                    }),
            )
            .collect();
        all.sort_by(|a, b| b.0.cmp(&a.0).then(b.1.cmp(&a.1)));
        all.into_iter().map(|(_, _, entry)| entry).collect()
    }
}

/// A finding of a JSON report by id.
fn finding<'a>(report: &'a Value, id: &str) -> &'a Value {
    report["findings"]
        .as_array()
        .and_then(|all| all.iter().find(|f| f["id"] == id))
        .unwrap_or_else(|| panic!("no finding for {id}: {report}"))
}

/// The audit rows whose finding or action is `word`, as `id finding action old -> new`.
async fn trail(db: &TestDb, word: &str) -> Vec<String> {
    let or_none = |s: Option<String>| s.unwrap_or_else(|| "-".into());
    db.audit()
        .await
        .into_iter()
        .filter(|(_, finding, action, _, _)| finding == word || action == word)
        .map(|(id, finding, action, old, new)| {
            format!(
                "{id} {finding} {action} {} -> {}",
                or_none(old),
                or_none(new)
            )
        })
        .collect()
}

/// Apply a sweep that must report `doc` and leave it deleted: marked missing, its delete marker
/// still on top. Returns the finding's detail (JSON-quoted).
async fn marked_not_restored(db: &TestDb, bucket: &TestBucket, reconcile: &Reconcile) -> String {
    let apply = reconcile.run(&["--format", "json"]).await;
    assert_eq!(apply.code, 0, "{}", apply.stderr);
    assert_eq!(
        apply.findings(),
        triples(&[("missing_object", "doc", "mark_missing")])
    );
    assert!(!bucket.exists("doc").await, "restored");
    assert!(bucket.history("doc").await[0].0, "the marker is not on top");
    assert_eq!(db.status("doc").await.as_deref(), Some("missing"));
    finding(&apply.json(), "doc")["detail"].to_string()
}

/// A versioned bucket holding `id`, adopted as [`adopted`] does.
async fn versioned_with_adopted(id: &str, body: &str) -> (TestDb, TestBucket) {
    let db = TestDb::with_docs(None).await;
    let bucket = TestBucket::new().await;
    bucket.enable_versioning().await;
    adopted(&db, &bucket, id, body).await;
    (db, bucket)
}

/// Adopt `id` through a sweep, so that the reconciler notes its object: a pending record whose
/// upload landed (`lost_notification`).
async fn adopted(db: &TestDb, bucket: &TestBucket, id: &str, body: &str) {
    db.doc(id, "pending", MINUTE).await;
    bucket.put(id, body).await;
    let run = Reconcile::new(db, bucket).run(&["--format", "json"]).await;
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert_eq!(db.status(id).await.as_deref(), Some("processed"));
}

#[tokio::test]
async fn a_missing_record_whose_file_was_put_back_is_adopted_again() {
    let db = TestDb::with_docs(None).await;
    let bucket = TestBucket::new().await;
    db.doc("back", "missing", HOUR).await;
    db.doc("still-gone", "missing", HOUR).await;
    bucket.put("back", "restored from a backup").await;
    let reconcile = Reconcile::new(&db, &bucket);

    let audit = reconcile.run(&["--dry-run", "--format", "json"]).await;
    assert_eq!(audit.code, 0, "{}", audit.stderr);
    assert_eq!(
        audit.findings(),
        triples(&[("object_returned", "back", "adopt")])
    );
    let report = audit.json();
    assert_eq!(report["counts"]["object_returned"], 1, "{report}");
    assert_eq!(db.status("back").await.as_deref(), Some("missing"));

    let apply = reconcile.run(&["--format", "json"]).await;
    assert_eq!(apply.code, 0, "{}", apply.stderr);
    // No hook configured: an adopted upload is done at once.
    assert_eq!(db.status("back").await.as_deref(), Some("processed"));
    assert_eq!(db.status("still-gone").await.as_deref(), Some("missing"));
    assert_eq!(
        trail(&db, "object_returned").await,
        ["back object_returned adopt missing -> processed"]
    );
    assert_eq!(db.audit().await.len(), 1, "nothing else was done");
    let again = reconcile.run(&["--format", "json"]).await;
    assert_eq!(again.findings(), triples(&[]));
}

#[tokio::test]
async fn a_file_put_back_is_processed_again_at_once_only_when_it_is_the_one_noted() {
    let db = TestDb::with_docs(None).await;
    let bucket = TestBucket::new().await;
    let queue = TestQueue::with_dead_letters(5).await;
    bucket.notify(&queue).await;
    let hook = HookServer::start(Duration::ZERO, |_| Reply::Status(200)).await;
    for id in ["same", "other"] {
        db.doc(id, "pending", MINUTE).await;
    }
    let reconcile = Reconcile::new(&db, &bucket)
        .set("sweep.schedule", NEVER)
        .set("events.queue_url", &queue.url)
        .set("events.wait_time", "1s")
        .set("processing.hook", "webhook")
        .set("processing.url", &hook.url);
    let logs = tempfile::tempdir().expect("temp dir");
    let log = logs.path().join("daemon.log");
    let mut daemon = reconcile.spawn(&["daemon", "-v"], &log);
    daemon_address(&log).await;
    let statuses = |want: &'static str| {
        let db = &db;
        move || async move {
            db.status("same").await.as_deref() == Some(want)
                && db.status("other").await.as_deref() == Some(want)
        }
    };
    for id in ["same", "other"] {
        bucket.presigned_put(id, "the first upload").await;
    }
    eventually(
        Duration::from_secs(30),
        "both docs processed",
        statuses("processed"),
    )
    .await;
    for id in ["same", "other"] {
        bucket.delete(id).await;
    }
    eventually(
        Duration::from_secs(30),
        "both docs missing",
        statuses("missing"),
    )
    .await;
    // One put back as it was, one with other bytes under its key.
    bucket.presigned_put("same", "the first upload").await;
    bucket.presigned_put("other", "someone else's file").await;
    eventually(
        Duration::from_secs(30),
        "both docs processed again",
        statuses("processed"),
    )
    .await;
    signal(&daemon, "TERM");
    assert_eq!(wait_exit(&mut daemon, Duration::from_secs(20)).await, 0);
    // The noted bytes were processed already; the others are a new file, processed anew.
    assert_eq!(hook.calls_for("same"), 1);
    assert_eq!(hook.calls_for("other"), 2);
    assert_eq!(
        trail(&db, "object_returned").await,
        [
            "other object_returned adopt missing -> uploaded",
            "same object_returned adopt missing -> processed"
        ]
    );
}

#[tokio::test]
async fn a_doc_deleted_in_a_versioned_bucket_is_restored_and_a_dry_run_only_reports_it() {
    let (db, bucket) = versioned_with_adopted("noted", "the user's file").await;
    let (etag, _) = bucket.head("noted").await;
    // A doc the app itself marked processed: nothing noted, the window alone decides.
    db.doc("unnoted", "processed", HOUR).await;
    bucket.put("unnoted", "another file").await;
    for id in ["noted", "unnoted"] {
        bucket.delete(id).await;
        assert!(!bucket.exists(id).await);
    }
    let reconcile = Reconcile::new(&db, &bucket).set("sweep.missing_action", "restore");

    let audit = reconcile.run(&["--dry-run", "--format", "json"]).await;
    assert_eq!(audit.code, 0, "{}", audit.stderr);
    assert_eq!(
        audit.findings(),
        triples(&[
            ("missing_object", "noted", "restore"),
            ("missing_object", "unnoted", "restore")
        ])
    );
    let report = audit.json();
    let detail = finding(&report, "noted")["detail"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    let version = bucket.history("noted").await[1].1.clone();
    assert!(
        detail.contains(&format!(
            "delete marker over version {version} (15 bytes, etag {etag})"
        )),
        "{detail}"
    );
    // The dry run wrote nothing anywhere: the markers are still there.
    for id in ["noted", "unnoted"] {
        assert!(!bucket.exists(id).await, "{id} restored by a dry run");
        assert_eq!(db.status(id).await.as_deref(), Some("processed"));
    }

    // Restores count toward the breaker: over it, the apply stops before its first change.
    let held = Reconcile::new(&db, &bucket)
        .set("sweep.missing_action", "restore")
        .set("sweep.max_action_ratio", "0.1")
        .set("sweep.max_action_floor", "1")
        .run(&["--format", "json"])
        .await;
    assert_eq!(held.code, 4, "{}{}", held.stdout, held.stderr);
    for id in ["noted", "unnoted"] {
        assert!(!bucket.exists(id).await, "{id} restored past the breaker");
    }

    let apply = reconcile.run(&["--format", "json"]).await;
    assert_eq!(apply.code, 0, "{}", apply.stderr);
    assert_eq!(finding(&apply.json(), "noted")["applied"], true);
    assert_eq!(bucket.head("noted").await.0, etag);
    assert_eq!(bucket.get("noted").await, b"the user's file");
    assert_eq!(bucket.get("unnoted").await, b"another file");
    for id in ["noted", "unnoted"] {
        assert_eq!(db.status(id).await.as_deref(), Some("processed"));
        // The marker is gone; the version is current again.
        assert_eq!(bucket.history(id).await.len(), 1, "{id}");
    }
    // The record keeps its status: its object is back.
    assert_eq!(
        trail(&db, "restore").await,
        [
            "noted missing_object restore processed -> -",
            "unnoted missing_object restore processed -> -"
        ]
    );
    let again = reconcile.run(&["--format", "json"]).await;
    assert_eq!(again.findings(), triples(&[]));
}

#[tokio::test]
async fn a_version_whose_etag_differs_from_the_noted_one_is_reported_never_restored() {
    let (db, bucket) = versioned_with_adopted("doc", "the user's file").await;
    // Overwritten behind the reconciler's back, then deleted: the version under the marker is
    // not the file the doc was adopted with.
    bucket.put("doc", "another file").await;
    bucket.delete("doc").await;
    let reconcile = Reconcile::new(&db, &bucket).set("sweep.missing_action", "restore");

    let detail = marked_not_restored(&db, &bucket, &reconcile).await;
    assert!(
        detail.contains("it is not the object noted for the doc (15 bytes")
            && detail.ends_with("not restored\""),
        "{detail}"
    );
}

#[tokio::test]
async fn a_delete_marker_older_than_the_restore_window_is_reported_never_restored() {
    let (db, bucket) = versioned_with_adopted("doc", "the user's file").await;
    bucket.delete("doc").await;
    // Ages the marker past a one-second window; nothing is timed.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let reconcile = Reconcile::new(&db, &bucket)
        .set("sweep.missing_action", "restore")
        .set("sweep.restore_window", "1s");

    let detail = marked_not_restored(&db, &bucket, &reconcile).await;
    assert!(
        detail.contains("the marker is older than restore_window (1s): not restored"),
        "{detail}"
    );
}

#[tokio::test]
async fn an_unversioned_bucket_and_a_folder_have_nothing_to_restore() {
    // On moto a bucket never versioned; with scripts/test-garage, garage, which has no
    // versioning at all.
    let db = TestDb::with_docs(None).await;
    let bucket = TestBucket::new().await;
    db.doc("doc", "processed", HOUR).await;
    bucket.put("doc", "x").await;
    bucket.delete("doc").await;
    let folder = TestFolder::new();
    let folder_db = TestDb::with_docs(None).await;
    folder_db.doc("doc", "processed", HOUR).await;
    for (run, db) in [
        (
            Reconcile::new(&db, &bucket)
                .set("sweep.missing_action", "restore")
                .run(&["--format", "json"])
                .await,
            &db,
        ),
        (
            Reconcile::on_folder(&folder_db, &folder)
                .set("sweep.missing_action", "restore")
                .run(&["--format", "json"])
                .await,
            &folder_db,
        ),
    ] {
        assert_eq!(run.code, 0, "{}", run.stderr);
        assert_eq!(
            run.findings(),
            triples(&[("missing_object", "doc", "mark_missing")])
        );
        assert_eq!(
            finding(&run.json(), "doc")["detail"],
            "processed, no object; the bucket keeps no versions: nothing to restore"
        );
        assert_eq!(db.status("doc").await.as_deref(), Some("missing"));
    }
}

/// A delete-marker event as AWS's user guide shapes it ("Event message structure"): a delete
/// carries the object's key, version id and sequencer, no size or ETag.
fn marker_message(
    event: &str,
    bucket: &str,
    key: &str,
    version_id: &str,
    sequencer: &str,
) -> String {
    serde_json::json!({"Records": [{
        "eventVersion": "2.1", "eventSource": "aws:s3", "awsRegion": "us-east-1",
        "eventTime": chrono::Utc::now().to_rfc3339(), "eventName": event,
        "userIdentity": {"principalId": "AWS:AIDAEXAMPLE"},
        "requestParameters": {"sourceIPAddress": "192.0.2.1"},
        "responseElements": {"x-amz-request-id": "C3D13FE58DE4C810", "x-amz-id-2": "FMyUVURIY8/IgAtTv8xRjskZQpcIZ9KG4V5Wp6S7S/JRWeUWerMUE5JgHvANOjpD"},
        "s3": {"s3SchemaVersion": "1.0", "configurationId": "deletes",
               "bucket": {"name": bucket, "ownerIdentity": {"principalId": "A3NL1KOZZKExample"},
                          "arn": format!("arn:aws:s3:::{bucket}")},
               "object": {"key": key, "versionId": version_id, "sequencer": sequencer}}
    }]})
    .to_string()
}

#[tokio::test]
async fn delete_marker_events_mark_a_record_missing_only_when_a_head_confirms_it() {
    let db = TestDb::with_docs(None).await;
    let bucket = TestBucket::new().await;
    bucket.enable_versioning().await;
    // Crafted messages only: no notifications from moto.
    let queue = TestQueue::with_dead_letters(5).await;
    for id in ["gone", "expired", "undeleted", "rewritten"] {
        db.doc(id, "processed", HOUR).await;
        bucket.put(id, "a file").await;
        bucket.delete(id).await;
    }
    // Undone since: the marker removed again, or a newer version put over it.
    let marker = bucket.history("undeleted").await[0].1.clone();
    bucket.remove_version("undeleted", &marker).await;
    bucket.put("rewritten", "a newer file").await;
    let events = [
        ("ObjectRemoved:DeleteMarkerCreated", "gone"),
        ("LifecycleExpiration:DeleteMarkerCreated", "expired"),
        ("ObjectRemoved:DeleteMarkerCreated", "undeleted"),
        ("LifecycleExpiration:DeleteMarkerCreated", "rewritten"),
    ];
    for (event, id) in events {
        let history = bucket.history(id).await;
        let marker = history.iter().find(|v| v.0).map(|v| v.1.clone());
        let body = marker_message(
            event,
            &bucket.name,
            id,
            &marker.unwrap_or_default(),
            "0055AED6DCD90281E5",
        );
        queue.send(&body).await;
    }
    let reconcile = Reconcile::new(&db, &bucket)
        .set("sweep.schedule", NEVER)
        .set("events.queue_url", &queue.url)
        .set("events.wait_time", "1s");
    let logs = tempfile::tempdir().expect("temp dir");
    let log = logs.path().join("daemon.log");
    let mut daemon = reconcile.spawn(&["daemon", "-v"], &log);
    daemon_address(&log).await;
    eventually(Duration::from_secs(30), "every event handled", || async {
        queue.depth().await == 0
    })
    .await;
    signal(&daemon, "TERM");
    assert_eq!(wait_exit(&mut daemon, Duration::from_secs(20)).await, 0);
    assert_eq!(db.status("gone").await.as_deref(), Some("missing"));
    assert_eq!(db.status("expired").await.as_deref(), Some("missing"));
    assert_eq!(db.status("undeleted").await.as_deref(), Some("processed"));
    assert_eq!(db.status("rewritten").await.as_deref(), Some("processed"));
    assert_eq!(queue.dead_letter_depth().await, 0);
}

#[tokio::test]
async fn explain_lists_a_keys_versions_and_a_delete_says_what_it_leaves_in_a_versioned_bucket() {
    let db = TestDb::with_docs(None).await;
    let bucket = TestBucket::new().await;
    bucket.enable_versioning().await;
    db.doc("doc", "processed", HOUR).await;
    bucket.put("doc", "first").await;
    bucket.put("doc", "second").await;
    bucket.delete("doc").await;
    bucket.put("orphan", "nobody's").await;
    let reconcile = Reconcile::new(&db, &bucket)
        .set("sweep.orphan_grace", "0s")
        .set("sweep.orphan_action", "delete")
        .set("sweep.allow_bucket_root", "true");

    let explained = reconcile.run(&["explain", "doc", "--format", "json"]).await;
    assert_eq!(explained.code, 0, "{}", explained.stderr);
    let e = explained.json();
    let versions = e["versions"]
        .as_array()
        .expect("a versioned bucket's history");
    let shape: Vec<(bool, bool, i64)> = versions
        .iter()
        .map(|v| {
            (
                v["is_delete_marker"].as_bool().unwrap_or_default(),
                v["is_latest"].as_bool().unwrap_or_default(),
                v["size"].as_i64().unwrap_or_default(),
            )
        })
        .collect();
    assert_eq!(
        shape,
        [(true, true, 0), (false, false, 6), (false, false, 5)]
    );
    assert_eq!(e["decision"]["finding"], "missing_object");
    let table = reconcile
        .run(&["explain", "doc", "--format", "table"])
        .await;
    assert!(table.stdout.contains("versions 3 kept"), "{}", table.stdout);
    assert!(table.stdout.contains("(current)"), "{}", table.stdout);

    let apply = reconcile.run(&["--format", "json"]).await;
    assert_eq!(apply.code, 0, "{}", apply.stderr);
    let detail = finding(&apply.json(), "orphan")["detail"].to_string();
    assert!(
        detail.contains(
            "this leaves a delete marker, and the bytes stay billed as a noncurrent version"
        ),
        "{detail}"
    );
    // As said: a marker on top, the bytes beneath.
    let history = bucket.history("orphan").await;
    assert_eq!(
        history.iter().map(|v| v.0).collect::<Vec<_>>(),
        [true, false]
    );
}

/// The catalog of `db` for `bucket`'s deployment, migrated, as the binary would open it.
async fn catalog_of(
    db: &TestDb,
    bucket: &TestBucket,
) -> upload_reconciler::catalog::sql::SqlCatalog {
    use upload_reconciler::catalog::Catalog;
    let config = upload_reconciler::config::Config::from_toml(&format!(
        "[database]\nurl = \"{}\"\n[storage]\nbucket = \"{}\"",
        db.url(),
        bucket.name
    ))
    .expect("valid config");
    let catalog = upload_reconciler::catalog::sql::SqlCatalog::connect(
        &config.database,
        upload_reconciler::adapters::scope(&config),
    )
    .await
    .expect("connect");
    catalog.migrate().await.expect("migrate");
    catalog
}

#[tokio::test]
async fn a_restore_whose_process_ended_before_its_audit_is_audited_by_the_next_sweep() {
    use upload_reconciler::catalog::{AuditEntry, BucketChange, Catalog, Intent};
    use upload_reconciler::model::ObjectVersion;
    let db = TestDb::with_docs(None).await;
    let bucket = TestBucket::new().await;
    bucket.enable_versioning().await;
    // `restored`: the marker was removed, then the process ended before its audit committed.
    // `untouched`: it ended before removing the marker.
    for id in ["restored", "untouched"] {
        db.doc(id, "processed", HOUR).await;
        bucket.put(id, "the user's file").await;
        bucket.delete(id).await;
    }
    let catalog = catalog_of(&db, &bucket).await;
    for id in ["restored", "untouched"] {
        let history = bucket.history(id).await;
        let entry =
            |(is_marker, version_id, etag): &(bool, String, Option<String>)| ObjectVersion {
                key: id.to_owned(),
                version_id: version_id.clone(),
                is_delete_marker: *is_marker,
                is_latest: *is_marker,
                size: 15,
                etag: etag.clone(),
                last_modified: chrono::Utc::now(),
            };
        let intent = Intent {
            id: uuid::Uuid::new_v4().to_string(),
            change: BucketChange::Restore {
                marker: entry(&history[0]),
                version: entry(&history[1]),
            },
            entry: AuditEntry {
                at: chrono::Utc::now(),
                sweep_id: None,
                finding: "missing_object".into(),
                action: "restore".into(),
                doc_id: id.to_owned(),
                key: id.to_owned(),
                old_status: Some("processed".into()),
                new_status: None,
                detail: format!("processed, deleted; removed delete marker {}", history[0].1),
            },
        };
        catalog.note_intent(&intent).await.expect("note the intent");
    }
    let marker = bucket.history("restored").await[0].1.clone();
    bucket.remove_version("restored", &marker).await;

    let run = Reconcile::new(&db, &bucket)
        .run(&["--format", "json"])
        .await;
    assert_eq!(run.code, 0, "{}", run.stderr);
    // The restore that happened is audited now; the one that did not is forgotten, and its key
    // judged afresh (missing_action is "mark" here).
    assert_eq!(
        trail(&db, "missing_object").await,
        [
            "restored missing_object restore processed -> -",
            "untouched missing_object mark_missing processed -> missing"
        ]
    );
    let detail: String =
        sqlx::query_scalar("SELECT detail FROM reconciler.audit_log WHERE doc_id = 'restored'")
            .fetch_one(&db.pool)
            .await
            .expect("the restore's audit row");
    assert!(detail.contains("recorded by a later sweep"), "{detail}");
    assert!(catalog.intents().await.expect("intents").is_empty());
    assert_eq!(db.status("restored").await.as_deref(), Some("processed"));
}

/// No database lock is held across a bucket change (issue 18, item 5, on Postgres): while the
/// request that removes a delete marker hangs at the bucket, the app updates the doc's row with
/// a lock timeout of 100 ms and gets it at once; once the bucket answers, the restore completes
/// and is audited.
#[tokio::test]
async fn the_apps_row_is_never_locked_while_a_restore_waits_on_the_bucket() {
    let (db, bucket) = versioned_with_adopted("doc", "the user's file").await;
    bucket.delete("doc").await;
    let proxy = FaultProxy::http(&bucket.endpoint).await;
    // Only the removal of the marker (DeleteObject with its versionId) hangs.
    proxy.set(Rule {
        fault: Fault::Stall,
        only: Some("versionId=".into()),
        after: 0,
    });
    let mut reconcile = Reconcile::new(&db, &bucket)
        .set("sweep.missing_action", "restore")
        .set("storage.read_timeout", "60s");
    reconcile.endpoint = proxy.endpoint.clone();
    let logs = tempfile::tempdir().expect("temp dir");
    let mut sweep = reconcile.spawn(&["--format", "json"], &logs.path().join("log"));
    eventually(
        Duration::from_secs(60),
        "the marker's removal hanging at the bucket",
        || async { proxy.injected().get("stall").copied().unwrap_or(0) >= 1 },
    )
    .await;
    let mut app = db.pool.begin().await.expect("the app's transaction");
    sqlx::query("SET LOCAL lock_timeout = '100ms'")
        .execute(&mut *app)
        .await
        .expect("set the lock timeout");
    sqlx::query("UPDATE docs SET title = 'edited by the app' WHERE id = 'doc'")
        .execute(&mut *app)
        .await
        .expect("the app's UPDATE waited on a lock held across the bucket change");
    app.commit().await.expect("the app's commit");
    assert!(
        !bucket.exists("doc").await,
        "restored before the bucket answered"
    );

    proxy.set(Fault::Pass);
    let status = tokio::time::timeout(Duration::from_secs(120), sweep.wait())
        .await
        .expect("the sweep ends once the bucket answers")
        .expect("the sweep's exit");
    assert_eq!(
        status.code(),
        Some(0),
        "{}",
        std::fs::read_to_string(logs.path().join("log")).unwrap_or_default()
    );
    assert_eq!(bucket.get("doc").await, b"the user's file");
    assert_eq!(
        trail(&db, "restore").await,
        ["doc missing_object restore processed -> -"]
    );
}
