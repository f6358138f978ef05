//! Secrets never leave the process: not in the log (at debug level), the reconciler's tables,
//! `explain`, `check-config`, `/metrics`, nor the error line of a failed command.

use crate::daemon::{signal, wait_exit};
use crate::helpers::*;
use std::time::Duration;

const PG_PASSWORD: &str = "PGPASSWORD123";
const HOOK_TOKEN: &str = "SECRETTOKEN123";
const AWS_SECRET: &str = "AWSSECRETKEY123";
/// The secret of a Slack-style webhook URL, in its path.
const PATH_TOKEN: &str = "XPATHTOKEN0123456789abcd";

/// A port nothing listens on: bound, then released.
fn closed_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind a free port");
    listener.local_addr().expect("local address").port()
}

fn assert_no_secret(place: &str, text: &str, secrets: &[&str]) {
    for secret in secrets {
        assert!(!text.contains(secret), "{secret} in {place}:\n{text}");
    }
}

#[tokio::test]
async fn an_unreachable_webhook_keeps_its_token_and_every_other_secret_out_of_logs_tables_and_explain()
 {
    let db = TestDb::with_docs(None).await;
    let bucket = TestBucket::new().await;
    // A pending doc whose object is there: the first sweep adopts it and queues its job.
    db.doc("doc", "pending", MINUTE).await;
    bucket.put("doc", "body").await;
    let port = closed_port();
    let mut reconcile = Reconcile::new(&db, &bucket)
        .set("sweep.schedule", "* * * * * *")
        .set("processing.hook", "webhook")
        .set(
            "processing.url",
            &format!("http://127.0.0.1:{port}/hook?token={HOOK_TOKEN}"),
        )
        .set("processing.max_attempts", "1");
    // Trust authentication accepts any password, so a real one can travel in the URL.
    reconcile.database_url = format!(
        "postgres://postgres:{PG_PASSWORD}@127.0.0.1:5432/{}",
        db.name
    );
    reconcile
        .env
        .push(("AWS_SECRET_ACCESS_KEY".into(), AWS_SECRET.into()));
    reconcile.env.push(("RUST_LOG".into(), "debug".into()));
    let logs = tempfile::tempdir().expect("temp dir");
    let log = logs.path().join("daemon.log");
    let mut daemon = reconcile.spawn(&["daemon"], &log);
    let addr = daemon_address(&log).await;
    eventually(
        Duration::from_secs(30),
        "the doc's job failed against the closed port",
        || async { job_state(&db, "doc").await.as_deref() == Some("failed") },
    )
    .await;
    let metrics = http_get(&addr, "/metrics").await.1;
    signal(&daemon, "TERM");
    assert_eq!(wait_exit(&mut daemon, Duration::from_secs(20)).await, 0);
    let secrets = [PG_PASSWORD, HOOK_TOKEN, AWS_SECRET];

    let logged = std::fs::read_to_string(&log).unwrap_or_default();
    assert!(
        logged.contains("processing gave up"),
        "the failure was logged:\n{logged}"
    );
    assert_no_secret("the daemon's log", &logged, &secrets);
    assert_no_secret("/metrics", &metrics, &secrets);

    let last_error = job_last_error(&db, "doc").await;
    // Still says what failed, and where.
    assert!(
        last_error.contains(&format!("POST http://127.0.0.1:{port}:"))
            && !last_error.contains("/hook"),
        "{last_error}"
    );
    assert_no_secret("reconciler.jobs.last_error", &last_error, &secrets);
    let audit: Vec<String> = sqlx::query_scalar("SELECT detail FROM reconciler.audit_log")
        .fetch_all(&db.pool)
        .await
        .expect("audit log");
    assert!(
        audit.iter().any(|d| d.contains("last error")),
        "the exhausted job is audited with its error: {audit:?}"
    );
    assert_no_secret("reconciler.audit_log", &audit.join("\n"), &secrets);

    for format in ["table", "json"] {
        let run = reconcile.run(&["explain", "doc", "--format", format]).await;
        assert_eq!(run.code, 0, "{}", run.stderr);
        assert!(
            run.stdout
                .contains(&format!("POST http://127.0.0.1:{port}:")),
            "{}",
            run.stdout
        );
        assert_no_secret(&format!("explain --format {format}"), &run.stdout, &secrets);
        assert_no_secret("explain's stderr", &run.stderr, &secrets);
    }
    let check = reconcile.run(&["check-config"]).await;
    assert_eq!(check.code, 0, "{}", check.stderr);
    assert!(
        check
            .stdout
            .contains("postgres://postgres:***@127.0.0.1:5432/"),
        "{}",
        check.stdout
    );
    assert_no_secret("check-config", &check.stdout, &secrets);
    assert_no_secret("check-config's stderr", &check.stderr, &secrets);
}

