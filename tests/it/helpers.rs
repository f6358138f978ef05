//! Test scaffolding over the real services: a fresh Postgres database per test, a fresh bucket per
//! test on the moto server that `scripts/test` starts, and the `reconcile` binary run as a user
//! would run it.

use aws_sdk_s3::Client;
use aws_sdk_s3::config::{BehaviorVersion, Credentials, Region};
use aws_sdk_s3::primitives::ByteStream;
use chrono::{DateTime, Utc};
use serde_json::Value;
use sqlx::postgres::{PgPool, PgPoolOptions};
use sqlx::{AssertSqlSafe, Row};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;
use uuid::Uuid;

pub const PG_ADMIN: &str = "postgres://postgres@127.0.0.1:5432/postgres";

/// The moto server's URL; the test script exports it after starting the server.
pub fn moto_endpoint() -> String {
    std::env::var("MOTO_ENDPOINT").unwrap_or_else(|_| {
        panic!("MOTO_ENDPOINT is not set: run the tests with scripts/test, which starts moto")
    })
}

/// `$RECONCILE_BIN` if set (to run today's tests against an older build), else this build's.
pub fn reconcile_binary() -> PathBuf {
    std::env::var_os("RECONCILE_BIN").map_or_else(
        || PathBuf::from(env!("CARGO_BIN_EXE_reconcile")),
        PathBuf::from,
    )
}

/// The S3 server the bucket tests use: moto, unless `S3_TEST_ENDPOINT` names another one
/// (`scripts/test-garage`), with `S3_TEST_ACCESS_KEY`, `S3_TEST_SECRET_KEY` and
/// `S3_TEST_REGION`. Queues stay on moto.
pub struct S3Target {
    pub endpoint: String,
    pub access_key: String,
    pub secret_key: String,
    pub region: String,
}

pub fn s3_target() -> S3Target {
    let var = |name: &str, default: &str| std::env::var(name).unwrap_or_else(|_| default.into());
    match std::env::var("S3_TEST_ENDPOINT") {
        Ok(endpoint) => S3Target {
            endpoint,
            access_key: var("S3_TEST_ACCESS_KEY", "test"),
            secret_key: var("S3_TEST_SECRET_KEY", "test"),
            region: var("S3_TEST_REGION", "us-east-1"),
        },
        Err(_) => S3Target {
            endpoint: moto_endpoint(),
            access_key: "test".into(),
            secret_key: "test".into(),
            region: "us-east-1".into(),
        },
    }
}

/// A database of its own, dropped (with its connections) when the test ends.
pub struct TestDb {
    pub name: String,
    pub pool: PgPool,
    /// Login roles made for this test (roles are cluster-wide): dropped with the database.
    roles: std::sync::Mutex<Vec<String>>,
}

impl TestDb {
    /// A new database holding the reference `docs` table, its id in `collation` when given.
    pub async fn with_docs(collation: Option<&str>) -> TestDb {
        let name = format!("reconcile_test_{}", Uuid::new_v4().simple());
        let admin = PgPoolOptions::new()
            .max_connections(1)
            .connect(PG_ADMIN)
            .await
            .expect("Postgres at 127.0.0.1:5432 answers (scripts/test starts it)");
        sqlx::query(AssertSqlSafe(format!("CREATE DATABASE {name}")))
            .execute(&admin)
            .await
            .expect("create test database");
        admin.close().await;
        let pool = PgPoolOptions::new()
            .max_connections(4)
            .connect(&format!("postgres://postgres@127.0.0.1:5432/{name}"))
            .await
            .expect("connect to test database");
        let collate = collation
            .map(|c| format!("COLLATE \"{c}\""))
            .unwrap_or_default();
        sqlx::query(AssertSqlSafe(format!(
            "CREATE TABLE docs (
               id          text {collate} PRIMARY KEY,
               title       text NOT NULL DEFAULT '',
               status      text NOT NULL DEFAULT 'pending',
               created_at  timestamptz NOT NULL DEFAULT now(),
               updated_at  timestamptz NOT NULL DEFAULT now()
             )"
        )))
        .execute(&pool)
        .await
        .expect("create docs");
        TestDb {
            name,
            pool,
            roles: Default::default(),
        }
    }

    pub fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:5432/{}", self.name)
    }

    pub fn url_as(&self, role: &str) -> String {
        format!("postgres://{role}@127.0.0.1:5432/{}", self.name)
    }

    /// Insert a doc created `age` ago.
    pub async fn doc(&self, id: &str, status: &str, age: Duration) {
        self.doc_in("docs", id, status, age).await;
    }

    /// Insert a row created `age` ago into another app table shaped like `docs`.
    pub async fn doc_in(&self, table: &str, id: &str, status: &str, age: Duration) {
        let created_at = Utc::now() - chrono::Duration::from_std(age).expect("small age");
        sqlx::query(AssertSqlSafe(format!(
            "INSERT INTO {table} (id, status, created_at, updated_at) VALUES ($1, $2, $3, $3)"
        )))
        .bind(id)
        .bind(status)
        .bind(created_at)
        .execute(&self.pool)
        .await
        .expect("insert doc");
    }

    pub async fn status(&self, id: &str) -> Option<String> {
        self.status_in("docs", id).await
    }

    pub async fn status_in(&self, table: &str, id: &str) -> Option<String> {
        sqlx::query_scalar(AssertSqlSafe(format!(
            "SELECT status FROM {table} WHERE id = $1"
        )))
        .bind(id)
        .fetch_optional(&self.pool)
        .await
        .expect("read status")
    }

    /// Whether every one of `ids` has `status`.
    pub async fn all_have_status<'a>(
        &self,
        ids: impl IntoIterator<Item = &'a String>,
        status: &str,
    ) -> bool {
        for id in ids {
            if self.status(id).await.as_deref() != Some(status) {
                return false;
            }
        }
        true
    }

    pub async fn set_status(&self, id: &str, status: &str) {
        sqlx::query("UPDATE docs SET status = $2 WHERE id = $1")
            .bind(id)
            .bind(status)
            .execute(&self.pool)
            .await
            .expect("update status");
    }

    /// Every row as it is, for before/after comparisons.
    pub async fn snapshot(&self) -> Vec<(String, String, DateTime<Utc>, DateTime<Utc>)> {
        sqlx::query("SELECT id, status, created_at, updated_at FROM docs ORDER BY id COLLATE \"C\"")
            .fetch_all(&self.pool)
            .await
            .expect("snapshot docs")
            .iter()
            .map(|r| {
                (
                    r.get("id"),
                    r.get("status"),
                    r.get("created_at"),
                    r.get("updated_at"),
                )
            })
            .collect()
    }

    /// Whether the reconciler has created its schema in this database.
    pub async fn reconciler_schema_exists(&self) -> bool {
        sqlx::query_scalar::<_, bool>(
            "SELECT EXISTS (SELECT 1 FROM pg_namespace WHERE nspname = 'reconciler')",
        )
        .fetch_one(&self.pool)
        .await
        .expect("read pg_namespace")
    }

    /// The audit log as (doc_id, finding, action, old_status, new_status).
    pub async fn audit(&self) -> Vec<(String, String, String, Option<String>, Option<String>)> {
        sqlx::query(
            "SELECT doc_id, finding, action, old_status, new_status \
             FROM reconciler.audit_log ORDER BY doc_id, seq",
        )
        .fetch_all(&self.pool)
        .await
        .expect("read audit log")
        .iter()
        .map(|r| {
            (
                r.get("doc_id"),
                r.get("finding"),
                r.get("action"),
                r.get("old_status"),
                r.get("new_status"),
            )
        })
        .collect()
    }

    /// A login role that may only read `docs`. Roles are cluster-wide, so the name is unique.
    pub async fn read_only_role(&self) -> String {
        let role = format!("ro_{}", Uuid::new_v4().simple());
        for sql in [
            format!("CREATE ROLE {role} LOGIN"),
            format!("GRANT CONNECT ON DATABASE {} TO {role}", self.name),
            format!("GRANT USAGE ON SCHEMA public TO {role}"),
            format!("GRANT SELECT ON docs TO {role}"),
            format!("REVOKE CREATE ON SCHEMA public FROM {role}"),
            format!("REVOKE CREATE ON DATABASE {} FROM PUBLIC", self.name),
        ] {
            sqlx::query(AssertSqlSafe(sql))
                .execute(&self.pool)
                .await
                .expect("set up read-only role");
        }
        if let Ok(mut roles) = self.roles.lock() {
            roles.push(role.clone());
        }
        role
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        let name = self.name.clone();
        let roles = self.roles.lock().map(|r| r.clone()).unwrap_or_default();
        // Drop runs outside any runtime guarantee: clean up on a thread with its own.
        let cleanup = std::thread::spawn(move || {
            let Ok(rt) = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            else {
                return;
            };
            rt.block_on(async {
                if let Ok(admin) = PgPoolOptions::new()
                    .max_connections(1)
                    .connect(PG_ADMIN)
                    .await
                {
                    let _ = sqlx::query(AssertSqlSafe(format!(
                        "DROP DATABASE IF EXISTS {name} WITH (FORCE)"
                    )))
                    .execute(&admin)
                    .await;
                    for role in roles {
                        let _ = sqlx::query(AssertSqlSafe(format!("DROP ROLE IF EXISTS {role}")))
                            .execute(&admin)
                            .await;
                    }
                }
            });
        });
        let _ = cleanup.join();
    }
}

