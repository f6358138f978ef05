//! The seed's own flow end to end, over real HTTP: the example upload API
//! (`examples/upload_api.rs`) and `reconcile daemon` as separate processes, on Postgres and moto,
//! a webhook as the post-processing hook. First the happy path, then each way it breaks, healed.

use crate::helpers::*;
use serde_json::{Value, json};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;
use tokio::io::AsyncBufReadExt;

/// How long the upload URLs live, and how long a pending record waits after that.
const URL_LIFETIME: Duration = Duration::from_secs(2);
const PENDING_TTL: Duration = Duration::from_secs(3);

/// The API's binary: cargo builds examples beside the test binary's folder (`scripts/test` runs
/// `cargo build --example upload_api` first, since `cargo test --test it` alone does not).
pub fn example_binary() -> PathBuf {
    let exe = std::env::current_exe().expect("test binary path");
    let debug = exe
        .parent()
        .and_then(Path::parent)
        .expect("target/<profile>/deps");
    let binary = debug.join("examples").join("upload_api");
    assert!(
        binary.exists(),
        "{} is missing: build it with `cargo build --example upload_api` (scripts/test does)",
        binary.display()
    );
    binary
}

/// Start the example API on `config`, its stderr in `dir/api.log`; its process and base URL.
async fn start_api(config: &Path, dir: &Path) -> (tokio::process::Child, String) {
    let target = s3_target();
    let log = dir.join("api.log");
    let mut api = tokio::process::Command::new(example_binary())
        .arg("--config")
        .arg(config)
        .args(["--listen", "127.0.0.1:0"])
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("AWS_ACCESS_KEY_ID", &target.access_key)
        .env("AWS_SECRET_ACCESS_KEY", &target.secret_key)
        .env("AWS_REGION", &target.region)
        .env("AWS_EC2_METADATA_DISABLED", "true")
        .stdout(std::process::Stdio::piped())
        .stderr(std::fs::File::create(&log).expect("api log"))
        .kill_on_drop(true)
        .spawn()
        .expect("start the example upload API");
    let stdout = api.stdout.take().expect("the API's stdout");
    let mut lines = tokio::io::BufReader::new(stdout).lines();
    let first = tokio::time::timeout(Duration::from_secs(30), lines.next_line())
        .await
        .expect("the API printed its address within 30 s")
        .expect("read the API's stdout")
        .unwrap_or_else(|| {
            panic!(
                "the API exited: {}",
                std::fs::read_to_string(&log).unwrap_or_default()
            )
        });
    let url = first
        .strip_prefix("listening on ")
        .unwrap_or_else(|| panic!("unexpected first line: {first}"))
        .to_owned();
    (api, url)
}

/// One deployment of the pattern: the app's database and bucket, the queue S3 notifies, the
/// post-processing endpoint, the config file both processes read, and the two processes.
struct Flow {
    db: TestDb,
    bucket: TestBucket,
    queue: TestQueue,
    hook: HookServer,
    dir: tempfile::TempDir,
    config: PathBuf,
    api: tokio::process::Child,
    api_url: String,
    daemon: Option<tokio::process::Child>,
    daemon_log: PathBuf,
    http: reqwest::Client,
}

impl Flow {
    /// The API up; the daemon not yet (`start_daemon`). `sweeps`: the daemon sweeps every
    /// second; without, only events move records, so a test can tell who did.
    async fn new(hook: HookServer, sweeps: bool) -> Flow {
        let db = TestDb::with_docs(None).await;
        let bucket = TestBucket::new().await;
        let queue = TestQueue::with_dead_letters(5).await;
        bucket.notify(&queue).await;
        let dir = tempfile::tempdir().expect("temporary folder");
        let config = dir.path().join("reconcile.toml");
        let target = s3_target();
        std::fs::write(
            &config,
            format!(
                r#"
[database]
url = "{db_url}"

[storage]
bucket = "{bucket}"
prefix = "docs/"
endpoint_url = "{endpoint}"
force_path_style = true
upload_url_lifetime = "{lifetime}s"

[sweep]
schedule = "{schedule}"
pending_ttl = "{ttl}s"

[events]
queue_url = "{queue}"
wait_time = "1s"
visibility_timeout = "5s"

[processing]
hook = "webhook"
url = "{hook}"
timeout = "2s"
backoff_base = "500ms"
backoff_max = "1s"
max_attempts = 5

[server]
listen = "127.0.0.1:0"
"#,
                db_url = db.url(),
                bucket = bucket.name,
                endpoint = target.endpoint,
                lifetime = URL_LIFETIME.as_secs(),
                ttl = PENDING_TTL.as_secs(),
                queue = queue.url,
                hook = hook.url,
                schedule = if sweeps {
                    "* * * * * *"
                } else {
                    "0 0 0 1 1 * 2099"
                },
            ),
        )
        .expect("write the config");
        let (api, api_url) = start_api(&config, dir.path()).await;
        let daemon_log = dir.path().join("daemon.log");
        Flow {
            db,
            bucket,
            queue,
            hook,
            dir,
            config,
            api,
            api_url,
            daemon: None,
            daemon_log,
            http: reqwest::Client::new(),
        }
    }

