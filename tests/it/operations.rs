//! The daemon as operators run it: schedule, metrics, health, several replicas, secrets, and the
//! dashboards and alert rules checked against its real /metrics.

use crate::daemon::{signal, wait_exit};
use crate::helpers::*;
use std::collections::BTreeSet;
use std::time::Duration;

fn promtool() -> std::process::Command {
    if std::process::Command::new("promtool")
        .arg("--version")
        .output()
        .is_err()
    {
        panic!("promtool is not installed: scripts/test installs it (Debian package prometheus)");
    }
    std::process::Command::new("promtool")
}

/// Every `reconcile_*` metric a file names, histogram suffixes folded into their base name.
fn metric_names_in(path: &str) -> BTreeSet<String> {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("read {path}: {e}"));
    let mut names = BTreeSet::new();
    let bytes = text.as_bytes();
    let mut i = 0;
    while let Some(at) = text[i..].find("reconcile_") {
        let start = i + at;
        let end = start
            + text[start..]
                .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                .unwrap_or(text.len() - start);
        let preceded_by_word =
            start > 0 && (bytes[start - 1].is_ascii_alphanumeric() || bytes[start - 1] == b'_');
        if !preceded_by_word {
            let name = &text[start..end];
            let base = ["_bucket", "_sum", "_count"]
                .iter()
                .find_map(|s| name.strip_suffix(s))
                .unwrap_or(name);
            names.insert(base.to_owned());
        }
        i = end;
    }
    names
}

#[tokio::test]
async fn the_daemon_sweeps_on_schedule_consumes_events_and_reports_both_and_its_health() {
    let db = TestDb::with_docs(None).await;
    let bucket = TestBucket::new().await;
    let queue = TestQueue::with_dead_letters(5).await;
    bucket.notify(&queue).await;
    db.doc("stale", "pending", 2 * HOUR).await;
    db.doc("incoming", "pending", MINUTE).await;
    let postgres = FaultProxy::tcp("127.0.0.1:5432").await;
    let mut reconcile = Reconcile::new(&db, &bucket)
        .set("sweep.schedule", "*/2 * * * * *")
        .set("events.queue_url", &queue.url)
        .set("events.wait_time", "1s");
    reconcile.database_url = postgres.url_of(&db);
    let logs = tempfile::tempdir().expect("temp dir");
    let log = logs.path().join("daemon.log");
    let mut daemon = reconcile.spawn(&["daemon", "-v"], &log);
    let addr = daemon_address(&log).await;

    bucket.presigned_put("incoming", "hello").await;
    eventually(
        Duration::from_secs(30),
        "the upload processed by its event",
        || async { db.status("incoming").await.as_deref() == Some("processed") },
    )
    .await;
    eventually(
        Duration::from_secs(30),
        "the stale doc expired by a scheduled sweep",
        || async { db.status("stale").await.as_deref() == Some("expired") },
    )
    .await;
    // The counters move just after the commits the database shows: wait for the sweep to end.
    eventually(Duration::from_secs(30), "the sweep's metrics", || async {
        let body = http_get(&addr, "/metrics").await.1;
        metric_value(&body, "reconcile_sweep_last_success_timestamp_seconds").is_some_and(|t| t > 0.0)
            && metric_value(
                &body,
                "reconcile_actions_total{action=\"expire\",kind=\"stale_pending\",result=\"applied\"}",
            ) == Some(1.0)
    })
    .await;
    let (status, body) = http_get(&addr, "/metrics").await;
    assert_eq!(status, 200);
    let created = metric_value(&body, "reconcile_events_received_total{type=\"created\"}");
    assert!(created >= Some(1.0), "{body}");
    let expired = metric_value(
        &body,
        "reconcile_actions_total{action=\"expire\",kind=\"stale_pending\",result=\"applied\"}",
    );
    assert_eq!(expired, Some(1.0), "{body}");
    let last = metric_value(&body, "reconcile_sweep_last_success_timestamp_seconds");
    assert!(last.is_some_and(|t| t > 1.7e9), "{body}");
    assert!(metric_value(&body, "reconcile_records_scanned_total").is_some_and(|n| n >= 2.0));
    assert_eq!(
        metric_value(&body, "reconcile_build_info{version=\"0.1.0\"}"),
        Some(1.0)
    );
    for kind in [
        "stale_pending",
        "orphan_object",
        "in_grace",
        "processing_exhausted",
    ] {
        let series = format!("reconcile_findings{{kind=\"{kind}\"}}");
        assert!(metric_value(&body, &series).is_some(), "{series} missing");
    }

    // The real output passes promtool, and holds every metric the dashboard and alerts use.
    let mut check = promtool()
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("run promtool");
    {
        use std::io::Write;
        let mut stdin = check.stdin.take().expect("stdin");
        stdin.write_all(body.as_bytes()).expect("feed promtool");
    }
    let checked = check.wait_with_output().expect("promtool finished");
    assert!(
        checked.status.success(),
        "promtool check metrics: {}{}",
        String::from_utf8_lossy(&checked.stdout),
        String::from_utf8_lossy(&checked.stderr)
    );
    let served: BTreeSet<String> = body
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.split(' ').next())
        .map(str::to_owned)
        .collect();
    for file in [
        "dashboards/reconcile-dashboard.json",
        "dashboards/alerts.yml",
    ] {
        let used = metric_names_in(file);
        assert!(!used.is_empty(), "{file} names no metric");
        let unknown: Vec<_> = used.difference(&served).collect();
        assert!(
            unknown.is_empty(),
            "{file} uses metrics the daemon does not serve: {unknown:?}"
        );
    }

    assert_eq!(http_get(&addr, "/healthz").await.0, 200);
    assert_eq!(http_get(&addr, "/readyz").await.0, 200);
    postgres.set(Fault::Reset);
    eventually(
        Duration::from_secs(30),
        "/readyz unready without Postgres",
        || async { http_get(&addr, "/readyz").await.0 == 503 },
    )
    .await;
    assert_eq!(
        http_get(&addr, "/healthz").await.0,
        200,
        "alive all the same"
    );
    postgres.set(Fault::Pass);
    eventually(Duration::from_secs(60), "/readyz ready again", || async {
        http_get(&addr, "/readyz").await.0 == 200
    })
    .await;

    signal(&daemon, "TERM");
    assert_eq!(wait_exit(&mut daemon, Duration::from_secs(20)).await, 0);
    let text = std::fs::read_to_string(&log).unwrap_or_default();
    for task in ["http server", "scheduled sweeps", "event poller"] {
        assert!(
            text.contains(task) && text.contains("stopped"),
            "{task} end not logged:\n{text}"
        );
    }
    // Nothing half-applied: every status the daemon changed has its audit row.
    let audit = db.audit().await;
    assert!(
        audit
            .iter()
            .any(|a| a.0 == "stale" && a.4.as_deref() == Some("expired"))
    );
    assert!(
        audit
            .iter()
            .any(|a| a.0 == "incoming" && a.4.as_deref() == Some("processed"))
    );
}