/// A bucket of its own on the test S3 server (moto, or [`s3_target`]'s).
pub struct TestBucket {
    pub name: String,
    pub client: Client,
    pub endpoint: String,
}

/// A client of the test S3 server at `endpoint` (the server itself, or a proxy in front of it).
pub fn s3_client(endpoint: &str) -> Client {
    let target = s3_target();
    let config = aws_sdk_s3::config::Builder::new()
        .behavior_version(BehaviorVersion::latest())
        .region(Region::new(target.region))
        .credentials_provider(Credentials::new(
            target.access_key,
            target.secret_key,
            None,
            None,
            "tests",
        ))
        .endpoint_url(endpoint)
        .force_path_style(true)
        .build();
    Client::from_conf(config)
}

impl TestBucket {
    pub async fn new() -> TestBucket {
        Self::on(&s3_target().endpoint).await
    }

    pub async fn on(endpoint: &str) -> TestBucket {
        let name = format!("t-{}", &Uuid::new_v4().simple().to_string()[..20]);
        let client = s3_client(endpoint);
        client
            .create_bucket()
            .bucket(&name)
            .send()
            .await
            .unwrap_or_else(|e| panic!("create bucket {name} on {endpoint}: {e:?}"));
        TestBucket {
            name,
            client,
            endpoint: endpoint.to_owned(),
        }
    }

    pub async fn put(&self, key: &str, body: &str) {
        self.put_bytes(key, body.as_bytes().to_vec()).await;
    }

    pub async fn put_bytes(&self, key: &str, body: Vec<u8>) {
        self.client
            .put_object()
            .bucket(&self.name)
            .key(key)
            .body(ByteStream::from(body))
            .send()
            .await
            .unwrap_or_else(|e| panic!("put {key:?}: {e:?}"));
    }

    /// An object's bytes.
    pub async fn get(&self, key: &str) -> Vec<u8> {
        self.client
            .get_object()
            .bucket(&self.name)
            .key(key)
            .send()
            .await
            .unwrap_or_else(|e| panic!("get {key:?}: {e:?}"))
            .body
            .collect()
            .await
            .unwrap_or_else(|e| panic!("read {key:?}: {e:?}"))
            .to_vec()
    }

    /// An object's ETag and Last-Modified, as HEAD shows them.
    pub async fn head(&self, key: &str) -> (String, DateTime<Utc>) {
        let out = self
            .client
            .head_object()
            .bucket(&self.name)
            .key(key)
            .send()
            .await
            .unwrap_or_else(|e| panic!("head {key:?}: {e:?}"));
        let modified = out
            .last_modified()
            .and_then(|t| DateTime::from_timestamp(t.secs(), 0))
            .expect("Last-Modified");
        (out.e_tag().expect("ETag").to_owned(), modified)
    }

    /// Every key with its ETag, to compare before and after.
    pub async fn snapshot(&self) -> BTreeMap<String, String> {
        let mut out = BTreeMap::new();
        let mut token = None;
        loop {
            let page = self
                .client
                .list_objects_v2()
                .bucket(&self.name)
                .encoding_type(aws_sdk_s3::types::EncodingType::Url)
                .set_continuation_token(token)
                .send()
                .await
                .expect("list bucket");
            for o in page.contents() {
                let key = upload_reconciler::model::decode_form(o.key().unwrap_or(""))
                    .expect("utf-8 key");
                out.insert(key, o.e_tag().unwrap_or("").to_owned());
            }
            match page.next_continuation_token() {
                Some(t) if page.is_truncated() == Some(true) => token = Some(t.to_owned()),
                _ => break,
            }
        }
        out
    }

    pub async fn exists(&self, key: &str) -> bool {
        self.snapshot().await.contains_key(key)
    }
}

/// What a run of the binary gave.
pub struct Run {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

impl Run {
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.stdout).unwrap_or_else(|e| {
            panic!(
                "stdout is not one JSON object ({e}):\n{}\nstderr:\n{}",
                self.stdout, self.stderr
            )
        })
    }

    /// The findings of a JSON report as sorted (kind, id, action) triples.
    pub fn findings(&self) -> Vec<(String, String, String)> {
        let report = self.json();
        let mut out: Vec<(String, String, String)> = report["findings"]
            .as_array()
            .expect("findings array")
            .iter()
            .map(|f| {
                (
                    f["kind"].as_str().unwrap_or_default().to_owned(),
                    f["id"].as_str().unwrap_or_default().to_owned(),
                    f["action"].as_str().unwrap_or_default().to_owned(),
                )
            })
            .collect();
        out.sort();
        out
    }
}

/// How to run `reconcile` against one database and bucket; settings are env overrides.
pub struct Reconcile {
    pub database_url: String,
    pub bucket: String,
    pub endpoint: String,
    pub env: Vec<(String, String)>,
}

impl Reconcile {
    pub fn new(db: &TestDb, bucket: &TestBucket) -> Self {
        Self::with_url(db.url(), bucket)
    }

    /// Against the database at `database_url` (any of the three) and `bucket`.
    pub fn with_url(database_url: String, bucket: &TestBucket) -> Self {
        Reconcile {
            database_url,
            bucket: bucket.name.clone(),
            endpoint: bucket.endpoint.clone(),
            env: Vec::new(),
        }
    }

    /// Set `section.key` through its `RECONCILE_SECTION__KEY` variable.
    pub fn set(mut self, key: &str, value: &str) -> Self {
        let var = format!("RECONCILE_{}", key.replace('.', "__").to_uppercase());
        self.env.push((var, value.to_owned()));
        self
    }

    /// The binary with this database, bucket and settings; everything else of the test's
    /// environment is cleared, so nothing of the developer's leaks in.
    fn command(&self, args: &[&str]) -> tokio::process::Command {
        self.command_through(&[], args)
    }

    /// [`command`](Self::command) run through `wrapper` (a program and its arguments, which
    /// then runs the binary), e.g. `setpriv` to run it as another user.
    fn command_through(&self, wrapper: &[&str], args: &[&str]) -> tokio::process::Command {
        let target = s3_target();
        let binary = reconcile_binary();
        let mut cmd = match wrapper {
            [] => tokio::process::Command::new(binary),
            [program, wrapper_args @ ..] => {
                let mut cmd = tokio::process::Command::new(program);
                cmd.args(wrapper_args).arg(binary);
                cmd
            }
        };
        cmd.env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("DATABASE_URL", &self.database_url)
            .env("RECONCILE_STORAGE__BUCKET", &self.bucket)
            .env("RECONCILE_SERVER__LISTEN", "127.0.0.1:0")
            .env("AWS_ACCESS_KEY_ID", &target.access_key)
            .env("AWS_SECRET_ACCESS_KEY", &target.secret_key)
            .env("AWS_REGION", &target.region)
            .env("AWS_EC2_METADATA_DISABLED", "true")
            .args(args)
            .kill_on_drop(true);
        // A folder bucket has no endpoint, and S3 settings beside it are a configuration error.
        // The queue needs none: its URL is on moto's host, which is then its endpoint.
        if !self.endpoint.is_empty() {
            cmd.env("RECONCILE_STORAGE__ENDPOINT_URL", &self.endpoint)
                .env("RECONCILE_STORAGE__FORCE_PATH_STYLE", "true");
        }
        for (k, v) in &self.env {
            cmd.env(k, v);
        }
        cmd
    }