    /// With a hook that always answers 200.
    async fn with_a_working_hook(sweeps: bool) -> Flow {
        Flow::new(
            HookServer::start(Duration::ZERO, |_| Reply::Status(200)).await,
            sweeps,
        )
        .await
    }

    fn reconcile(&self) -> Reconcile {
        Reconcile::new(&self.db, &self.bucket)
    }

    /// Start (or restart) `reconcile daemon --config <the same file>`.
    async fn start_daemon(&mut self) -> String {
        let log = self.daemon_log.clone();
        let config = self.config.to_str().expect("utf-8 path").to_owned();
        let child = self
            .reconcile()
            .spawn(&["--config", &config, "daemon", "-v"], &log);
        self.daemon = Some(child);
        let listening = tokio::time::timeout(Duration::from_secs(30), daemon_address(&log)).await;
        if listening.is_err()
            || self
                .daemon
                .as_mut()
                .is_some_and(|d| d.try_wait().ok().flatten().is_some())
        {
            panic!("the daemon did not start: {}", self.log());
        }
        listening.unwrap_or_default()
    }

    async fn kill_daemon(&mut self) {
        if let Some(mut daemon) = self.daemon.take() {
            daemon.kill().await.expect("SIGKILL the daemon");
        }
    }

    /// `POST /docs`: the status and the JSON answer.
    async fn post(&self, body: &str) -> (u16, Value) {
        let response = self
            .http
            .post(format!("{}/docs", self.api_url))
            .header("Content-Type", "application/json")
            .body(body.to_owned())
            .send()
            .await
            .expect("POST /docs");
        let status = response.status().as_u16();
        (status, response.json().await.expect("a JSON answer"))
    }

    /// Create a doc as a client does; its id and upload URL.
    async fn create(&self, title: &str) -> (String, String) {
        let (status, doc) = self
            .post(&json!({"title": title, "contentType": "application/pdf"}).to_string())
            .await;
        assert_eq!(status, 201, "{doc}");
        let id = doc["id"].as_str().expect("id").to_owned();
        let url = doc["presignedUrl"]
            .as_str()
            .expect("presignedUrl")
            .to_owned();
        (id, url)
    }

    /// The client's PUT to its upload URL, with the content type the URL was signed for.
    async fn upload(&self, url: &str, body: &str) {
        let response = self
            .http
            .put(url)
            .header("Content-Type", "application/pdf")
            .body(body.to_owned())
            .send()
            .await
            .expect("PUT to the upload URL");
        assert!(
            response.status().is_success(),
            "PUT: {} {}",
            response.status(),
            response.text().await.unwrap_or_default()
        );
    }

    /// `GET /docs/{id}`.
    async fn get(&self, id: &str) -> (u16, Value) {
        let response = self
            .http
            .get(format!("{}/docs/{id}", self.api_url))
            .send()
            .await
            .expect("GET /docs/{id}");
        let status = response.status().as_u16();
        (status, response.json().await.expect("a JSON answer"))
    }

    /// Wait until `GET /docs/{id}` shows `status`.
    async fn until_status(&self, id: &str, status: &str, limit: Duration) {
        eventually(limit, &format!("{id} {status}"), || async {
            self.get(id).await.1["status"] == status
        })
        .await;
    }

    async fn audit_of(&self, id: &str) -> Vec<(String, String)> {
        self.db
            .audit()
            .await
            .into_iter()
            .filter(|row| row.0 == id)
            .map(|row| (row.1, row.2))
            .collect()
    }