#[tokio::test]
async fn audit_mode_sweeps_on_schedule_and_writes_nothing() {
    let db = TestDb::with_docs(None).await;
    let bucket = TestBucket::new().await;
    db.doc("stale", "pending", 2 * HOUR).await;
    let before = db.snapshot().await;
    let reconcile = Reconcile::new(&db, &bucket).set("sweep.schedule", "* * * * * *");
    let logs = tempfile::tempdir().expect("temp dir");
    let log = logs.path().join("daemon.log");
    let mut daemon = reconcile.spawn(&["daemon", "--dry-run", "-v"], &log);
    let addr = daemon_address(&log).await;
    eventually(Duration::from_secs(30), "a dry-run sweep counted the finding", || async {
        let body = http_get(&addr, "/metrics").await.1;
        metric_value(&body, "reconcile_findings{kind=\"stale_pending\"}") == Some(1.0)
            && metric_value(
                &body,
                "reconcile_actions_total{action=\"expire\",kind=\"stale_pending\",result=\"dry_run\"}",
            )
            .is_some()
    })
    .await;
    signal(&daemon, "TERM");
    assert_eq!(wait_exit(&mut daemon, Duration::from_secs(20)).await, 0);
    assert_eq!(db.snapshot().await, before);
    assert!(
        !db.reconciler_schema_exists().await,
        "audit mode created the schema"
    );
}