    pub async fn run(&self, args: &[&str]) -> Run {
        self.run_through(&[], args).await
    }

    /// [`run`](Self::run) through `wrapper` (see `command_through`).
    pub async fn run_through(&self, wrapper: &[&str], args: &[&str]) -> Run {
        let mut cmd = self.command_through(wrapper, args);
        let out = tokio::time::timeout(Duration::from_secs(120), cmd.output())
            .await
            .expect("reconcile finished within 120 s (likely hung)")
            .expect("run reconcile");
        Run {
            code: out.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        }
    }
}

/// The scope a deployment's rows carry in the reconciler's tables (`adapters::scope`'s name).
pub fn scope_of(table: &str, bucket: &str, prefix: &str) -> String {
    format!("\"{table}\"/{bucket}/{prefix}")
}

pub const MINUTE: Duration = Duration::from_secs(60);
pub const HOUR: Duration = Duration::from_secs(3600);

pub fn triples(items: &[(&str, &str, &str)]) -> Vec<(String, String, String)> {
    let mut out: Vec<_> = items
        .iter()
        .map(|(k, i, a)| (k.to_string(), i.to_string(), a.to_string()))
        .collect();
    out.sort();
    out
}

/// A queue of its own on moto.
pub struct TestQueue {
    pub url: String,
    pub arn: String,
    pub client: aws_sdk_sqs::Client,
    /// The dead-letter queue's URL, when there is one.
    pub dead_letters: Option<String>,
}

pub fn sqs_client(endpoint: &str) -> aws_sdk_sqs::Client {
    let config = aws_sdk_sqs::config::Builder::new()
        .behavior_version(aws_sdk_sqs::config::BehaviorVersion::latest())
        .region(aws_sdk_sqs::config::Region::new("us-east-1"))
        .credentials_provider(aws_sdk_sqs::config::Credentials::new(
            "test", "test", None, None, "tests",
        ))
        .endpoint_url(endpoint)
        .build();
    aws_sdk_sqs::Client::from_conf(config)
}

impl TestQueue {
    /// A queue whose failures go to a dead-letter queue after `max_receives` receives.
    pub async fn with_dead_letters(max_receives: u32) -> TestQueue {
        let client = sqs_client(&moto_endpoint());
        let dlq = Self::create(&client, "dlq", None).await;
        let policy = serde_json::json!({
            "deadLetterTargetArn": dlq.1,
            "maxReceiveCount": max_receives.to_string(),
        })
        .to_string();
        let (url, arn) = Self::create(&client, "q", Some(policy)).await;
        TestQueue {
            url,
            arn,
            client,
            dead_letters: Some(dlq.0),
        }
    }

    pub async fn without_dead_letters() -> TestQueue {
        let client = sqs_client(&moto_endpoint());
        let (url, arn) = Self::create(&client, "q", None).await;
        TestQueue {
            url,
            arn,
            client,
            dead_letters: None,
        }
    }

    async fn create(
        client: &aws_sdk_sqs::Client,
        tag: &str,
        redrive: Option<String>,
    ) -> (String, String) {
        use aws_sdk_sqs::types::QueueAttributeName;
        let name = format!("{tag}-{}", Uuid::new_v4().simple());
        let mut req = client.create_queue().queue_name(&name);
        if let Some(policy) = redrive {
            req = req.attributes(QueueAttributeName::RedrivePolicy, policy);
        }
        let url = req
            .send()
            .await
            .expect("create queue on moto")
            .queue_url
            .expect("queue url");
        let arn = client
            .get_queue_attributes()
            .queue_url(&url)
            .attribute_names(QueueAttributeName::QueueArn)
            .send()
            .await
            .expect("queue attributes")
            .attributes
            .and_then(|mut a| a.remove(&QueueAttributeName::QueueArn))
            .expect("queue arn");
        (url, arn)
    }

    pub async fn send(&self, body: &str) {
        self.client
            .send_message()
            .queue_url(&self.url)
            .message_body(body)
            .send()
            .await
            .expect("send message");
    }

    /// Messages in the queue, visible and in flight: nothing deleted means nothing lost.
    pub async fn depth(&self) -> u64 {
        self.depth_of(&self.url).await
    }

    /// Messages moved to the dead-letter queue.
    pub async fn dead_letter_depth(&self) -> u64 {
        let dlq = self
            .dead_letters
            .as_deref()
            .expect("a queue with dead letters");
        self.depth_of(dlq).await
    }

    async fn depth_of(&self, url: &str) -> u64 {
        use aws_sdk_sqs::types::QueueAttributeName as A;
        let attrs = self
            .client
            .get_queue_attributes()
            .queue_url(url)
            .attribute_names(A::ApproximateNumberOfMessages)
            .attribute_names(A::ApproximateNumberOfMessagesNotVisible)
            .send()
            .await
            .expect("queue attributes")
            .attributes
            .unwrap_or_default();
        [
            A::ApproximateNumberOfMessages,
            A::ApproximateNumberOfMessagesNotVisible,
        ]
        .iter()
        .map(|a| {
            attrs
                .get(a)
                .and_then(|v| v.parse::<u64>().ok())
                .unwrap_or(0)
        })
        .sum()
    }
}

impl TestBucket {
    /// S3 sends ObjectCreated and ObjectRemoved events of this bucket to `queue`.
    pub async fn notify(&self, queue: &TestQueue) {
        use aws_sdk_s3::types::{Event, NotificationConfiguration, QueueConfiguration};
        let config = QueueConfiguration::builder()
            .queue_arn(&queue.arn)
            .events(Event::from("s3:ObjectCreated:*"))
            .events(Event::from("s3:ObjectRemoved:*"))
            .build()
            .expect("queue configuration");
        self.client
            .put_bucket_notification_configuration()
            .bucket(&self.name)
            .notification_configuration(
                NotificationConfiguration::builder()
                    .queue_configurations(config)
                    .build(),
            )
            .send()
            .await
            .expect("configure notifications");
    }

    /// Upload as a client of the API would: a PUT to a presigned URL.
    pub async fn presigned_put(&self, key: &str, body: &str) {
        let presigned = self
            .client
            .put_object()
            .bucket(&self.name)
            .key(key)
            .presigned(
                aws_sdk_s3::presigning::PresigningConfig::expires_in(Duration::from_secs(600))
                    .expect("presigning config"),
            )
            .await
            .expect("presign");
        let response = reqwest::Client::new()
            .put(presigned.uri())
            .body(body.to_owned())
            .send()
            .await
            .expect("PUT to the presigned URL");
        assert!(
            response.status().is_success(),
            "PUT {key:?}: {}",
            response.status()
        );
    }

    pub async fn delete(&self, key: &str) {
        self.client
            .delete_object()
            .bucket(&self.name)
            .key(key)
            .send()
            .await
            .expect("delete object");
    }
}

impl Reconcile {
    /// Start `reconcile` in the background (the daemon), its stderr kept in `log`.
    pub fn spawn(&self, args: &[&str], log: &Path) -> tokio::process::Child {
        let mut cmd = self.command(args);
        cmd.stdout(std::process::Stdio::null())
            .stderr(std::fs::File::create(log).expect("daemon log file"));
        cmd.spawn().expect("start reconcile")
    }
}