async fn job_state(db: &TestDb, id: &str) -> Option<String> {
    sqlx::query_scalar("SELECT state FROM reconciler.jobs WHERE doc_id = $1")
        .bind(id)
        .fetch_optional(&db.pool)
        .await
        .ok()
        .flatten()
}

#[tokio::test]
async fn a_database_password_in_the_query_or_holding_url_delimiters_is_never_printed() {
    let db = TestDb::with_docs(None).await;
    let bucket = TestBucket::new().await;
    // (the URL, what of it is secret, what of it the error must still name)
    let cases: [(&str, &[&str], &str); 2] = [
        (
            "postgresql://u@127.0.0.1:1/x?password=PWQUERY123",
            &["PWQUERY123"],
            "127.0.0.1:1/x",
        ),
        (
            "postgres://u:p/SLASHPW?#HASHPW@127.0.0.1:1/db",
            &["SLASHPW", "HASHPW"],
            "127.0.0.1:1/db",
        ),
    ];
    for (url, secrets, names) in cases {
        for command in ["--dry-run", "check-config"] {
            let run = Reconcile::new(&db, &bucket)
                .run(&["--database-url", url, command])
                .await;
            let stderr = run.stderr.trim();
            assert_eq!(run.code, 1, "{command} with {url}: {stderr}");
            assert_eq!(stderr.lines().count(), 1, "not one line: {stderr}");
            assert!(stderr.contains(names), "{names:?} not in: {stderr}");
            assert_no_secret(&format!("{command}'s stderr"), stderr, secrets);
            assert_no_secret(&format!("{command}'s stdout"), &run.stdout, secrets);
        }
    }
}

#[tokio::test]
async fn a_webhook_url_refused_by_the_config_is_named_by_its_scheme_and_host_only() {
    let db = TestDb::with_docs(None).await;
    let bucket = TestBucket::new().await;
    let run = Reconcile::new(&db, &bucket)
        .set("processing.hook", "webhook")
        .set(
            "processing.url",
            &format!("ftp://h/services/T0AAA/B0BBB/{PATH_TOKEN}?sig2=QUERYSECRET123"),
        )
        .run(&["check-config"])
        .await;
    let stderr = run.stderr.trim();
    assert_eq!(run.code, 2, "{stderr}");
    assert!(stderr.contains("processing.url"), "{stderr}");
    assert!(stderr.contains("\"ftp://h\""), "{stderr}");
    assert_no_secret(
        "check-config's stderr",
        stderr,
        &["QUERYSECRET123", PATH_TOKEN, "B0BBB"],
    );
}