#[tokio::test]
async fn two_daemons_on_one_database_never_sweep_at_the_same_time() {
    let db = TestDb::with_docs(None).await;
    let bucket = TestBucket::new().await;
    for i in 0..60 {
        let id = format!("doc-{i:02}");
        db.doc(&id, "processed", HOUR).await;
        bucket.put(&id, "x").await;
    }
    let reconcile = Reconcile::new(&db, &bucket).set("sweep.schedule", "* * * * * *");
    assert_eq!(reconcile.run(&["migrate"]).await.code, 0);
    let logs = tempfile::tempdir().expect("temp dir");
    let (log_a, log_b) = (logs.path().join("a.log"), logs.path().join("b.log"));
    let mut a = reconcile.spawn(&["daemon", "-v"], &log_a);
    let mut b = reconcile.spawn(&["daemon", "-v"], &log_b);
    let (addr_a, addr_b) = (daemon_address(&log_a).await, daemon_address(&log_b).await);
    let skipped = || async {
        let mut total = 0.0;
        for addr in [&addr_a, &addr_b] {
            let body = http_get(addr, "/metrics").await.1;
            total += metric_value(&body, "reconcile_sweeps_skipped_total").unwrap_or(0.0);
        }
        total
    };
    let finished = || async {
        sqlx::query_scalar::<_, i64>(
            "SELECT count(*) FROM reconciler.sweeps WHERE finished_at IS NOT NULL",
        )
        .fetch_one(&db.pool)
        .await
        .unwrap_or(0)
    };
    eventually(
        Duration::from_secs(30),
        "several sweeps, and a skipped tick",
        || async { finished().await >= 3 && skipped().await >= 1.0 },
    )
    .await;
    signal(&a, "TERM");
    signal(&b, "TERM");
    assert_eq!(wait_exit(&mut a, Duration::from_secs(20)).await, 0);
    assert_eq!(wait_exit(&mut b, Duration::from_secs(20)).await, 0);

    let sweeps: Vec<(chrono::DateTime<chrono::Utc>, chrono::DateTime<chrono::Utc>)> =
        sqlx::query_as(
            "SELECT started_at, finished_at FROM reconciler.sweeps \
             WHERE finished_at IS NOT NULL ORDER BY started_at",
        )
        .fetch_all(&db.pool)
        .await
        .expect("sweep history");
    assert!(sweeps.len() >= 3, "{sweeps:?}");
    for pair in sweeps.windows(2) {
        assert!(pair[0].1 <= pair[1].0, "sweeps overlapped: {pair:?}");
    }
}

#[tokio::test]
async fn configured_secrets_never_reach_the_logs_or_metrics() {
    let db = TestDb::with_docs(None).await;
    let bucket = TestBucket::new().await;
    let queue = TestQueue::with_dead_letters(5).await;
    bucket.notify(&queue).await;
    db.doc("doc", "pending", MINUTE).await;
    let hook = HookServer::start(Duration::ZERO, |_| Reply::Status(200)).await;
    let (pg_password, aws_secret, hook_token) =
        ("pg-pw-Zq81x", "aws-secret-Kd93mZ", "hook-token-Yt27q");
    let mut reconcile = Reconcile::new(&db, &bucket)
        .set("sweep.schedule", "* * * * * *")
        .set("events.queue_url", &queue.url)
        .set("events.wait_time", "1s")
        .set("processing.hook", "webhook")
        .set(
            "processing.url",
            &format!("{}?token={hook_token}", hook.url),
        );
    // Trust authentication accepts any password, so a real one can travel in the URL.
    reconcile.database_url = format!(
        "postgres://postgres:{pg_password}@127.0.0.1:5432/{}",
        db.name
    );
    reconcile
        .env
        .push(("AWS_SECRET_ACCESS_KEY".into(), aws_secret.into()));
    let logs = tempfile::tempdir().expect("temp dir");
    let log = logs.path().join("daemon.log");
    let mut daemon = reconcile.spawn(&["daemon", "-vv", "--log-format", "json"], &log);
    let addr = daemon_address(&log).await;
    bucket.presigned_put("doc", "body").await;
    eventually(
        Duration::from_secs(30),
        "the doc processed through the hook",
        || async { db.status("doc").await.as_deref() == Some("processed") },
    )
    .await;
    let metrics = http_get(&addr, "/metrics").await.1;
    signal(&daemon, "TERM");
    assert_eq!(wait_exit(&mut daemon, Duration::from_secs(20)).await, 0);

    let logged = std::fs::read_to_string(&log).unwrap_or_default();
    assert!(
        logged.len() > 1000,
        "debug logging was on: {} bytes",
        logged.len()
    );
    for secret in [pg_password, aws_secret, hook_token] {
        assert!(!logged.contains(secret), "{secret} in the log");
        assert!(!metrics.contains(secret), "{secret} in /metrics");
    }
    assert!(hook.calls_for("doc") == 1);
}

#[test]
fn the_alert_rules_are_valid_and_their_unit_tests_pass() {
    for args in [
        ["check", "rules", "dashboards/alerts.yml"],
        ["test", "rules", "dashboards/alerts.test.yml"],
    ] {
        let out = promtool().args(args).output().expect("run promtool");
        assert!(
            out.status.success(),
            "promtool {args:?}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
}