/// Wait until `check` holds, polling; panics with `what` after `limit`.
pub async fn eventually<F, Fut>(limit: Duration, what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + limit;
    while !check().await {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for: {what}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// An HTTP server answering every request `500 Internal Server Error` with the body `body` makes
/// of the request's head: `(length, start)`, the start followed by `x` up to the length, written
/// until the client stops reading. Its `host:port`.
pub async fn failing_server(
    body: impl Fn(&str) -> (u64, String) + Send + Sync + 'static,
) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let host = listener.local_addr().expect("address").to_string();
    let body = std::sync::Arc::new(body);
    tokio::spawn(async move {
        while let Ok((mut conn, _)) = listener.accept().await {
            let body = body.clone();
            tokio::spawn(async move {
                let mut head = Vec::new();
                let mut chunk = [0u8; 4096];
                while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                    match conn.read(&mut chunk).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => head.extend_from_slice(&chunk[..n]),
                    }
                }
                let (size, start) = body(&String::from_utf8_lossy(&head));
                let response = format!(
                    "HTTP/1.1 500 Internal Server Error\r\ncontent-length: {size}\r\n\
                     connection: close\r\n\r\n{start}"
                );
                if conn.write_all(response.as_bytes()).await.is_err() {
                    return;
                }
                let block = vec![b'x'; 1 << 16];
                let mut left = size.saturating_sub(start.len() as u64);
                while left > 0 {
                    let n = left.min(block.len() as u64) as usize;
                    if conn.write_all(&block[..n]).await.is_err() {
                        return;
                    }
                    left -= n as u64;
                }
            });
        }
    });
    host
}

/// The `last_error` of the doc's job, which must have one.
pub async fn job_last_error(db: &TestDb, id: &str) -> String {
    let last_error: Option<String> =
        sqlx::query_scalar("SELECT last_error FROM reconciler.jobs WHERE doc_id = $1")
            .bind(id)
            .fetch_one(&db.pool)
            .await
            .expect("the doc's job");
    last_error.expect("a failed job keeps its error")
}

/// How the test hook answers one call.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Reply {
    Status(u16),
    /// Never answer (until the caller gives up).
    Hang,
}

/// A real HTTP server standing in for the API's post-processing endpoint. It answers each doc's
/// n-th call (0-based) as `plan(n)` says, after `delay`, and records every call.
pub struct HookServer {
    pub url: String,
    state: std::sync::Arc<HookState>,
    task: tokio::task::JoinHandle<()>,
}

#[derive(Default)]
struct HookState {
    calls: std::sync::Mutex<Vec<Value>>,
    in_flight: std::sync::Mutex<BTreeMap<String, usize>>,
    max_overlap: std::sync::atomic::AtomicUsize,
}

impl HookServer {
    pub async fn start(
        delay: Duration,
        plan: impl Fn(usize) -> Reply + Send + Sync + 'static,
    ) -> HookServer {
        use std::sync::Arc;
        use std::sync::atomic::Ordering;
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind hook server");
        let url = format!("http://{}/process", listener.local_addr().expect("address"));
        let state = Arc::new(HookState::default());
        let plan = Arc::new(plan);
        let shared = state.clone();
        let task = tokio::spawn(async move {
            while let Ok((mut conn, _)) = listener.accept().await {
                let state = shared.clone();
                let plan = plan.clone();
                tokio::spawn(async move {
                    // Read the head, then Content-Length bytes of body.
                    let mut buf = Vec::new();
                    let mut chunk = [0u8; 4096];
                    let (head_end, length) = loop {
                        let Ok(n) = conn.read(&mut chunk).await else {
                            return;
                        };
                        if n == 0 {
                            return;
                        }
                        buf.extend_from_slice(&chunk[..n]);
                        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                            let head = String::from_utf8_lossy(&buf[..end]).to_lowercase();
                            let length = head
                                .lines()
                                .find_map(|l| l.strip_prefix("content-length:"))
                                .and_then(|v| v.trim().parse::<usize>().ok())
                                .unwrap_or(0);
                            break (end + 4, length);
                        }
                    };
                    while buf.len() < head_end + length {
                        let Ok(n) = conn.read(&mut chunk).await else {
                            return;
                        };
                        if n == 0 {
                            return;
                        }
                        buf.extend_from_slice(&chunk[..n]);
                    }
                    let body: Value = serde_json::from_slice(&buf[head_end..head_end + length])
                        .unwrap_or(Value::Null);
                    let id = body["id"].as_str().unwrap_or_default().to_owned();
                    let nth = {
                        let mut calls = state.calls.lock().expect("calls");
                        let nth = calls.iter().filter(|c| c["id"] == body["id"]).count();
                        calls.push(body);
                        nth
                    };
                    {
                        let mut in_flight = state.in_flight.lock().expect("in flight");
                        let n = in_flight.entry(id.clone()).or_default();
                        *n += 1;
                        state.max_overlap.fetch_max(*n, Ordering::SeqCst);
                    }
                    let reply = plan(nth);
                    tokio::time::sleep(delay).await;
                    if let Ok(mut in_flight) = state.in_flight.lock()
                        && let Some(n) = in_flight.get_mut(&id)
                    {
                        *n -= 1;
                    }
                    let code = match reply {
                        Reply::Status(code) => code,
                        Reply::Hang => {
                            tokio::time::sleep(Duration::from_secs(3600)).await;
                            return;
                        }
                    };
                    let response = format!(
                        "HTTP/1.1 {code} X\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"
                    );
                    let _ = conn.write_all(response.as_bytes()).await;
                });
            }
        });
        HookServer { url, state, task }
    }

    /// Every call's JSON body, in arrival order.
    pub fn calls(&self) -> Vec<Value> {
        self.state
            .calls
            .lock()
            .map(|c| c.clone())
            .unwrap_or_default()
    }

    pub fn calls_for(&self, id: &str) -> usize {
        self.calls().iter().filter(|c| c["id"] == id).count()
    }

    /// The most calls for one doc that were ever in progress at once.
    pub fn max_overlap(&self) -> usize {
        self.state
            .max_overlap
            .load(std::sync::atomic::Ordering::SeqCst)
    }
}

impl Drop for HookServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// The address a daemon logged that it listens on (`listening on 127.0.0.1:PORT`).
pub async fn daemon_address(log: &Path) -> String {
    let mut found = String::new();
    eventually(Duration::from_secs(30), "the daemon to listen", || {
        let text = std::fs::read_to_string(log).unwrap_or_default();
        let addr = text
            .split("listening on ")
            .nth(1)
            .and_then(|rest| rest.split(|c: char| c.is_whitespace() || c == '"').next())
            .map(str::to_owned);
        if let Some(addr) = addr {
            found = addr;
        }
        let ready = !found.is_empty();
        async move { ready }
    })
    .await;
    found
}

/// GET a daemon endpoint: (status, body).
pub async fn http_get(addr: &str, path: &str) -> (u16, String) {
    match reqwest::get(format!("http://{addr}{path}")).await {
        Ok(response) => {
            let status = response.status().as_u16();
            (status, response.text().await.unwrap_or_default())
        }
        Err(e) => (0, e.to_string()),
    }
}

/// The series of `reconcile_actions_total` for an applied action of a finding kind, as printed.
pub fn applied_actions(action: &str, kind: &str) -> String {
    format!("reconcile_actions_total{{action=\"{action}\",kind=\"{kind}\",result=\"applied\"}}")
}