/// Slack- and Discord-style webhook URLs carry their secret in the path
/// (`/services/T0AAA/B0BBB/<token>`): a webhook URL is shown as its scheme and host only, whether
/// the hook is down, hangs past the timeout, or answers an error that repeats the path.
#[tokio::test]
async fn a_token_in_a_webhook_url_s_path_is_never_printed_whether_the_hook_is_down_hangs_or_fails()
{
    let echo = |head: &str| {
        let body = format!("no hook at {}", head.lines().next().unwrap_or_default());
        (body.len() as u64, body)
    };
    let hanging = HookServer::start(Duration::ZERO, |_| Reply::Hang).await;
    let hanging_host = hanging
        .url
        .trim_start_matches("http://")
        .trim_end_matches("/process")
        .to_owned();
    let cases = [
        ("down", format!("127.0.0.1:{}", closed_port()), "POST"),
        ("hangs", hanging_host, "timed out"),
        // A body that repeats the request line, the URL's path and token with it (as some do).
        ("fails", failing_server(echo).await, "answered 500"),
    ];
    for (case, host, error) in cases {
        let db = TestDb::with_docs(None).await;
        let bucket = TestBucket::new().await;
        db.doc("doc", "pending", MINUTE).await;
        bucket.put("doc", "body").await;
        let url = format!("http://{host}/services/T0AAA/B0BBB/{PATH_TOKEN}");
        let mut reconcile = Reconcile::new(&db, &bucket)
            .set("processing.hook", "webhook")
            .set("processing.url", &url)
            .set("processing.timeout", "1s")
            .set("processing.max_attempts", "1")
            .set("sweep.schedule", "* * * * * *");
        reconcile.env.push(("RUST_LOG".into(), "debug".into()));
        let logs = tempfile::tempdir().expect("temp dir");
        let log = logs.path().join("daemon.log");
        let mut daemon = reconcile.spawn(&["daemon"], &log);
        daemon_address(&log).await;
        eventually(
            Duration::from_secs(30),
            &format!("the doc's job failed ({case})"),
            || async { job_state(&db, "doc").await.as_deref() == Some("failed") },
        )
        .await;
        signal(&daemon, "TERM");
        assert_eq!(wait_exit(&mut daemon, Duration::from_secs(20)).await, 0);
        // The token, and the rest of the path that leads to it.
        let secrets = [PATH_TOKEN, "/services/T0AAA/B0BBB"];

        let logged = std::fs::read_to_string(&log).unwrap_or_default();
        assert!(logged.contains("processing gave up"), "{case}:\n{logged}");
        assert_no_secret(&format!("the daemon's log ({case})"), &logged, &secrets);
        let last_error = job_last_error(&db, "doc").await;
        assert!(last_error.contains(error), "{case}: {last_error}");
        assert_no_secret(
            &format!("reconciler.jobs.last_error ({case})"),
            &last_error,
            &secrets,
        );
        let audit: Vec<String> = sqlx::query_scalar("SELECT detail FROM reconciler.audit_log")
            .fetch_all(&db.pool)
            .await
            .expect("audit log");
        assert_no_secret(
            &format!("reconciler.audit_log ({case})"),
            &audit.join("\n"),
            &secrets,
        );
        for args in [
            ["explain", "doc", "--format", "table"].as_slice(),
            ["explain", "doc", "--format", "json"].as_slice(),
            ["check-config"].as_slice(),
        ] {
            let run = reconcile.run(args).await;
            assert_eq!(run.code, 0, "{case}: {args:?}: {}", run.stderr);
            let place = format!("{args:?} ({case})");
            assert_no_secret(&place, &run.stdout, &secrets);
            assert_no_secret(&place, &run.stderr, &secrets);
        }
    }
}

#[tokio::test]
async fn a_database_password_in_a_url_without_slashes_is_hidden_in_the_config_error() {
    let db = TestDb::with_docs(None).await;
    let bucket = TestBucket::new().await;
    for url in [
        "postgres:/app:NOSLASHPW123@db/app",
        "postgresql:app:NOSLASHPW123@db/app",
    ] {
        for command in ["--dry-run", "check-config"] {
            let run = Reconcile::new(&db, &bucket)
                .run(&["--database-url", url, command])
                .await;
            let stderr = run.stderr.trim();
            assert_eq!(run.code, 2, "{command} with {url}: {stderr}");
            assert_eq!(stderr.lines().count(), 1, "not one line: {stderr}");
            assert!(stderr.contains("database.url"), "{stderr}");
            assert!(
                stderr.contains("@db/app"),
                "the host is still named: {stderr}"
            );
            assert_no_secret(&format!("{command}'s stderr"), stderr, &["NOSLASHPW123"]);
        }
    }
}