    /// Nothing left behind: the queue drained, nothing dead-lettered.
    async fn nothing_lost(&self) {
        eventually(Duration::from_secs(20), "the queue drained", || async {
            self.queue.depth().await == 0
        })
        .await;
        assert_eq!(self.queue.dead_letter_depth().await, 0, "dead-lettered");
    }

    /// The hook's (first) call for the doc.
    fn hook_call(&self, id: &str) -> Value {
        self.hook
            .calls()
            .into_iter()
            .find(|c| c["id"] == id)
            .expect("the hook's call")
    }

    fn log(&self) -> String {
        let api = std::fs::read_to_string(self.dir.path().join("api.log")).unwrap_or_default();
        let daemon = std::fs::read_to_string(&self.daemon_log).unwrap_or_default();
        format!("api:\n{api}\ndaemon:\n{daemon}")
    }
}

impl Drop for Flow {
    fn drop(&mut self) {
        self.api.start_kill().ok();
    }
}

fn pairs(items: &[(&str, &str)]) -> Vec<(String, String)> {
    items
        .iter()
        .map(|(a, b)| ((*a).to_owned(), (*b).to_owned()))
        .collect()
}

#[tokio::test]
async fn bad_requests_get_a_json_error_and_a_created_doc_reads_back() {
    let flow = Flow::with_a_working_hook(false).await;
    for (body, words) in [
        ("{not json", "invalid JSON body"),
        ("{}", "title is required"),
        (r#"{"title": "  "}"#, "title is required"),
        (r#"{"title": 7}"#, "invalid JSON body"),
        (r#"{"title": "a", "colour": "red"}"#, "colour"),
        (
            r#"{"title": "a", "contentType": "pdf"}"#,
            "is not a media type",
        ),
    ] {
        let (status, answer) = flow.post(body).await;
        assert_eq!(status, 400, "{body}: {answer}");
        let error = answer["error"].as_str().unwrap_or_default();
        assert!(error.contains(words), "{body}: {error}");
    }
    let (status, answer) = flow.get("no-such-doc").await;
    assert_eq!(status, 404, "{answer}");
    assert!(answer["error"].as_str().is_some(), "{answer}");

    let (status, doc) = flow.post(r#"{"title": "Contract"}"#).await;
    assert_eq!(status, 201, "{doc}");
    let id = doc["id"].as_str().expect("id");
    assert_eq!(doc["title"], "Contract");
    let created = doc["createdAt"].as_str().expect("createdAt");
    chrono::DateTime::parse_from_rfc3339(created).expect("createdAt is RFC 3339");
    // A real SigV4 presigned PUT of prefix + id, expiring with the configured lifetime, its
    // content type (the default) signed.
    let url = url::Url::parse(doc["presignedUrl"].as_str().expect("url")).expect("a URL");
    assert!(url.path().ends_with(&format!("/docs/{id}")), "{url}");
    let query: std::collections::HashMap<_, _> = url.query_pairs().into_owned().collect();
    assert_eq!(query["X-Amz-Algorithm"], "AWS4-HMAC-SHA256");
    assert_eq!(query["X-Amz-Expires"], URL_LIFETIME.as_secs().to_string());
    assert!(
        query["X-Amz-SignedHeaders"].contains("content-type"),
        "{query:?}"
    );
    let (status, shown) = flow.get(id).await;
    assert_eq!(status, 200);
    assert_eq!(shown["status"], "pending");
    assert_eq!(shown["title"], "Contract");
    assert_eq!(shown["createdAt"], created);
}

#[tokio::test]
async fn an_upload_is_processed_through_the_notification_and_the_hook() {
    let mut flow = Flow::with_a_working_hook(false).await;
    flow.start_daemon().await;
    let (id, url) = flow.create("Contract").await;
    flow.upload(&url, "%PDF-1.7 contract").await;
    flow.until_status(&id, "processed", Duration::from_secs(20))
        .await;
    assert_eq!(flow.hook.calls_for(&id), 1, "{}", flow.log());
    let call = flow.hook_call(&id);
    assert_eq!(call["key"], format!("docs/{id}"));
    assert_eq!(call["size"], "%PDF-1.7 contract".len());
    assert_eq!(
        flow.audit_of(&id).await,
        pairs(&[("upload_confirmed", "adopt"), ("processing", "process")])
    );
    let detail: String = sqlx::query_scalar(
        "SELECT detail FROM reconciler.audit_log WHERE doc_id = $1 AND action = 'adopt'",
    )
    .bind(&id)
    .fetch_one(&flow.db.pool)
    .await
    .expect("the audit row");
    assert!(
        detail.contains("(S3 event)"),
        "moved by the event: {detail}"
    );
    flow.nothing_lost().await;
}

#[tokio::test]
async fn a_client_that_never_uploads_is_expired_only_after_its_url_could_no_longer_be_used() {
    let mut flow = Flow::with_a_working_hook(true).await;
    flow.start_daemon().await;
    let (id, _url) = flow.create("Never sent").await;
    let created = chrono::Utc::now();
    flow.until_status(&id, "expired", Duration::from_secs(20))
        .await;
    let expired_after = chrono::Utc::now() - created;
    assert!(
        expired_after.to_std().unwrap_or_default() >= URL_LIFETIME,
        "expired {expired_after} after creation, while its URL still worked"
    );
    assert_eq!(
        flow.audit_of(&id).await,
        pairs(&[("stale_pending", "expire")])
    );
    assert_eq!(flow.hook.calls_for(&id), 0);
}

#[tokio::test]
async fn a_lost_notification_is_healed_by_the_next_sweep() {
    let mut flow = Flow::with_a_working_hook(true).await;
    let (id, url) = flow.create("Lost notification").await;
    flow.upload(&url, "body").await;
    // The notification is lost: the queue is purged before any daemon saw it.
    eventually(
        Duration::from_secs(10),
        "the notification queued",
        || async { flow.queue.depth().await > 0 },
    )
    .await;
    flow.queue
        .client
        .purge_queue()
        .queue_url(&flow.queue.url)
        .send()
        .await
        .expect("purge the queue");
    flow.start_daemon().await;
    flow.until_status(&id, "processed", Duration::from_secs(20))
        .await;
    assert_eq!(
        flow.audit_of(&id).await,
        pairs(&[("lost_notification", "adopt"), ("processing", "process")]),
        "{}",
        flow.log()
    );
    assert_eq!(flow.hook.calls_for(&id), 1);
}

#[tokio::test]
async fn a_processor_that_is_down_is_retried_with_backoff_until_it_is_back() {
    // Down for its first three calls, then back.
    let hook = HookServer::start(Duration::ZERO, |n| {
        Reply::Status(if n < 3 { 503 } else { 200 })
    })
    .await;
    let mut flow = Flow::new(hook, false).await;
    flow.start_daemon().await;
    let (id, url) = flow.create("Processor down").await;
    flow.upload(&url, "body").await;
    flow.until_status(&id, "processed", Duration::from_secs(30))
        .await;
    assert_eq!(flow.hook.calls_for(&id), 4, "{}", flow.log());
    let attempts: Vec<u64> = flow
        .hook
        .calls()
        .iter()
        .filter(|c| c["id"] == id.as_str())
        .map(|c| c["attempt"].as_u64().unwrap_or_default())
        .collect();
    assert_eq!(attempts, [1, 2, 3, 4]);
    flow.nothing_lost().await;
}

#[tokio::test]
async fn an_upload_that_lands_after_its_record_expired_revives_it() {
    let mut flow = Flow::with_a_working_hook(true).await;
    flow.start_daemon().await;
    let (id, _url) = flow.create("Slow upload").await;
    flow.until_status(&id, "expired", Duration::from_secs(20))
        .await;
    // A slow upload that started in time lands now (its URL has expired since).
    flow.bucket.put(&format!("docs/{id}"), "late body").await;
    flow.until_status(&id, "processed", Duration::from_secs(20))
        .await;
    assert_eq!(
        flow.audit_of(&id).await,
        pairs(&[
            ("stale_pending", "expire"),
            ("late_upload", "adopt"),
            ("processing", "process")
        ])
    );
    assert_eq!(flow.hook.calls_for(&id), 1);
    flow.nothing_lost().await;
}

#[tokio::test]
async fn an_object_deleted_later_marks_its_doc_missing_and_sets_the_alert_metric() {
    let mut flow = Flow::with_a_working_hook(false).await;
    let address = flow.start_daemon().await;
    let (id, url) = flow.create("Deleted later").await;
    flow.upload(&url, "body").await;
    flow.until_status(&id, "processed", Duration::from_secs(20))
        .await;
    flow.bucket.delete(&format!("docs/{id}")).await;
    flow.until_status(&id, "missing", Duration::from_secs(20))
        .await;
    // What the ReconcileMissingObjects alert reads.
    let metrics = http_get(&address, "/metrics").await.1;
    assert_eq!(
        metric_value(
            &metrics,
            "reconcile_actions_total{action=\"mark_missing\",kind=\"missing_object\",\
             result=\"applied\"}"
        ),
        Some(1.0),
        "{metrics}"
    );
    flow.nothing_lost().await;
}

#[tokio::test]
async fn a_daemon_killed_between_the_put_and_its_event_loses_nothing() {
    let mut flow = Flow::with_a_working_hook(false).await;
    flow.start_daemon().await;
    let (id, url) = flow.create("Across a crash").await;
    flow.kill_daemon().await;
    flow.upload(&url, "body").await;
    eventually(
        Duration::from_secs(10),
        "the notification queued",
        || async { flow.queue.depth().await > 0 },
    )
    .await;
    assert_eq!(flow.get(&id).await.1["status"], "pending");
    flow.start_daemon().await;
    flow.until_status(&id, "processed", Duration::from_secs(20))
        .await;
    assert_eq!(flow.hook.calls_for(&id), 1);
    flow.nothing_lost().await;
}

/// The embedded default: SQLite and a folder have no presigned URLs, so the API takes the PUT
/// itself at a URL it signed (HMAC, same lifetime), and the daemon's folder watcher moves the
/// record on as the file lands.
#[tokio::test]
async fn on_sqlite_and_a_folder_the_api_takes_the_put_at_a_signed_url() {
    let db = TestSqlite::with_docs().await;
    let folder = TestFolder::new();
    let dir = tempfile::tempdir().expect("temporary folder");
    let config = dir.path().join("reconcile.toml");
    std::fs::write(
        &config,
        format!(
            "[database]\nurl = \"{}\"\n[storage]\nbucket = \"{}\"\nprefix = \"docs/\"\n\
             upload_url_lifetime = \"{}s\"\n[sweep]\npending_ttl = \"{}s\"\n\
             schedule = \"0 0 0 1 1 * 2099\"\n[server]\nlisten = \"127.0.0.1:0\"\n",
            db.url(),
            folder.url(),
            URL_LIFETIME.as_secs(),
            PENDING_TTL.as_secs()
        ),
    )
    .expect("write the config");
    let (_api, api_url) = start_api(&config, dir.path()).await;
    let log = dir.path().join("daemon.log");
    let reconcile = Reconcile {
        database_url: db.url(),
        bucket: folder.url(),
        endpoint: String::new(),
        env: Vec::new(),
    };
    let config_arg = config.to_str().expect("utf-8 path");
    let _daemon = reconcile.spawn(&["--config", config_arg, "daemon", "-v"], &log);
    daemon_address(&log).await;
    let http = reqwest::Client::new();

    let doc: Value = http
        .post(format!("{api_url}/docs"))
        .body(r#"{"title": "Scan", "contentType": "image/png"}"#)
        .send()
        .await
        .expect("POST /docs")
        .json()
        .await
        .expect("JSON");
    let id = doc["id"].as_str().expect("id").to_owned();
    let url = doc["presignedUrl"].as_str().expect("url").to_owned();
    assert!(
        url.starts_with(&format!("{api_url}/uploads/{id}?")),
        "{url}"
    );
    let put = |url: String, content_type: &'static str| {
        let http = http.clone();
        async move {
            http.put(url)
                .header("Content-Type", content_type)
                .body("png bytes")
                .send()
                .await
                .expect("PUT")
                .status()
                .as_u16()
        }
    };
    // A forged signature, another content type or another doc's id are refused.
    let forged = format!("{}0", url.trim_end_matches(|c: char| c.is_ascii_hexdigit()));
    assert_eq!(put(forged, "image/png").await, 403);
    assert_eq!(put(url.clone(), "text/html").await, 403);
    let other = url.replace(&id, "00000000-0000-0000-0000-000000000000");
    assert_eq!(put(other, "image/png").await, 403);
    assert!(
        folder.snapshot().is_empty(),
        "a refused PUT wrote a file: {:?}",
        folder.snapshot()
    );

    // An empty body is refused with a reason, and nothing is stored.
    let empty = http
        .put(url.clone())
        .header("Content-Type", "image/png")
        .send()
        .await
        .expect("PUT without a body");
    assert_eq!(empty.status().as_u16(), 400);
    let said: Value = empty.json().await.expect("a JSON error");
    assert!(
        said["error"].as_str().is_some_and(|e| e.contains("empty")),
        "{said}"
    );
    assert!(
        folder.snapshot().is_empty(),
        "an empty PUT wrote a file: {:?}",
        folder.snapshot()
    );

    assert_eq!(put(url.clone(), "image/png").await, 200);
    assert_eq!(
        folder.read(&format!("docs/{id}")).as_deref(),
        Some("png bytes")
    );
    // Readable by a web server that serves the folder, as a file the app wrote itself would be.
    let mode = std::fs::metadata(folder.path().join(format!("docs/{id}")))
        .expect("the stored file")
        .permissions()
        .mode();
    assert_eq!(mode & 0o044, 0o044, "mode {mode:o}");
    // Its log (not a terminal) carries no colour codes, and says what was stored.
    let api_log = std::fs::read_to_string(dir.path().join("api.log")).unwrap_or_default();
    assert!(api_log.contains("upload stored"), "{api_log}");
    assert!(
        !api_log.contains('\u{1b}'),
        "colour codes in the log: {api_log:?}"
    );
    eventually(
        Duration::from_secs(10),
        "the watcher processed it",
        || async { db.status(&id).await.as_deref() == Some("processed") },
    )
    .await;

    // Once the URL has expired, it is refused.
    tokio::time::sleep(URL_LIFETIME + Duration::from_secs(1)).await;
    assert_eq!(put(url, "image/png").await, 403);
}

/// A resumable upload through the example API: presigned part URLs, the parts PUT straight to
/// the bucket, the completion through the API, and the CompleteMultipartUpload event moving the
/// record on.
#[tokio::test]
async fn a_resumable_upload_in_parts_is_processed_once_completed() {
    let mut flow = Flow::with_a_working_hook(false).await;
    flow.start_daemon().await;
    let (id, _url) = flow.create("Video").await;
    let start = |body: &'static str| {
        let request = flow
            .http
            .post(format!("{}/docs/{id}/multipart", flow.api_url))
            .body(body);
        async move {
            let response = request.send().await.expect("POST multipart");
            let status = response.status().as_u16();
            (status, response.json::<Value>().await.expect("JSON"))
        }
    };
    for bad in [r#"{}"#, r#"{"parts": 0}"#, r#"{"parts": 10001}"#] {
        assert_eq!(start(bad).await.0, 400, "{bad}");
    }
    let (status, upload) = start(r#"{"parts": 2}"#).await;
    assert_eq!(status, 201, "{upload}");
    let part_urls: Vec<String> = upload["partUrls"]
        .as_array()
        .expect("partUrls")
        .iter()
        .map(|u| u.as_str().expect("a URL").to_owned())
        .collect();
    assert_eq!(part_urls.len(), 2);
    let mut parts = Vec::new();
    for (n, (url, size)) in part_urls.iter().zip([5 * 1024 * 1024, 1000]).enumerate() {
        let response = flow
            .http
            .put(url)
            .body(vec![b'v'; size])
            .send()
            .await
            .expect("PUT a part");
        assert!(response.status().is_success(), "{}", response.status());
        let etag = response
            .headers()
            .get("etag")
            .and_then(|v| v.to_str().ok())
            .expect("an ETag")
            .to_owned();
        parts.push(serde_json::json!({"partNumber": n + 1, "etag": etag}));
    }
    // Uploading, not uploaded: no object yet.
    assert_eq!(flow.get(&id).await.1["status"], "pending");
    let completed = flow
        .http
        .post(upload["completeUrl"].as_str().expect("completeUrl"))
        .body(serde_json::json!({ "parts": parts }).to_string())
        .send()
        .await
        .expect("POST complete");
    assert_eq!(completed.status().as_u16(), 200);
    flow.until_status(&id, "processed", Duration::from_secs(20))
        .await;
    let call = flow.hook_call(&id);
    assert_eq!(call["size"], 5 * 1024 * 1024 + 1000);
    // A doc that is no longer pending takes no new upload.
    assert_eq!(start(r#"{"parts": 1}"#).await.0, 409);
    flow.nothing_lost().await;
}