/// The value of one series in a Prometheus text body, by its full name with labels as printed.
pub fn metric_value(body: &str, series: &str) -> Option<f64> {
    body.lines()
        .find(|l| l.starts_with(series) && l[series.len()..].starts_with(' '))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

/// A folder of its own, swept as a `file://` bucket; removed when the test ends.
pub struct TestFolder {
    dir: tempfile::TempDir,
}

impl TestFolder {
    pub fn new() -> TestFolder {
        TestFolder {
            dir: tempfile::tempdir().expect("create a temporary folder"),
        }
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    /// `storage.bucket` for this folder.
    pub fn url(&self) -> String {
        format!("file://{}", self.path().display())
    }

    /// Write the file of `key`, creating its folders.
    pub fn put(&self, key: &str, body: &str) {
        let path = self.path().join(key);
        std::fs::create_dir_all(path.parent().expect("a key has a parent folder"))
            .expect("create folders");
        std::fs::write(&path, body).unwrap_or_else(|e| panic!("write {key:?}: {e}"));
    }

    pub fn read(&self, key: &str) -> Option<String> {
        std::fs::read_to_string(self.path().join(key)).ok()
    }

    /// Every file as key and body, to compare before and after.
    pub fn snapshot(&self) -> BTreeMap<String, String> {
        fn walk(dir: &Path, prefix: &str, out: &mut BTreeMap<String, String>) {
            for entry in std::fs::read_dir(dir).expect("read folder") {
                let entry = entry.expect("folder entry");
                let name = entry.file_name().into_string().expect("utf-8 name");
                let key = format!("{prefix}{name}");
                if entry.file_type().expect("file type").is_dir() {
                    walk(&entry.path(), &format!("{key}/"), out);
                } else {
                    out.insert(
                        key,
                        std::fs::read_to_string(entry.path()).expect("read file"),
                    );
                }
            }
        }
        let mut out = BTreeMap::new();
        walk(self.path(), "", &mut out);
        out
    }
}

impl Reconcile {
    /// `reconcile` over this database and a folder bucket.
    pub fn on_folder(db: &TestDb, folder: &TestFolder) -> Self {
        Reconcile {
            database_url: db.url(),
            ..Reconcile::on_folder_url(folder)
        }
    }

    /// `reconcile` over a folder bucket; the database is the caller's to set.
    pub fn on_folder_url(folder: &TestFolder) -> Self {
        Reconcile {
            database_url: String::new(),
            bucket: folder.url(),
            endpoint: String::new(),
            // Files the tests write are whole at once; the tests of settling set their own.
            env: vec![("RECONCILE_STORAGE__SETTLE_TIME".into(), "0s".into())],
        }
    }
}

/// One HTTP request as [`FaultProxy`] saw it.
#[derive(Debug, Clone)]
pub struct SeenRequest {
    pub method: String,
    /// Path and query, as sent (percent-encoded).
    pub target: String,
}

impl SeenRequest {
    /// The path without the query.
    pub fn path(&self) -> &str {
        self.target.split('?').next().unwrap_or_default()
    }
}

type BeforeHook =
    dyn Fn(SeenRequest) -> futures::future::BoxFuture<'static, ()> + Send + Sync + 'static;
type RewriteHook = dyn Fn(&SeenRequest, Vec<u8>) -> Vec<u8> + Send + Sync + 'static;

/// An HTTP message split into its head lines and its body.
struct Message {
    start: String,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Message {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// The message with `Connection: close`, without the headers named in `drop`.
    fn encode(&self, drop: &[&str]) -> Vec<u8> {
        let mut out = format!("{}\r\n", self.start);
        for (name, value) in &self.headers {
            if !drop.iter().any(|d| name.eq_ignore_ascii_case(d))
                && !name.eq_ignore_ascii_case("connection")
            {
                out.push_str(&format!("{name}: {value}\r\n"));
            }
        }
        out.push_str("Connection: close\r\n\r\n");
        let mut bytes = out.into_bytes();
        bytes.extend_from_slice(&self.body);
        bytes
    }
}

/// Read one message's head, then `Content-Length` bytes of body, or (`to_eof`) all until the
/// peer closes. `None` when the connection closed before a whole head.
async fn read_message(
    stream: &mut tokio::net::TcpStream,
    to_eof: bool,
    bodiless: bool,
) -> Option<Message> {
    use tokio::io::AsyncReadExt;
    let mut buf = Vec::new();
    let mut chunk = [0u8; 64 * 1024];
    let head_end = loop {
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break end;
        }
        let n = stream.read(&mut chunk).await.ok()?;
        if n == 0 {
            return None;
        }
        buf.extend_from_slice(&chunk[..n]);
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
    let mut lines = head.split("\r\n");
    let start = lines.next()?.to_owned();
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_owned(), v.trim().to_owned()))
        .collect();
    let mut message = Message {
        start,
        headers,
        body: buf[head_end + 4..].to_vec(),
    };
    let length = message
        .header("content-length")
        .and_then(|v| v.parse::<usize>().ok());
    match length {
        _ if bodiless => message.body.clear(),
        Some(length) => {
            while message.body.len() < length {
                let n = stream.read(&mut chunk).await.ok()?;
                if n == 0 {
                    break;
                }
                message.body.extend_from_slice(&chunk[..n]);
            }
        }
        None if to_eof => {
            while let Ok(n) = stream.read(&mut chunk).await {
                if n == 0 {
                    break;
                }
                message.body.extend_from_slice(&chunk[..n]);
            }
            if message
                .header("transfer-encoding")
                .is_some_and(|v| v.eq_ignore_ascii_case("chunked"))
            {
                message.body = dechunk(&message.body);
            }
        }
        None => {}
    }
    Some(message)
}

/// The payload of a chunked body.
fn dechunk(mut raw: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    while let Some(line_end) = raw.windows(2).position(|w| w == b"\r\n") {
        let size_text = String::from_utf8_lossy(&raw[..line_end]);
        let size_hex = size_text.split(';').next().unwrap_or("0").trim();
        let Ok(size) = usize::from_str_radix(size_hex, 16) else {
            break;
        };
        let data = line_end + 2;
        if size == 0 || raw.len() < data + size {
            break;
        }
        out.extend_from_slice(&raw[data..data + size]);
        raw = &raw[(data + size + 2).min(raw.len())..];
    }
    out
}

/// An app's SQLite database in a temporary folder, holding the reference `docs` table with its
/// times as `CURRENT_TIMESTAMP` text, as SQLite apps commonly write them.
pub struct TestSqlite {
    dir: tempfile::TempDir,
    pub pool: sqlx::SqlitePool,
}

impl TestSqlite {
    pub async fn with_docs() -> TestSqlite {
        let dir = tempfile::tempdir().expect("create a temporary folder");
        let options = sqlx::sqlite::SqliteConnectOptions::new()
            .filename(dir.path().join("app.db"))
            .create_if_missing(true);
        let pool = sqlx::sqlite::SqlitePoolOptions::new()
            .max_connections(2)
            .connect_with(options)
            .await
            .expect("create the SQLite database");
        sqlx::query(
            "CREATE TABLE docs (
               id          TEXT PRIMARY KEY,
               title       TEXT NOT NULL DEFAULT '',
               status      TEXT NOT NULL DEFAULT 'pending',
               created_at  TEXT NOT NULL DEFAULT CURRENT_TIMESTAMP,
               updated_at  TEXT NOT NULL DEFAULT CURRENT_TIMESTAMP
             )",
        )
        .execute(&pool)
        .await
        .expect("create docs");
        TestSqlite { dir, pool }
    }

    pub fn path(&self) -> std::path::PathBuf {
        self.dir.path().join("app.db")
    }

    pub fn url(&self) -> String {
        format!("sqlite://{}", self.path().display())
    }

    /// The reconciler's own file beside the app's database.
    pub fn side_path(&self) -> PathBuf {
        let mut side = self.path().into_os_string();
        side.push(".reconciler.db");
        side.into()
    }

    /// A read-only pool on [`side_path`](Self::side_path).
    pub async fn side_pool(&self) -> sqlx::SqlitePool {
        let options = sqlx::sqlite::SqliteConnectOptions::new()
            .filename(self.side_path())
            .read_only(true);
        sqlx::SqlitePool::connect_with(options)
            .await
            .expect("open the side file")
    }

    /// Insert a doc created `age` ago, its times as `CURRENT_TIMESTAMP` text.
    pub async fn doc(&self, id: &str, status: &str, age: Duration) {
        let created_at = Utc::now() - chrono::Duration::from_std(age).expect("small age");
        self.doc_at(
            id,
            status,
            &created_at.format("%Y-%m-%d %H:%M:%S").to_string(),
        )
        .await;
    }

    /// Insert a doc whose created_at is `created_at` as written.
    pub async fn doc_at(&self, id: &str, status: &str, created_at: &str) {
        sqlx::query(
            "INSERT INTO docs (id, status, created_at, updated_at) VALUES (?1, ?2, ?3, ?3)",
        )
        .bind(id)
        .bind(status)
        .bind(created_at)
        .execute(&self.pool)
        .await
        .expect("insert doc");
    }

    pub async fn status(&self, id: &str) -> Option<String> {
        sqlx::query_scalar("SELECT status FROM docs WHERE id = ?1")
            .bind(id)
            .fetch_optional(&self.pool)
            .await
            .expect("read status")
    }
}

pub const MARIADB_ADMIN: &str = "mysql://root@127.0.0.1:3306/mysql";

/// A MariaDB database of its own (and the reconciler's beside it), dropped when the test ends.
/// `docs` is the reference table in the server's default collation (`utf8mb4_general_ci`: case-
/// and accent-insensitive), as a framework's migration makes it.
pub struct TestMaria {
    pub name: String,
    pub pool: sqlx::MySqlPool,
    /// Users made for this test (users are the server's): dropped with the database.
    users: std::sync::Mutex<Vec<String>>,
}

impl TestMaria {
    pub async fn with_docs() -> TestMaria {
        Self::with_table(
            "CREATE TABLE docs (
               id          VARCHAR(255) PRIMARY KEY,
               title       VARCHAR(255) NOT NULL DEFAULT '',
               status      VARCHAR(32) NOT NULL DEFAULT 'pending',
               created_at  DATETIME(6) NOT NULL DEFAULT CURRENT_TIMESTAMP(6),
               updated_at  DATETIME(6) NOT NULL DEFAULT CURRENT_TIMESTAMP(6)
             ) DEFAULT CHARSET = utf8mb4",
        )
        .await
    }

    /// A new database holding the table `create` makes.
    pub async fn with_table(create: &str) -> TestMaria {
        let name = format!("reconcile_test_{}", Uuid::new_v4().simple());
        let admin = sqlx::mysql::MySqlPoolOptions::new()
            .max_connections(1)
            .connect(MARIADB_ADMIN)
            .await
            .expect("MariaDB at 127.0.0.1:3306 answers (scripts/test starts it)");
        sqlx::query(AssertSqlSafe(format!("CREATE DATABASE {name}")))
            .execute(&admin)
            .await
            .expect("create test database");
        admin.close().await;
        // Identifiers quoted as on the other databases (`"docs"`), as the reconciler's sessions
        // quote them.
        let pool = sqlx::mysql::MySqlPoolOptions::new()
            .max_connections(4)
            .after_connect(|conn, _| {
                Box::pin(async move {
                    sqlx::query("SET SESSION sql_mode = CONCAT(@@sql_mode, ',ANSI_QUOTES')")
                        .execute(conn)
                        .await
                        .map(drop)
                })
            })
            .connect(&format!("mysql://root@127.0.0.1:3306/{name}"))
            .await
            .expect("connect to test database");
        sqlx::query(AssertSqlSafe(create.to_owned()))
            .execute(&pool)
            .await
            .expect("create the app's table");
        TestMaria {
            name,
            pool,
            users: Default::default(),
        }
    }

    /// The URL of a new user that may only read `docs`.
    pub async fn read_only_url(&self) -> String {
        let user = format!("ro_{}", &Uuid::new_v4().simple().to_string()[..12]);
        for sql in [
            format!("CREATE USER '{user}'@'%'"),
            format!("GRANT SELECT ON {}.docs TO '{user}'@'%'", self.name),
        ] {
            self.execute(&sql).await.expect("set up a read-only user");
        }
        if let Ok(mut users) = self.users.lock() {
            users.push(user.clone());
        }
        format!("mysql://{user}@127.0.0.1:3306/{}", self.name)
    }

    pub fn url(&self) -> String {
        format!("mysql://root@127.0.0.1:3306/{}", self.name)
    }

    /// Run one statement on the app's database.
    pub async fn execute(&self, sql: &str) -> Result<(), sqlx::Error> {
        sqlx::raw_sql(AssertSqlSafe(sql.to_owned()))
            .execute(&self.pool)
            .await
            .map(drop)
    }

    /// Whether the reconciler has created its database beside the app's.
    pub async fn reconciler_database_exists(&self) -> bool {
        let found: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM information_schema.schemata WHERE schema_name = ?",
        )
        .bind(format!("{}_reconciler", self.name))
        .fetch_one(&self.pool)
        .await
        .expect("read information_schema");
        found > 0
    }

    /// The audit log as (doc_id, finding, action, old_status, new_status).
    pub async fn audit(&self) -> Vec<(String, String, String, Option<String>, Option<String>)> {
        sqlx::query_as(AssertSqlSafe(format!(
            "SELECT CONVERT(doc_id USING utf8mb4), finding, action, old_status, new_status \
             FROM {}_reconciler.audit_log ORDER BY doc_id, seq",
            self.name
        )))
        .fetch_all(&self.pool)
        .await
        .expect("read audit log")
    }

    /// The sweep history as (outcome, records_scanned).
    pub async fn sweeps(&self) -> Vec<(String, i64)> {
        sqlx::query_as(AssertSqlSafe(format!(
            "SELECT outcome, records_scanned FROM {}_reconciler.sweeps ORDER BY started_at",
            self.name
        )))
        .fetch_all(&self.pool)
        .await
        .expect("read sweep history")
    }

    /// Insert a doc created `age` ago (UTC, as the app's sessions write it here).
    pub async fn doc(&self, id: &str, status: &str, age: Duration) {
        let created_at = Utc::now() - chrono::Duration::from_std(age).expect("small age");
        sqlx::query("INSERT INTO docs (id, status, created_at, updated_at) VALUES (?, ?, ?, ?)")
            .bind(id)
            .bind(status)
            .bind(created_at.naive_utc())
            .bind(created_at.naive_utc())
            .execute(&self.pool)
            .await
            .expect("insert doc");
    }

    pub async fn status(&self, id: &str) -> Option<String> {
        // The exact id: the column's collation would match `A` to `a`.
        sqlx::query_scalar("SELECT status FROM docs WHERE BINARY id = ?")
            .bind(id)
            .fetch_optional(&self.pool)
            .await
            .expect("read status")
    }
}

impl Drop for TestMaria {
    fn drop(&mut self) {
        let name = self.name.clone();
        let users = self.users.lock().map(|u| u.clone()).unwrap_or_default();
        let cleanup = std::thread::spawn(move || {
            let Ok(rt) = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            else {
                return;
            };
            rt.block_on(async {
                if let Ok(admin) = sqlx::mysql::MySqlPoolOptions::new()
                    .max_connections(1)
                    .connect(MARIADB_ADMIN)
                    .await
                {
                    let own = format!("{name}_reconciler");
                    // The test's sessions may still hold locks (a transaction dropped as the
                    // test ended is rolled back only when its connection is next used): end
                    // them, as Postgres's DROP DATABASE ... WITH (FORCE) does.
                    let sessions: Vec<i64> = sqlx::query_scalar(
                        "SELECT CAST(ID AS SIGNED) FROM information_schema.PROCESSLIST WHERE DB IN (?, ?) \
                         AND ID <> CONNECTION_ID()",
                    )
                    .bind(&name)
                    .bind(&own)
                    .fetch_all(&admin)
                    .await
                    .unwrap_or_default();
                    for session in sessions {
                        let _ = sqlx::query(AssertSqlSafe(format!("KILL {session}")))
                            .execute(&admin)
                            .await;
                    }
                    for db in [name.clone(), own] {
                        let _ = sqlx::query(AssertSqlSafe(format!("DROP DATABASE IF EXISTS {db}")))
                            .execute(&admin)
                            .await;
                    }
                    for user in users {
                        let _ = sqlx::query(AssertSqlSafe(format!("DROP USER IF EXISTS '{user}'@'%'")))
                            .execute(&admin)
                            .await;
                    }
                }
            });
        });
        let _ = cleanup.join();
    }
}

/// What a [`FaultProxy`] does to what it carries; switched at run time with [`FaultProxy::set`].
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Fault {
    /// Forward faithfully.
    Pass,
    /// Close every new connection at once, and cut the live ones: the dependency is down.
    Reset,
    /// Accept and read, never answer, and the live connections go silent too: a dependency that
    /// hangs. When the stall ends, the connections it held are cut (the peer forgot them; a
    /// client without a timeout would wait forever otherwise), and new ones pass again.
    Stall,
    /// HTTP only: answer the picked requests with this error, in the service's own shape,
    /// instead of forwarding them.
    Answer(HttpError, Pick),
}

impl Fault {
    /// The kind counted in [`FaultProxy::injected`].
    pub fn label(self) -> &'static str {
        match self {
            Fault::Pass => "pass",
            Fault::Reset => "reset",
            Fault::Stall => "stall",
            Fault::Answer(HttpError::InternalError, _) => "500",
            Fault::Answer(HttpError::ServiceUnavailable, _) => "503",
            Fault::Answer(HttpError::SlowDown, _) => "slowdown",
        }
    }
}

/// The errors a busy or broken AWS endpoint answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HttpError {
    /// 500 InternalError.
    InternalError,
    /// 503 ServiceUnavailable.
    ServiceUnavailable,
    /// S3's 503 SlowDown (SQS: its throttling error).
    SlowDown,
}

/// Which of the matching requests an [`Fault::Answer`] answers.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Pick {
    All,
    /// The first and then every n-th (the 1st, n+1-th, ...): each first try fails, its retry
    /// passes, when n is 2 and nothing else is matched meanwhile.
    EveryNth(usize),
    /// Each with this probability, from the proxy's seeded RNG.
    Fraction(f64),
    /// The first try of each request (a target not seen since the rule was set): its retry, the
    /// same target, passes, however many other requests run at the same time.
    FirstTry,
}

/// A fault and the requests it applies to: those whose target (path and query) contains `only`,
/// after the first `after` of them. A TCP proxy sees no requests: it applies the fault to every
/// connection.
#[derive(Debug, Clone, PartialEq)]
pub struct Rule {
    pub fault: Fault,
    pub only: Option<String>,
    pub after: usize,
}

impl From<Fault> for Rule {
    fn from(fault: Fault) -> Rule {
        Rule {
            fault,
            only: None,
            after: 0,
        }
    }
}

/// A proxy that injects faults into one dependency of a daemon, on the wire: a TCP proxy (for
/// Postgres) or an HTTP/1.1 proxy (for S3 and SQS: one request per connection, `Connection:
/// close` both ways, no compression) that can also act before forwarding a request and rewrite
/// response bodies. The fault is switched at run time; what was injected is counted per kind.
pub struct FaultProxy {
    /// `http://127.0.0.1:PORT`.
    pub endpoint: String,
    pub port: u16,
    state: std::sync::Arc<FaultState>,
    task: tokio::task::JoinHandle<()>,
}

struct FaultState {
    upstream: String,
    http: bool,
    rule: tokio::sync::watch::Sender<Rule>,
    /// Requests that matched the rule since it was set.
    matched: std::sync::atomic::AtomicUsize,
    /// The targets of those requests (for [`Pick::FirstTry`]).
    tried: std::sync::Mutex<std::collections::HashSet<String>>,
    rng: std::sync::Mutex<fastrand::Rng>,
    injected: std::sync::Mutex<BTreeMap<&'static str, usize>>,
    rewritten: std::sync::atomic::AtomicUsize,
    before: Option<std::sync::Arc<BeforeHook>>,
    rewrite: Option<std::sync::Arc<RewriteHook>>,
}

impl FaultProxy {
    /// Bytes both ways, for any TCP protocol (`upstream` is `host:port`).
    pub async fn tcp(upstream: &str) -> FaultProxy {
        Self::start(upstream, false, None, None).await
    }

    /// HTTP requests one by one, so that faults can pick requests and answer them.
    pub async fn http(upstream: &str) -> FaultProxy {
        Self::start(upstream, true, None, None).await
    }

    /// An HTTP proxy that runs `before` (to its end) ahead of forwarding each request, and
    /// `rewrite` over each response body.
    pub async fn rewriting(
        upstream: &str,
        before: impl Fn(SeenRequest) -> futures::future::BoxFuture<'static, ()> + Send + Sync + 'static,
        rewrite: impl Fn(&SeenRequest, Vec<u8>) -> Vec<u8> + Send + Sync + 'static,
    ) -> FaultProxy {
        Self::start(
            upstream,
            true,
            Some(std::sync::Arc::new(before)),
            Some(std::sync::Arc::new(rewrite)),
        )
        .await
    }

    /// Listings carry milliseconds in `<LastModified>` (`.123Z`), as garage's and AWS's do,
    /// where moto's have whole seconds (`.000Z`). HEAD still answers in whole seconds.
    pub async fn with_listing_milliseconds(upstream: &str) -> FaultProxy {
        Self::rewriting(
            upstream,
            |_| Box::pin(async {}),
            |request, body| {
                if !request.target.contains("list-type=2") {
                    return body;
                }
                let xml = String::from_utf8_lossy(&body);
                let mut parts = xml.split("<LastModified>");
                let mut out = parts.next().unwrap_or_default().to_owned();
                for part in parts {
                    // `2026-11-25T23:44:28.000Z</LastModified>...`: keep the second, set the rest.
                    let second = part.get(..19).unwrap_or(part);
                    let rest = part
                        .find("</LastModified>")
                        .map(|end| &part[end..])
                        .unwrap_or_default();
                    out.push_str(&format!("<LastModified>{second}.123Z{rest}"));
                }
                out.into_bytes()
            },
        )
        .await
    }

    async fn start(
        upstream: &str,
        http: bool,
        before: Option<std::sync::Arc<BeforeHook>>,
        rewrite: Option<std::sync::Arc<RewriteHook>>,
    ) -> FaultProxy {
        use std::sync::Arc;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind proxy");
        let port = listener.local_addr().expect("proxy address").port();
        let state = Arc::new(FaultState {
            upstream: upstream.trim_start_matches("http://").to_owned(),
            http,
            rule: tokio::sync::watch::Sender::new(Rule::from(Fault::Pass)),
            matched: Default::default(),
            tried: Default::default(),
            rng: std::sync::Mutex::new(fastrand::Rng::with_seed(fault_seed())),
            injected: Default::default(),
            rewritten: Default::default(),
            before,
            rewrite,
        });
        let shared = state.clone();
        let task = tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let state = shared.clone();
                tokio::spawn(async move {
                    if state.http {
                        carry_http(&state, client).await;
                    } else {
                        carry_tcp(&state, client).await;
                    }
                });
            }
        });
        FaultProxy {
            endpoint: format!("http://127.0.0.1:{port}"),
            port,
            state,
            task,
        }
    }

    /// Apply `rule` (or a fault to everything) from now on.
    pub fn set(&self, rule: impl Into<Rule>) {
        self.state
            .matched
            .store(0, std::sync::atomic::Ordering::SeqCst);
        if let Ok(mut tried) = self.state.tried.lock() {
            tried.clear();
        }
        self.state.rule.send_replace(rule.into());
    }

    /// Faults injected so far, per kind ([`Fault::label`]): connections reset or stalled,
    /// requests answered with an error.
    pub fn injected(&self) -> BTreeMap<&'static str, usize> {
        self.state
            .injected
            .lock()
            .map(|i| i.clone())
            .unwrap_or_default()
    }

    /// How many response bodies the rewrite changed.
    pub fn rewritten(&self) -> usize {
        self.state
            .rewritten
            .load(std::sync::atomic::Ordering::SeqCst)
    }

    /// `db`'s URL through this proxy.
    pub fn url_of(&self, db: &TestDb) -> String {
        format!("postgres://postgres@127.0.0.1:{}/{}", self.port, db.name)
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        // Cut what is still carried: the connection tasks outlive the accept loop otherwise.
        self.state.rule.send_replace(Rule::from(Fault::Reset));
        self.task.abort();
    }
}

/// `FAULT_SEED`, or one drawn now (a test prints the one it used, to replay it).
pub fn fault_seed() -> u64 {
    static SEED: std::sync::OnceLock<u64> = std::sync::OnceLock::new();
    *SEED.get_or_init(|| {
        std::env::var("FAULT_SEED")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| fastrand::u64(..))
    })
}

impl FaultState {
    fn count(&self, fault: Fault) {
        if let Ok(mut injected) = self.injected.lock() {
            *injected.entry(fault.label()).or_default() += 1;
        }
    }

    /// The fault for one request under `rule` (counting it when it matches).
    fn fault_for(&self, rule: &Rule, request: &SeenRequest) -> Fault {
        use std::sync::atomic::Ordering;
        if rule.fault == Fault::Pass
            || rule
                .only
                .as_ref()
                .is_some_and(|only| !request.target.contains(only.as_str()))
        {
            return Fault::Pass;
        }
        let n = self.matched.fetch_add(1, Ordering::SeqCst);
        let Some(i) = n.checked_sub(rule.after) else {
            return Fault::Pass;
        };
        let picked = match rule.fault {
            Fault::Answer(_, Pick::EveryNth(every)) => i % every.max(1) == 0,
            Fault::Answer(_, Pick::Fraction(p)) => self.rng.lock().is_ok_and(|mut r| r.f64() < p),
            Fault::Answer(_, Pick::FirstTry) => self
                .tried
                .lock()
                .is_ok_and(|mut tried| tried.insert(request.target.clone())),
            _ => true,
        };
        if picked { rule.fault } else { Fault::Pass }
    }
}

/// Read and drop what the client sends until it gives up or the stall ends; the caller then
/// closes the connection.
async fn hold(client: &mut tokio::net::TcpStream, rule: &mut tokio::sync::watch::Receiver<Rule>) {
    use tokio::io::AsyncReadExt;
    let mut sink = [0u8; 4096];
    loop {
        tokio::select! {
            read = client.read(&mut sink) => if matches!(read, Ok(0) | Err(_)) { return },
            _ = rule.wait_for(|r| r.fault != Fault::Stall) => return,
        }
    }
}

/// The fault a live connection meets when the rule changes under it: `None` while it may go on.
async fn interrupted(
    rule: &mut tokio::sync::watch::Receiver<Rule>,
    target: Option<&str>,
) -> Option<Fault> {
    let hits = |r: &Rule| {
        matches!(r.fault, Fault::Reset | Fault::Stall)
            && match (&r.only, target) {
                (Some(only), Some(target)) => target.contains(only.as_str()),
                _ => true,
            }
    };
    rule.wait_for(hits).await.ok().map(|r| r.fault)
}

async fn carry_tcp(state: &FaultState, mut client: tokio::net::TcpStream) {
    let mut rule = state.rule.subscribe();
    let fault = rule.borrow_and_update().fault;
    match fault {
        Fault::Reset => return state.count(fault),
        Fault::Stall => {
            state.count(fault);
            return hold(&mut client, &mut rule).await;
        }
        _ => {}
    }
    let Ok(mut server) = tokio::net::TcpStream::connect(&state.upstream).await else {
        return;
    };
    let cut = tokio::select! {
        _ = tokio::io::copy_bidirectional(&mut client, &mut server) => return,
        cut = interrupted(&mut rule, None) => cut,
    };
    if let Some(fault) = cut {
        state.count(fault);
        if fault == Fault::Stall {
            hold(&mut client, &mut rule).await;
        }
    }
}

async fn carry_http(state: &FaultState, mut client: tokio::net::TcpStream) {
    use tokio::io::AsyncWriteExt;
    let mut rule = state.rule.subscribe();
    let current = rule.borrow_and_update().clone();
    if current.only.is_none() && matches!(current.fault, Fault::Reset | Fault::Stall) {
        // Down for everything: no need to read what it was going to be.
        state.count(current.fault);
        if current.fault == Fault::Stall {
            hold(&mut client, &mut rule).await;
        }
        return;
    }
    let Some(request) = read_message(&mut client, false, false).await else {
        return;
    };
    let mut words = request.start.split(' ');
    let (Some(method), Some(target)) = (words.next(), words.next()) else {
        return;
    };
    let seen = SeenRequest {
        method: method.to_owned(),
        target: target.to_owned(),
    };
    let current = rule.borrow_and_update().clone();
    let fault = state.fault_for(&current, &seen);
    match fault {
        Fault::Pass => {}
        Fault::Reset => return state.count(fault),
        Fault::Stall => {
            state.count(fault);
            return hold(&mut client, &mut rule).await;
        }
        Fault::Answer(error, _) => {
            state.count(fault);
            let _ = client
                .write_all(&error_answer(error, &request, &seen))
                .await;
            let _ = client.shutdown().await;
            return;
        }
    }
    let cut = tokio::select! {
        _ = forward(state, &mut client, &request, &seen) => return,
        cut = interrupted(&mut rule, Some(&seen.target)) => cut,
    };
    if let Some(fault) = cut {
        state.count(fault);
        if fault == Fault::Stall {
            hold(&mut client, &mut rule).await;
        }
    }
}

/// An AWS error answer: S3's XML error document, or for SQS (whose JSON protocol requests name
/// their operation in `X-Amz-Target`) the JSON error with the query-compatible code in
/// `x-amzn-query-error`, as SQS sends them. A HEAD gets the status alone, as S3 answers it.
fn error_answer(error: HttpError, request: &Message, seen: &SeenRequest) -> Vec<u8> {
    let (status, reason, code, message) = match error {
        HttpError::InternalError => (
            500,
            "Internal Server Error",
            "InternalError",
            "We encountered an internal error. Please try again.",
        ),
        HttpError::ServiceUnavailable => (
            503,
            "Service Unavailable",
            "ServiceUnavailable",
            "Service is unable to handle request.",
        ),
        HttpError::SlowDown => (
            503,
            "Slow Down",
            "SlowDown",
            "Please reduce your request rate.",
        ),
    };
    let request_id = Uuid::new_v4().simple().to_string();
    if request.header("x-amz-target").is_some() {
        let (status, code, fault) = match error {
            HttpError::SlowDown => (400, "RequestThrottled", "Sender"),
            _ => (status, code, "Receiver"),
        };
        let body = serde_json::json!({
            "__type": format!("com.amazonaws.sqs#{code}"),
            "message": message,
        });
        return http_answer(
            status,
            reason,
            "application/x-amz-json-1.0",
            &format!("x-amzn-query-error: {code};{fault}\r\nx-amzn-requestid: {request_id}\r\n"),
            &body.to_string(),
        );
    }
    let body = if seen.method == "HEAD" {
        String::new()
    } else {
        format!(
            "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<Error><Code>{code}</Code>\
             <Message>{message}</Message><RequestId>{request_id}</RequestId>\
             <HostId>fault-proxy</HostId></Error>"
        )
    };
    http_answer(
        status,
        reason,
        "application/xml",
        &format!("x-amz-request-id: {request_id}\r\n"),
        &body,
    )
}

fn http_answer(
    status: u16,
    reason: &str,
    content_type: &str,
    headers: &str,
    body: &str,
) -> Vec<u8> {
    format!(
        "HTTP/1.1 {status} {reason}\r\nContent-Type: {content_type}\r\n{headers}\
         Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

/// Forward one request and its answer, through the hooks.
async fn forward(
    state: &FaultState,
    client: &mut tokio::net::TcpStream,
    request: &Message,
    seen: &SeenRequest,
) -> Option<()> {
    use tokio::io::AsyncWriteExt;
    if let Some(before) = &state.before {
        before(seen.clone()).await;
    }
    let mut server = tokio::net::TcpStream::connect(&state.upstream).await.ok()?;
    server
        .write_all(&request.encode(&["accept-encoding", "keep-alive"]))
        .await
        .ok()?;
    let bodiless = seen.method == "HEAD";
    let mut response = read_message(&mut server, true, bodiless).await?;
    if let Some(rewrite) = &state.rewrite {
        let original = std::mem::take(&mut response.body);
        response.body = rewrite(seen, original.clone());
        if response.body != original {
            state
                .rewritten
                .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        }
    }
    let status = response.start.split(' ').nth(1).unwrap_or_default();
    let sized = seen.method != "HEAD" && status != "204" && status != "304";
    let drop: &[&str] = if sized {
        &["transfer-encoding", "content-length"]
    } else {
        &["transfer-encoding"]
    };
    let mut bytes = response.encode(drop);
    if sized {
        // The body may have changed: say its real length, after the other headers.
        let head_end = bytes.windows(4).position(|w| w == b"\r\n\r\n")? + 2;
        let length = format!("Content-Length: {}\r\n", response.body.len());
        bytes.splice(head_end..head_end, length.into_bytes());
    }
    client.write_all(&bytes).await.ok()?;
    client.shutdown().await.ok()
}
