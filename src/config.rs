//! Configuration: defaults, then the TOML file, then `DATABASE_URL`, then `RECONCILE_<SECTION>__<KEY>`
//! variables, then command-line flags. Every error names the key at fault and where its value came
//! from. `config/reconcile.toml` documents every key.

use crate::decide::Policy;
use crate::error::{Error, Result};
use crate::execute::AfterUpload;
use crate::model::{MissingAction, OrphanAction, Status};
use crate::rules::{Breaker, Quarantine, Rules};
use figment::Figment;
use figment::providers::{Env, Format, Toml};
use serde::{Deserialize, Deserializer};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// The whole configuration, validated.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    #[serde(default)]
    pub database: DatabaseConfig,
    #[serde(default)]
    pub storage: StorageConfig,
    #[serde(default)]
    pub sweep: SweepConfig,
    #[serde(default)]
    pub events: EventsConfig,
    #[serde(default)]
    pub processing: ProcessingConfig,
    #[serde(default)]
    pub server: ServerConfig,
    #[serde(default)]
    pub retention: RetentionConfig,
}

/// `[retention]`: how long the daemon keeps the reconciler's rows that only grow. Pruned in
/// batches every `interval` (never in `daemon --dry-run`). Failed jobs and the audit log are kept.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RetentionConfig {
    /// Jobs `done` (processed or cancelled) longer ago than this.
    #[serde(deserialize_with = "duration")]
    pub finished_jobs: Duration,
    /// Per-key event state (the newest sequencer seen) untouched this long. Keep it longer than
    /// an event can wait in the queue (SQS keeps messages at most 14 days), or a late duplicate
    /// could be taken for news.
    #[serde(deserialize_with = "duration")]
    pub key_events: Duration,
    /// What was noted of adopted objects, this long ago.
    #[serde(deserialize_with = "duration")]
    pub objects: Duration,
    /// How often the daemon prunes.
    #[serde(deserialize_with = "duration")]
    pub interval: Duration,
}

impl Default for RetentionConfig {
    fn default() -> Self {
        const DAY: u64 = 24 * 3600;
        RetentionConfig {
            finished_jobs: Duration::from_secs(30 * DAY),
            key_events: Duration::from_secs(30 * DAY),
            objects: Duration::from_secs(90 * DAY),
            interval: Duration::from_secs(3600),
        }
    }
}

impl RetentionConfig {
    pub fn retention(&self) -> crate::catalog::Retention {
        crate::catalog::Retention {
            finished_jobs: self.finished_jobs,
            key_events: self.key_events,
            objects: self.objects,
        }
    }
}

/// `[server]`: where the daemon serves /metrics, /healthz and /readyz.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServerConfig {
    /// `host:port`; port 0 picks a free port (the log says which).
    pub listen: String,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            listen: "127.0.0.1:9187".into(),
        }
    }
}

/// `[database]`: where the app table is and how it is spelled.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DatabaseConfig {
    /// `postgres://user@host/db`. Also read from `DATABASE_URL`.
    pub url: Option<String>,
    /// The app table, optionally schema-qualified (`app.docs`).
    pub table: TableName,
    pub id_column: Ident,
    /// The column that holds the object's key below `storage.prefix`, when it is not the id
    /// (Django's `FileField`, Laravel's `path`, ActiveStorage's `key`); `None`: the id is the key.
    #[serde(deserialize_with = "optional_ident")]
    pub key_column: Option<Ident>,
    pub status_column: Ident,
    pub created_at_column: Ident,
    /// Touched on every status change when set; `""` when the table has no such column.
    #[serde(deserialize_with = "optional_ident")]
    pub updated_at_column: Option<Ident>,
    /// The app's word for each of the six statuses.
    pub statuses: StatusWords,
    /// Connections the reconciler may hold.
    pub max_connections: u32,
    /// Postgres: how long one query (or one row of a stream, or a commit) may go unanswered
    /// before it fails naming the database: a connection that goes silent (a network path that
    /// drops packets, a hung proxy) must not hold a sweep, an event or a job forever.
    #[serde(deserialize_with = "duration")]
    pub query_timeout: Duration,
    /// MySQL/MariaDB: the database that holds the reconciler's own tables (default
    /// `<the app's database>_reconciler`).
    pub reconciler_database: Option<String>,
    /// `[database.adopt_values]`: literal values for other columns of a row that
    /// `orphan_action = "adopt"` creates (`title = "recovered upload"`).
    pub adopt_values: std::collections::BTreeMap<String, AdoptValue>,
}

/// A literal of `[database.adopt_values]`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(untagged)]
pub enum AdoptValue {
    Bool(bool),
    Integer(i64),
    Float(f64),
    Text(String),
}

impl DatabaseConfig {
    /// The column that pairs rows with objects: the key column, or the id.
    pub fn pairing_column(&self) -> &Ident {
        self.key_column.as_ref().unwrap_or(&self.id_column)
    }
}

impl Default for DatabaseConfig {
    fn default() -> Self {
        DatabaseConfig {
            url: None,
            table: TableName {
                schema: None,
                name: Ident("docs".into()),
            },
            id_column: Ident("id".into()),
            key_column: None,
            status_column: Ident("status".into()),
            created_at_column: Ident("created_at".into()),
            updated_at_column: Some(Ident("updated_at".into())),
            statuses: StatusWords::default(),
            max_connections: 4,
            query_timeout: Duration::from_secs(60),
            reconciler_database: None,
            adopt_values: Default::default(),
        }
    }
}

/// `[database.statuses]`: the app's own word for each status.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct StatusWords {
    pub pending: String,
    pub uploaded: String,
    pub processed: String,
    pub failed: String,
    pub expired: String,
    pub missing: String,
}

impl Default for StatusWords {
    fn default() -> Self {
        StatusWords {
            pending: "pending".into(),
            uploaded: "uploaded".into(),
            processed: "processed".into(),
            failed: "failed".into(),
            expired: "expired".into(),
            missing: "missing".into(),
        }
    }
}

impl StatusWords {
    /// The app's word for `status`.
    pub fn word(&self, status: Status) -> &str {
        match status {
            Status::Pending => &self.pending,
            Status::Uploaded => &self.uploaded,
            Status::Processed => &self.processed,
            Status::Failed => &self.failed,
            Status::Expired => &self.expired,
            Status::Missing => &self.missing,
        }
    }

    /// The status an app word stands for; `None` for words the mapping does not know.
    pub fn status(&self, word: &str) -> Option<Status> {
        Status::ALL.into_iter().find(|s| self.word(*s) == word)
    }
}

/// `[storage]`: the bucket and the part of it that holds the docs.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StorageConfig {
    /// An S3 bucket name, or a local folder as `file:///absolute/path`.
    pub bucket: String,
    /// Keys of docs are `prefix + id`.
    pub prefix: String,
    pub region: Option<String>,
    /// For S3-compatible servers; `AWS_ENDPOINT_URL` works too.
    pub endpoint_url: Option<String>,
    pub force_path_style: bool,
    /// Keys per ListObjectsV2 page (1 to 1000).
    pub list_page_size: Option<i32>,
    /// Key ranges a sweep lists at once (1 to 64; 1: one listing stream); default
    /// [`DEFAULT_LIST_CONCURRENCY`]. The sweep cuts the key space at ids of the table.
    pub list_concurrency: Option<usize>,
    /// How long one try of a request to the bucket may wait for the first byte of its answer;
    /// default [`DEFAULT_STORAGE_READ_TIMEOUT`].
    #[serde(deserialize_with = "some_duration")]
    pub read_timeout: Option<Duration>,
    /// Advanced: objects larger than this many bytes are copied in parts (UploadPartCopy)
    /// rather than by one CopyObject; 1 to 5 GiB, default 5 GiB (S3's CopyObject limit).
    pub multipart_copy_threshold: Option<u64>,
    /// How long the upload URLs the app hands out stay valid (a presigned PUT's expiry). The
    /// example upload API signs with it; the sweep must not judge a pending record stale while
    /// its URL still works, so `sweep.pending_ttl` may not be shorter.
    #[serde(deserialize_with = "duration")]
    pub upload_url_lifetime: Duration,
    /// Folder buckets: how long a file must have been at its key (by the later of its mtime
    /// and ctime) before the sweep acts on it, since a file is visible while it is written;
    /// default [`DEFAULT_SETTLE_TIME`]. S3 objects appear whole: an S3 setting it is not.
    #[serde(deserialize_with = "some_duration")]
    pub settle_time: Option<Duration>,
    /// `[storage.inventory]`: sweep from an S3 Inventory instead of listing the bucket.
    pub inventory: Option<InventoryConfig>,
}

impl Default for StorageConfig {
    fn default() -> Self {
        StorageConfig {
            bucket: String::new(),
            prefix: String::new(),
            region: None,
            endpoint_url: None,
            force_path_style: false,
            list_page_size: None,
            list_concurrency: None,
            multipart_copy_threshold: None,
            read_timeout: None,
            upload_url_lifetime: Duration::from_secs(300),
            settle_time: None,
            inventory: None,
        }
    }
}

/// `storage.list_concurrency` unless set: measured on garage in BENCHMARKS.md.
pub const DEFAULT_LIST_CONCURRENCY: usize = 8;

/// `storage.read_timeout` unless set: a HEAD or a listing page answers in milliseconds, and a
/// large copy's answer starts at once (S3 keeps the connection busy while it copies).
pub const DEFAULT_STORAGE_READ_TIMEOUT: Duration = Duration::from_secs(30);

/// `storage.settle_time` unless set: an app writing a file writes it in one go, seconds at most
/// for the large ones; a file untouched for this long is complete.
pub const DEFAULT_SETTLE_TIME: Duration = Duration::from_secs(10);

/// Where `storage.bucket` says the objects are.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BucketLocation<'a> {
    /// An S3 bucket, by name.
    S3(&'a str),
    /// A local folder, by absolute path (`file:///srv/uploads`).
    Folder(&'a Path),
}

impl StorageConfig {
    /// How long an object must have been at its key before it is judged: a folder's
    /// `settle_time`; zero for S3, whose objects appear whole.
    pub fn settle_time(&self) -> Duration {
        match self.location() {
            Ok(BucketLocation::Folder(_)) => self.settle_time.unwrap_or(DEFAULT_SETTLE_TIME),
            _ => Duration::ZERO,
        }
    }

    /// Read `bucket`: a `file:` URL names a local folder, anything else an S3 bucket. The path is
    /// taken as written (no percent-decoding), so `file:///srv/my uploads` is that folder.
    pub fn location(&self) -> std::result::Result<BucketLocation<'_>, String> {
        let Some(rest) = self.bucket.strip_prefix("file:") else {
            return Ok(BucketLocation::S3(&self.bucket));
        };
        match rest.strip_prefix("//") {
            Some(path) if path.starts_with('/') && !path.contains('\0') => {
                Ok(BucketLocation::Folder(Path::new(path)))
            }
            _ => Err(format!(
                "{:?} is not a local folder URL: write file:// and the folder's absolute path, \
                 like file:///srv/uploads",
                self.bucket
            )),
        }
    }
}

/// `[storage.inventory]`: the sweep reads the newest S3 Inventory report of the bucket instead
/// of listing it (see docs/inventory.md). Multipart uploads are still listed live, and every
/// finding that rests on an object's presence or absence is confirmed by a HEAD.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InventoryConfig {
    /// The inventory configuration's destination as AWS lays it out:
    /// `s3://dest-bucket/prefix/source-bucket/config-id/`.
    pub url: String,
    /// The oldest inventory the sweep uses; an older newest report stops the sweep.
    #[serde(default = "default_inventory_max_age", deserialize_with = "duration")]
    pub max_age: Duration,
    /// The memory the external sort of the inventory may hold (`64MiB`, `512KiB`, or bytes).
    #[serde(default = "default_inventory_memory", deserialize_with = "byte_size")]
    pub memory: u64,
}

const fn default_inventory_max_age() -> Duration {
    Duration::from_secs(48 * 3600)
}

const fn default_inventory_memory() -> u64 {
    64 * 1024 * 1024
}

/// The least `storage.inventory.memory`: the merge's own buffers take half a megabyte.
pub const MIN_INVENTORY_MEMORY: u64 = 1024 * 1024;

impl InventoryConfig {
    /// The destination's bucket and key prefix (ending in `/`).
    pub fn location(&self) -> std::result::Result<(&str, String), String> {
        let rest = self.url.strip_prefix("s3://").ok_or_else(|| {
            format!(
                "{:?} is not an s3:// URL like s3://inventory-bucket/prefix/source-bucket/config-id/",
                self.url
            )
        })?;
        let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
        if bucket.is_empty() || prefix.trim_matches('/').is_empty() {
            return Err(format!(
                "{:?} names no bucket and folder: write the inventory's destination, like \
                 s3://inventory-bucket/prefix/source-bucket/config-id/",
                self.url
            ));
        }
        Ok((bucket, format!("{}/", prefix.trim_end_matches('/'))))
    }
}

impl StorageConfig {
    fn validate_inventory(&self) -> Result<()> {
        let Some(inventory) = &self.inventory else {
            return Ok(());
        };
        if let Ok(BucketLocation::Folder(_)) = self.location() {
            return Err(Error::config(
                "storage.inventory.url",
                "is set, but storage.bucket names a local folder: an inventory describes an S3 \
                 bucket",
            ));
        }
        if cfg!(not(feature = "s3")) {
            return Err(Error::config(
                "storage.inventory.url",
                "this reconcile was built without S3 support (cargo's `s3` feature)",
            ));
        }
        inventory
            .location()
            .map_err(|message| Error::config("storage.inventory.url", message))?;
        if inventory.max_age.is_zero() {
            return Err(Error::config(
                "storage.inventory.max_age",
                "must be more than 0s",
            ));
        }
        if inventory.memory < MIN_INVENTORY_MEMORY {
            return Err(Error::config(
                "storage.inventory.memory",
                format!("{} bytes is less than the least, 1MiB", inventory.memory),
            ));
        }
        Ok(())
    }
}

/// A size in bytes: a number, or a string with a binary unit (`64MiB`, `512KiB`, `1GiB`).
fn byte_size<'de, D: Deserializer<'de>>(d: D) -> std::result::Result<u64, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Raw {
        Number(u64),
        Text(String),
    }
    let text = match Raw::deserialize(d)? {
        Raw::Number(n) => return Ok(n),
        Raw::Text(text) => text,
    };
    let trimmed = text.trim();
    let digits = trimmed.trim_end_matches(|c: char| c.is_ascii_alphabetic());
    let unit = match trimmed[digits.len()..].trim() {
        "" | "B" => 1,
        "KiB" => 1024,
        "MiB" => 1024 * 1024,
        "GiB" => 1024 * 1024 * 1024,
        _ => 0,
    };
    digits
        .trim()
        .parse::<u64>()
        .ok()
        .filter(|_| unit > 0)
        .and_then(|n| n.checked_mul(unit))
        .ok_or_else(|| {
            serde::de::Error::custom(format!(
                "{text:?} is not a size like 64MiB, 512KiB or a number of bytes"
            ))
        })
}

/// `[sweep]`: grace periods, what to do about orphans, and the safety limits.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SweepConfig {
    #[serde(deserialize_with = "duration")]
    pub pending_ttl: Duration,
    #[serde(deserialize_with = "duration")]
    pub orphan_grace: Duration,
    pub orphan_action: OrphanAction,
    pub quarantine_prefix: String,
    pub allow_bucket_root: bool,
    pub max_action_ratio: f64,
    pub max_action_floor: u64,
    /// When the daemon sweeps: cron with seconds (`sec min hour day month weekday`), UTC.
    pub schedule: String,
    /// How long a record may stay `uploaded` without a live processing job (`stuck_processing`).
    #[serde(deserialize_with = "duration")]
    pub processing_timeout: Duration,
    /// How long a multipart upload may stay in progress before it is `abandoned_multipart`
    /// (its record's, whatever the record says; one without a record: `orphan_grace`).
    #[serde(deserialize_with = "duration")]
    pub multipart_grace: Duration,
    /// What to do about a record whose object is gone: `mark` it missing (default), or
    /// `restore` the version under its delete marker in a versioned bucket (see the README for
    /// why it is opt-in).
    pub missing_action: MissingAction,
    /// How recent a delete marker must be for `restore` to remove it.
    #[serde(deserialize_with = "duration")]
    pub restore_window: Duration,
}

impl Default for SweepConfig {
    fn default() -> Self {
        SweepConfig {
            pending_ttl: Duration::from_secs(3600),
            orphan_grace: Duration::from_secs(24 * 3600),
            orphan_action: OrphanAction::Report,
            quarantine_prefix: "quarantine/".into(),
            allow_bucket_root: false,
            max_action_ratio: 0.2,
            max_action_floor: 100,
            processing_timeout: Duration::from_secs(15 * 60),
            multipart_grace: Duration::from_secs(7 * 24 * 3600),
            missing_action: MissingAction::Mark,
            restore_window: Duration::from_secs(7 * 24 * 3600),
            schedule: "0 */15 * * * *".into(),
        }
    }
}

impl SweepConfig {
    /// The parsed schedule.
    pub fn cron(&self) -> std::result::Result<cron::Schedule, cron::error::Error> {
        self.schedule.parse()
    }

    /// How each key is judged, with objects judged once `settle_time` old.
    pub fn policy(&self, settle_time: Duration) -> Policy {
        Policy {
            pending_ttl: self.pending_ttl,
            orphan_grace: self.orphan_grace,
            orphan_action: self.orphan_action,
            processing_timeout: self.processing_timeout,
            multipart_grace: self.multipart_grace,
            settle_time,
            missing_action: self.missing_action,
            restore_window: self.restore_window,
        }
    }

    pub fn quarantine(&self) -> Quarantine {
        Quarantine::new(self.quarantine_prefix.clone())
    }

    pub fn breaker(&self) -> Breaker {
        Breaker {
            max_action_ratio: self.max_action_ratio,
            max_action_floor: self.max_action_floor,
        }
    }
}

/// `[events]`: the SQS queue that S3 notifies, and how the daemon consumes it.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct EventsConfig {
    /// The queue's URL; required by `reconcile daemon`.
    pub queue_url: Option<String>,
    /// Concurrent consumer loops.
    pub pollers: usize,
    /// Long-poll wait per receive (at most 20s, SQS's limit).
    #[serde(deserialize_with = "duration")]
    pub wait_time: Duration,
    /// How long a received batch stays invisible to other consumers; extended while it runs.
    #[serde(deserialize_with = "duration")]
    pub visibility_timeout: Duration,
    /// Defaults to `storage.region`.
    pub region: Option<String>,
    /// For SQS-compatible servers; `AWS_ENDPOINT_URL` works too.
    pub endpoint_url: Option<String>,
    /// How long one try of a request to the queue may wait for the first byte of its answer,
    /// beyond `wait_time` (a receive's long poll).
    #[serde(deserialize_with = "duration")]
    pub read_timeout: Duration,
}

impl Default for EventsConfig {
    fn default() -> Self {
        EventsConfig {
            queue_url: None,
            pollers: 1,
            wait_time: Duration::from_secs(20),
            visibility_timeout: Duration::from_secs(300),
            region: None,
            endpoint_url: None,
            read_timeout: Duration::from_secs(10),
        }
    }
}

impl EventsConfig {
    /// The queue to consume: `queue_url`, unless it is unset or empty (an empty
    /// `RECONCILE_EVENTS__QUEUE_URL` unsets the file's).
    pub fn queue(&self) -> Option<&str> {
        self.queue_url.as_deref().filter(|url| !url.is_empty())
    }
}

/// `[processing]`: what runs after an upload is confirmed, and how it is retried.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ProcessingConfig {
    pub hook: HookKind,
    /// For `hook = "webhook"`: POSTed `{id, key, bucket, size, etag, attempt}`; 2xx is success.
    pub url: Option<String>,
    /// For `hook = "command"`: the argv; it gets DOC_ID, OBJECT_KEY, BUCKET, ATTEMPT in its
    /// environment; exit 0 is success.
    pub command: Option<Vec<String>>,
    /// One attempt's limit; running past it is a failure.
    #[serde(deserialize_with = "duration")]
    pub timeout: Duration,
    pub max_attempts: u32,
    #[serde(deserialize_with = "duration")]
    pub backoff_base: Duration,
    #[serde(deserialize_with = "duration")]
    pub backoff_max: Duration,
    /// Worker loops per daemon.
    pub workers: usize,
    /// How long past `timeout` a job's lease lasts: a job still running after `timeout +
    /// lease_grace` is taken to have lost its worker and is claimed again.
    #[serde(deserialize_with = "duration")]
    pub lease_grace: Duration,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum HookKind {
    /// No post-processing: a confirmed upload is `processed` at once.
    #[default]
    None,
    Webhook,
    Command,
}

impl Default for ProcessingConfig {
    fn default() -> Self {
        ProcessingConfig {
            hook: HookKind::None,
            url: None,
            command: None,
            timeout: Duration::from_secs(30),
            max_attempts: 10,
            backoff_base: Duration::from_secs(10),
            backoff_max: Duration::from_secs(3600),
            workers: 1,
            lease_grace: Duration::from_secs(60),
        }
    }
}

impl ProcessingConfig {
    /// Without a hook a confirmed upload is done at once; with one, it is queued for the hook.
    pub fn after_upload(&self) -> AfterUpload {
        match self.hook {
            HookKind::None => AfterUpload::MarkProcessed,
            HookKind::Webhook | HookKind::Command => AfterUpload::Enqueue,
        }
    }

    /// A worker holds a job this long; past it the job is another worker's to take.
    pub fn lease(&self) -> Duration {
        self.timeout + self.lease_grace
    }
}

/// A SQL identifier from the config. Any text but NUL, at most 63 bytes (Postgres' limit); it is
/// always quoted when it goes into SQL, so it can never be read as SQL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ident(String);

impl Ident {
    pub fn new(raw: &str) -> std::result::Result<Self, String> {
        if raw.is_empty() {
            return Err("an identifier cannot be empty".into());
        }
        if raw.contains('\0') {
            return Err(format!("{raw:?} holds a NUL character"));
        }
        if raw.len() > 63 {
            return Err(format!("{raw:?} is longer than 63 bytes"));
        }
        Ok(Ident(raw.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The identifier quoted for SQL: `"my ""odd"" column"`.
    pub fn quoted(&self) -> String {
        format!("\"{}\"", self.0.replace('"', "\"\""))
    }
}

impl<'de> Deserialize<'de> for Ident {
    fn deserialize<D: Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        let raw = String::deserialize(d)?;
        Ident::new(&raw).map_err(serde::de::Error::custom)
    }
}

fn optional_ident<'de, D: Deserializer<'de>>(d: D) -> std::result::Result<Option<Ident>, D::Error> {
    let raw = String::deserialize(d)?;
    if raw.is_empty() {
        return Ok(None);
    }
    Ident::new(&raw).map(Some).map_err(serde::de::Error::custom)
}

/// The file a `sqlite://` URL names: `sqlite://app.db` (relative), `sqlite:///srv/app.db`.
pub fn sqlite_path(url: &str) -> std::result::Result<PathBuf, String> {
    // Shown redacted, as every database URL: the options refused here may hold a password.
    let shown = || crate::redact::url(url);
    let path = url
        .strip_prefix("sqlite://")
        .or_else(|| url.strip_prefix("sqlite:"))
        .ok_or_else(|| format!("{:?} is not a sqlite:// URL", shown()))?;
    if path.contains('?') {
        return Err(format!(
            "{:?} has URL options; give only the path of the database file",
            shown()
        ));
    }
    if path.is_empty() || path == ":memory:" {
        return Err(format!("{:?} names no database file", shown()));
    }
    Ok(PathBuf::from(path))
}

/// `mariadb://` is the same as `mysql://`.
pub fn is_mysql_url(url: &str) -> bool {
    url.starts_with("mysql:") || url.starts_with("mariadb:")
}

/// `table` or `schema.table`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TableName {
    pub schema: Option<Ident>,
    pub name: Ident,
}

impl TableName {
    pub fn quoted(&self) -> String {
        match &self.schema {
            Some(schema) => format!("{}.{}", schema.quoted(), self.name.quoted()),
            None => self.name.quoted(),
        }
    }
}

impl<'de> Deserialize<'de> for TableName {
    fn deserialize<D: Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        let raw = String::deserialize(d)?;
        let parsed = match raw.split_once('.') {
            Some((schema, name)) => Ident::new(schema).and_then(|schema| {
                Ident::new(name).map(|name| TableName {
                    schema: Some(schema),
                    name,
                })
            }),
            None => Ident::new(&raw).map(|name| TableName { schema: None, name }),
        };
        parsed.map_err(serde::de::Error::custom)
    }
}

/// The longest duration a setting takes. The catalogs turn durations into times (when a lease
/// ends, when a retry comes, the cutoff of pruning), and chrono's times end in the year 262143:
/// with a century at most every such time exists, and no setting needs more.
pub const MAX_DURATION: Duration = Duration::from_secs(100 * 365 * 24 * 3600);

fn duration<'de, D: Deserializer<'de>>(d: D) -> std::result::Result<Duration, D::Error> {
    let raw = String::deserialize(d)?;
    let duration = humantime::parse_duration(raw.trim()).map_err(|e| {
        serde::de::Error::custom(format!(
            "{raw:?} is not a duration like 90s, 15m or 24h ({e})"
        ))
    })?;
    if duration > MAX_DURATION {
        return Err(serde::de::Error::custom(format!(
            "{raw:?} is longer than 100 years"
        )));
    }
    Ok(duration)
}

fn some_duration<'de, D: Deserializer<'de>>(
    d: D,
) -> std::result::Result<Option<Duration>, D::Error> {
    duration(d).map(Some)
}

/// Values given on the command line; they win over everything else.
#[derive(Debug, Clone, Default)]
pub struct Overrides {
    pub config_file: Option<PathBuf>,
    pub database_url: Option<String>,
    pub bucket: Option<String>,
    pub prefix: Option<String>,
    pub queue_url: Option<String>,
}

impl Config {
    /// The plain values the engine runs by.
    pub fn rules(&self) -> Rules {
        Rules {
            policy: self.sweep.policy(self.storage.settle_time()),
            quarantine: self.sweep.quarantine(),
            breaker: self.sweep.breaker(),
            after_upload: self.processing.after_upload(),
        }
    }

    /// Read the layers in order and validate the result.
    pub fn load(overrides: &Overrides) -> Result<Config> {
        let mut figment = Figment::new();
        if let Some(path) = &overrides.config_file {
            check_readable(path)?;
            figment = figment.merge(Toml::file_exact(path));
        }
        if let Ok(url) = std::env::var("DATABASE_URL").map(|u| u.trim().to_owned())
            && !url.is_empty()
        {
            figment = figment.merge(("database.url", url));
        }
        // Only `RECONCILE_<SECTION>__<KEY>`: `RECONCILE_CONFIG` and friends are not settings.
        figment = figment.merge(
            Env::prefixed("RECONCILE_")
                .filter(|key| key.as_str().contains("__"))
                .split("__"),
        );
        if let Some(url) = &overrides.database_url {
            figment = figment.merge(("database.url", url));
        }
        if let Some(bucket) = &overrides.bucket {
            figment = figment.merge(("storage.bucket", bucket));
        }
        if let Some(prefix) = &overrides.prefix {
            figment = figment.merge(("storage.prefix", prefix));
        }
        if let Some(queue_url) = &overrides.queue_url {
            figment = figment.merge(("events.queue_url", queue_url));
        }
        let config: Config = figment.extract().map_err(from_figment)?;
        config.validate()?;
        Ok(config)
    }

    /// Parse a TOML document alone (no environment, no flags): for tests and tools.
    pub fn from_toml(text: &str) -> Result<Config> {
        let config: Config = Figment::from(Toml::string(text))
            .extract()
            .map_err(from_figment)?;
        config.validate()?;
        Ok(config)
    }

    /// The secret values this configuration holds (passwords and tokens in its URLs, the webhook's
    /// whole query), so that `redact::text` hides them wherever a client library repeats them.
    pub fn secrets(&self) -> Vec<String> {
        let urls = [
            &self.database.url,
            &self.storage.endpoint_url,
            &self.events.queue_url,
            &self.events.endpoint_url,
        ];
        let mut secrets: Vec<String> = urls
            .into_iter()
            .flatten()
            .flat_map(|url| crate::redact::secrets_in_url(url))
            .collect();
        if let Some(url) = &self.processing.url {
            secrets.extend(crate::redact::secrets_in_endpoint(url));
        }
        secrets
    }

    /// Checks that span keys, or that serde cannot express.
    pub fn validate(&self) -> Result<()> {
        let db = &self.database;
        match db.url.as_deref() {
            None | Some("") => {
                return Err(Error::config(
                    "database.url",
                    "not set (set it in the config file, DATABASE_URL or --database-url)",
                ));
            }
            Some(url) if url.starts_with("postgres://") || url.starts_with("postgresql://") => {}
            Some(url) if url.starts_with("sqlite:") => {
                sqlite_path(url).map_err(|message| Error::config("database.url", message))?;
            }
            #[cfg(feature = "mysql")]
            Some(url) if is_mysql_url(url) => {}
            #[cfg(not(feature = "mysql"))]
            Some(url) if is_mysql_url(url) => {
                return Err(Error::config(
                    "database.url",
                    format!(
                        "{:?} is a MySQL/MariaDB database, and this reconcile was built without \
                         MySQL support (cargo's `mysql` feature, on by default); use a default \
                         build",
                        crate::redact::url(url)
                    ),
                ));
            }
            Some(url) => {
                return Err(Error::config(
                    "database.url",
                    format!(
                        "{:?} is not a postgres://, mysql://, mariadb:// or sqlite:// URL",
                        crate::redact::url(url)
                    ),
                ));
            }
        }
        for column in db.adopt_values.keys() {
            let key = format!("database.adopt_values.{column}");
            Ident::new(column).map_err(|message| Error::config(key.clone(), message))?;
            let mapped = [
                Some(&db.id_column),
                db.key_column.as_ref(),
                Some(&db.status_column),
            ];
            if mapped.into_iter().flatten().any(|c| c.as_str() == column) {
                return Err(Error::config(
                    key,
                    "is a mapped column: the reconciler writes it itself",
                ));
            }
        }
        let mut seen: Vec<(&str, &str)> = Vec::new();
        for status in Status::ALL {
            let word = db.statuses.word(status);
            let key = format!("database.statuses.{status}");
            if word.is_empty() {
                return Err(Error::config(key, "cannot be empty"));
            }
            if let Some((other, _)) = seen.iter().find(|(_, w)| *w == word) {
                return Err(Error::config(
                    key,
                    format!("{word:?} is already the word for {other}; each status needs its own"),
                ));
            }
            seen.push((status.as_str(), word));
        }
        if db.max_connections < 2 {
            return Err(Error::config(
                "database.max_connections",
                "must be at least 2 (one streams the table while another writes)",
            ));
        }

        let storage = &self.storage;
        storage.validate_inventory()?;
        if storage.bucket.is_empty() {
            return Err(Error::config(
                "storage.bucket",
                "not set (set it in the config file or with --bucket)",
            ));
        }
        match storage.location() {
            Err(message) => return Err(Error::config("storage.bucket", message)),
            Ok(BucketLocation::Folder(_)) => {
                // A folder's events are its file notifications; no S3 event names it.
                if self.events.queue().is_some() {
                    return Err(Error::config(
                        "events.queue_url",
                        format!(
                            "is set, but storage.bucket names a local folder ({:?}), whose events \
                             come from file notifications; remove events.queue_url",
                            storage.bucket
                        ),
                    ));
                }
                // An S3 setting beside a folder is a contradiction, not a detail to ignore: the
                // operator meant one of the two.
                let s3_only = [
                    ("storage.endpoint_url", storage.endpoint_url.is_some()),
                    ("storage.force_path_style", storage.force_path_style),
                    ("storage.list_page_size", storage.list_page_size.is_some()),
                    (
                        "storage.list_concurrency",
                        storage.list_concurrency.is_some(),
                    ),
                    ("storage.read_timeout", storage.read_timeout.is_some()),
                ];
                if let Some((key, _)) = s3_only.iter().find(|(_, set)| *set) {
                    return Err(Error::config(
                        *key,
                        format!(
                            "is an S3 setting, but storage.bucket names a local folder ({:?}); \
                             remove one of the two",
                            storage.bucket
                        ),
                    ));
                }
            }
            Ok(BucketLocation::S3(_)) => {
                if storage.settle_time.is_some() {
                    return Err(Error::config(
                        "storage.settle_time",
                        format!(
                            "is a folder setting (a file is visible while it is written; an S3 \
                             object appears whole), but storage.bucket names the S3 bucket {:?}; \
                             remove it",
                            storage.bucket
                        ),
                    ));
                }
            }
        }
        if let Some(size) = storage.list_page_size
            && !(1..=1000).contains(&size)
        {
            return Err(Error::config(
                "storage.list_page_size",
                format!("{size} is outside 1..=1000"),
            ));
        }
        if let Some(ranges) = storage.list_concurrency
            && !(1..=64).contains(&ranges)
        {
            return Err(Error::config(
                "storage.list_concurrency",
                format!("{ranges} is outside 1..=64"),
            ));
        }
        if let Some(bytes) = storage.multipart_copy_threshold
            && !(1..=crate::bucket::MAX_COPY_OBJECT_BYTES).contains(&bytes)
        {
            return Err(Error::config(
                "storage.multipart_copy_threshold",
                format!(
                    "{bytes} is outside 1..={} (bytes; CopyObject copies at most 5 GiB)",
                    crate::bucket::MAX_COPY_OBJECT_BYTES
                ),
            ));
        }

        let sweep = &self.sweep;
        if sweep.pending_ttl < storage.upload_url_lifetime {
            return Err(Error::config(
                "sweep.pending_ttl",
                format!(
                    "{} is shorter than storage.upload_url_lifetime ({}): a record would be \
                     expired while its upload URL still works; make pending_ttl at least the \
                     lifetime plus the time an upload started at the last moment needs",
                    humantime::format_duration(sweep.pending_ttl),
                    humantime::format_duration(storage.upload_url_lifetime)
                ),
            ));
        }
        if !(0.0..=1.0).contains(&sweep.max_action_ratio) {
            return Err(Error::config(
                "sweep.max_action_ratio",
                format!("{} is outside 0.0..=1.0", sweep.max_action_ratio),
            ));
        }
        let destructive = matches!(
            sweep.orphan_action,
            OrphanAction::Quarantine | OrphanAction::Delete
        );
        if destructive && storage.prefix.is_empty() && !sweep.allow_bucket_root {
            return Err(Error::config(
                "sweep.orphan_action",
                "quarantine and delete refuse to run over a whole bucket (storage.prefix is empty); \
                 set storage.prefix, or sweep.allow_bucket_root = true if every object in the \
                 bucket belongs to the app table",
            ));
        }
        if sweep.orphan_action == OrphanAction::Quarantine {
            if sweep.quarantine_prefix.is_empty() {
                return Err(Error::config(
                    "sweep.quarantine_prefix",
                    "cannot be empty when orphan_action = \"quarantine\"",
                ));
            }
            if storage.prefix.starts_with(&sweep.quarantine_prefix) {
                return Err(Error::config(
                    "sweep.quarantine_prefix",
                    format!(
                        "{:?} contains storage.prefix {:?}: quarantined objects would be swept again",
                        sweep.quarantine_prefix, storage.prefix
                    ),
                ));
            }
        }
        if let Err(e) = self.sweep.cron() {
            return Err(Error::config(
                "sweep.schedule",
                one_line(&format!(
                    "{:?} is not a cron schedule with seconds, like \"0 */15 * * * *\": {e}",
                    self.sweep.schedule
                )),
            ));
        }
        if self.server.listen.parse::<std::net::SocketAddr>().is_err() {
            return Err(Error::config(
                "server.listen",
                format!(
                    "{:?} is not an IP address and port, like 127.0.0.1:9187",
                    self.server.listen
                ),
            ));
        }
        let events = &self.events;
        if !(1..=64).contains(&events.pollers) {
            return Err(Error::config(
                "events.pollers",
                format!("{} is outside 1..=64", events.pollers),
            ));
        }
        if events.wait_time > Duration::from_secs(20) {
            return Err(Error::config(
                "events.wait_time",
                "SQS long polling waits at most 20s",
            ));
        }
        for (key, timeout) in [
            ("database.query_timeout", Some(self.database.query_timeout)),
            ("storage.read_timeout", self.storage.read_timeout),
            ("events.read_timeout", Some(events.read_timeout)),
        ] {
            if timeout.is_some_and(|t| t.is_zero()) {
                return Err(Error::config(
                    key,
                    "must be more than 0s: a request that never answers would hold its task forever",
                ));
            }
        }
        if events.visibility_timeout < Duration::from_secs(2)
            || events.visibility_timeout > Duration::from_secs(12 * 3600)
        {
            return Err(Error::config(
                "events.visibility_timeout",
                "must be between 2s and 12h (SQS's limit)",
            ));
        }
        let processing = &self.processing;
        match processing.hook {
            HookKind::Webhook => match processing.url.as_deref() {
                #[cfg(not(feature = "tls"))]
                Some(url) if url.starts_with("https://") => {
                    return Err(Error::config(
                        "processing.url",
                        format!(
                            "{:?} needs TLS, and this reconcile was built without it (cargo's \
                             `tls` feature, on by default)",
                            crate::redact::endpoint(url)
                        ),
                    ));
                }
                Some(url) if url.starts_with("http://") || url.starts_with("https://") => {}
                Some(url) => {
                    return Err(Error::config(
                        "processing.url",
                        format!(
                            "{:?} is not an http:// or https:// URL",
                            crate::redact::endpoint(url)
                        ),
                    ));
                }
                None => {
                    return Err(Error::config(
                        "processing.url",
                        "required when processing.hook = \"webhook\"",
                    ));
                }
            },
            HookKind::Command => {
                if processing
                    .command
                    .as_ref()
                    .is_none_or(|argv| argv.is_empty() || argv[0].is_empty())
                {
                    return Err(Error::config(
                        "processing.command",
                        "required when processing.hook = \"command\": the program and its arguments, as a list",
                    ));
                }
            }
            HookKind::None => {}
        }
        if processing.max_attempts == 0 {
            return Err(Error::config(
                "processing.max_attempts",
                "must be at least 1",
            ));
        }
        if processing.timeout.is_zero() {
            return Err(Error::config("processing.timeout", "must be more than 0s"));
        }
        if processing.backoff_base > processing.backoff_max {
            return Err(Error::config(
                "processing.backoff_base",
                "is larger than processing.backoff_max",
            ));
        }
        if !(1..=64).contains(&processing.workers) {
            return Err(Error::config(
                "processing.workers",
                format!("{} is outside 1..=64", processing.workers),
            ));
        }
        if processing.lease_grace < Duration::from_secs(1) {
            return Err(Error::config(
                "processing.lease_grace",
                "must be at least 1s (a live worker must keep its job)",
            ));
        }
        let retention = &self.retention;
        for (key, value) in [
            ("retention.finished_jobs", retention.finished_jobs),
            ("retention.key_events", retention.key_events),
            ("retention.objects", retention.objects),
            ("retention.interval", retention.interval),
        ] {
            if value < Duration::from_secs(1) {
                return Err(Error::config(key, "must be at least 1s"));
            }
        }
        // Last, so that a build without S3 checks the rest of the file like any other (the
        // fuzz target of the configuration runs that build).
        #[cfg(not(feature = "s3"))]
        if self.events.queue().is_some() {
            return Err(Error::config(
                "events.queue_url",
                "this reconcile was built without S3 and SQS support (cargo's `s3` feature, on \
                 by default): it cannot consume a queue",
            ));
        }
        Ok(())
    }
}

fn check_readable(path: &Path) -> Result<()> {
    std::fs::metadata(path)
        .map(|_| ())
        .map_err(|e| Error::config("--config", format!("cannot read {}: {e}", path.display())))
}

/// Turn figment's errors into ours: the key in dotted form, then where the value came from, all
/// on one line (TOML parse errors come with a multi-line snippet; it is folded).
fn from_figment(error: figment::Error) -> Error {
    use figment::error::Kind;
    let mut messages = Vec::new();
    let mut first_key = None;
    for e in error {
        let mut path = e.path.clone();
        if let Kind::MissingField(field) = &e.kind
            && path.last().map(String::as_str) != Some(field.as_ref())
        {
            path.push(field.to_string());
        }
        let file = e.metadata.as_ref().and_then(|m| match &m.source {
            Some(figment::Source::File(file)) => Some(file.display().to_string()),
            _ => None,
        });
        let origin = match (&file, &e.metadata) {
            (Some(file), _) => format!(" (in {file})"),
            (None, Some(m)) if m.name.contains("environment") && !path.is_empty() => {
                format!(" (from RECONCILE_{})", path.join("__").to_uppercase())
            }
            (None, Some(m)) => format!(" (from {})", m.name),
            (None, None) => String::new(),
        };
        let kind = match &e.kind {
            Kind::UnknownField(field, expected) => format!(
                "unknown key `{}`; expected one of: {}",
                toml_key(field),
                expected.join(", ")
            ),
            Kind::Message(message) if message.starts_with("TOML parse error") => {
                without_quoted_source(message)
            }
            other => other.to_string(),
        };
        messages.push(one_line(&format!("{kind}{origin}")));
        let key = match (path.is_empty(), file) {
            (false, _) => dotted(&path),
            (true, Some(file)) => file,
            (true, None) => "config".to_owned(),
        };
        first_key.get_or_insert(key);
    }
    Error::config(
        first_key.unwrap_or_else(|| "config".into()),
        messages.join("; "),
    )
}

/// A key path as TOML writes it, `sweep.pending_ttl`, with a key that is not a bare word quoted
/// (`sweep."a\nb"`): a key the user made up can neither pass for two nor break the error's line.
fn dotted(path: &[String]) -> String {
    path.iter()
        .map(|key| toml_key(key))
        .collect::<Vec<_>>()
        .join(".")
}

fn toml_key(key: &str) -> String {
    let bare = !key.is_empty()
        && key
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
    if bare {
        key.to_owned()
    } else {
        format!("{key:?}")
    }
}

/// A TOML syntax error quotes the line it is on, and that line may hold a secret whose shape
/// gives it away to no redaction (a webhook's `?token-alone` query); syntax errors come before
/// any secret is known. Keep where and why (`TOML parse error at line 7, column 39: expected
/// newline`), drop the quote: the gutter lines (`  |`, `7 | url = ...`, the caret under it).
fn without_quoted_source(message: &str) -> String {
    message
        .lines()
        .filter(|line| {
            !line
                .trim_start_matches(|c: char| c.is_ascii_digit() || c == ' ')
                .starts_with('|')
        })
        .collect::<Vec<_>>()
        .join(": ")
}

fn one_line(text: &str) -> String {
    text.split_whitespace().collect::<Vec<_>>().join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    const MINIMAL: &str = r#"
        [database]
        url = "postgres://postgres@127.0.0.1/test"
        [storage]
        bucket = "uploads"
    "#;

    fn with(extra: &str) -> Result<Config> {
        Config::from_toml(&format!("{MINIMAL}\n{extra}"))
    }

    fn key_of(result: Result<Config>) -> String {
        match result {
            Err(Error::Config { key, .. }) => key,
            other => panic!("expected a configuration error, got {other:?}"),
        }
    }

    #[test]
    fn a_pending_ttl_shorter_than_the_upload_url_lifetime_names_both() {
        let error = with("[sweep]\npending_ttl = \"4m\"").expect_err("4m < 5m");
        let text = error.to_string();
        assert!(text.contains("sweep.pending_ttl"), "{text}");
        assert!(text.contains("storage.upload_url_lifetime (5m)"), "{text}");
        with("[sweep]\npending_ttl = \"5m\"").expect("equal is enough");
    }

    #[test]
    fn defaults_match_the_reference_schema() {
        let c = Config::from_toml(MINIMAL).expect("minimal config is valid");
        assert_eq!(c.database.table.quoted(), "\"docs\"");
        assert_eq!(c.database.id_column.as_str(), "id");
        assert_eq!(c.sweep.pending_ttl, Duration::from_secs(3600));
        assert_eq!(c.sweep.orphan_grace, Duration::from_secs(86_400));
        assert_eq!(c.sweep.orphan_action, OrphanAction::Report);
        assert_eq!(c.storage.prefix, "");
    }

    #[test]
    fn durations_read_like_people_write_them() {
        let c = Config::from_toml(&format!(
            "{}\nupload_url_lifetime = \"1m\"\n[sweep]\npending_ttl = \"90s\"\n\
             orphan_grace = \"15m\"",
            MINIMAL.trim_end()
        ))
        .expect("valid");
        assert_eq!(c.sweep.pending_ttl, Duration::from_secs(90));
        assert_eq!(c.storage.upload_url_lifetime, Duration::from_secs(60));
        assert_eq!(c.sweep.orphan_grace, Duration::from_secs(900));
    }

    // Found by fuzz/fuzz_targets/config_load.rs: these were valid. A processing.timeout of
    // u64::MAX seconds overflowed the lease (`timeout + lease_grace`), one of 100000 years made
    // the lease end no time (claim_job's `now + lease` panics), and a retention of a million
    // years panicked the first pruning (`DateTime - TimeDelta` overflowed).
    #[test]
    fn durations_longer_than_a_century_are_refused() {
        for (setting, key) in [
            (
                "[processing]\ntimeout = \"18446744073709551615s\"",
                "processing.timeout",
            ),
            ("[processing]\ntimeout = \"100000y\"", "processing.timeout"),
            (
                "[retention]\nkey_events = \"1000000y\"",
                "retention.key_events",
            ),
            ("[sweep]\npending_ttl = \"101y\"", "sweep.pending_ttl"),
        ] {
            assert_eq!(key_of(with(setting)), key, "{setting}");
        }
        let c = with("[retention]\nobjects = \"36500d\"").expect("a century is allowed");
        assert_eq!(c.retention.objects, MAX_DURATION);
    }

    // Found by fuzz/fuzz_targets/config_load.rs: a syntax error quoted its line, here the
    // webhook's token, which no redaction can tell from a word.
    #[test]
    fn a_syntax_error_gives_its_place_without_quoting_the_line() {
        let error =
            with("[processing]\nhook = \"webhook\"\nurl = \"https://h/hook?SECRETTOKEN123\" x")
                .expect_err("not TOML")
                .to_string();
        assert_eq!(
            error,
            "configuration: config: TOML parse error at line 9, column 39: expected newline, `#` \
             (from TOML source string)"
        );
    }

    // Caught by the one-line check of fuzz/fuzz_targets/config_load.rs: a line break in a key
    // or a value broke the error's one line (README: errors are one line on stderr).
    #[test]
    fn odd_keys_and_values_keep_the_error_on_one_line() {
        let cases = [
            (
                with("[sweep]\n\"a\\nb\" = 1"),
                r#"sweep."a\nb""#,
                r#"unknown key `"a\nb"`"#,
            ),
            (
                with("[sweep]\n\"a.b\" = 1"),
                r#"sweep."a.b""#,
                "unknown key",
            ),
            (
                Config::from_toml("[database]\nurl = \"x\\ny\"\n[storage]\nbucket = \"b\""),
                "database.url",
                r#""x\ny" is not a postgres://"#,
            ),
            (
                Config::from_toml(
                    "[database]\nurl = \"sqlite://a.db\"\n[storage]\nbucket = \"file:///a\\nb\"\n\
                     force_path_style = true",
                ),
                "storage.force_path_style",
                r#"("file:///a\nb")"#,
            ),
        ];
        for (result, key, shown) in cases {
            let error = result.expect_err("invalid").to_string();
            assert!(!error.contains('\n'), "{error}");
            assert!(
                error.starts_with(&format!("configuration: {key}: ")),
                "{error}"
            );
            assert!(error.contains(shown), "{error}");
        }
    }

    #[test]
    fn errors_name_the_key_at_fault() {
        assert_eq!(
            key_of(with("[sweep]\npending_ttl = \"soon\"")),
            "sweep.pending_ttl"
        );
        assert_eq!(
            key_of(with("[sweep]\nmax_action_ratio = 2.0")),
            "sweep.max_action_ratio"
        );
        assert_eq!(
            key_of(with("[sweep]\norphan_action = \"burn\"")),
            "sweep.orphan_action"
        );
        assert_eq!(
            key_of(with("[retention]\nkey_events = \"0s\"")),
            "retention.key_events"
        );
        assert_eq!(
            key_of(with("[retention]\nobjects = \"forever\"")),
            "retention.objects"
        );
        assert_eq!(
            key_of(with("[processing]\nlease_grace = \"0s\"")),
            "processing.lease_grace"
        );
        assert_eq!(
            key_of(with("[events]\nread_timeout = \"0s\"")),
            "events.read_timeout"
        );
        assert_eq!(
            key_of(Config::from_toml(
                "[database]\nurl = \"postgres://x/y\"\n[storage]\nbucket = \"b\"\nread_timeout = \"0s\""
            )),
            "storage.read_timeout"
        );
        assert_eq!(
            key_of(with("[sweep]\npendng_ttl = \"1h\"")),
            "sweep.pendng_ttl"
        );
        assert_eq!(key_of(with("[storage.x]\ny = 1")), "storage.x");
        assert_eq!(
            key_of(with("[database.statuses]\nexpired = \"pending\"")),
            "database.statuses.expired"
        );
        assert_eq!(
            key_of(Config::from_toml(
                "[database]\nurl = \"postgres://x/y\"\nid_column = \"\"\n[storage]\nbucket = \"b\""
            )),
            "database.id_column"
        );
        assert_eq!(
            key_of(Config::from_toml("[storage]\nbucket = \"b\"")),
            "database.url"
        );
        assert_eq!(
            key_of(Config::from_toml("[database]\nurl = \"postgres://x/y\"")),
            "storage.bucket"
        );
    }

    #[test]
    fn a_sqlite_url_is_a_database_and_other_schemes_are_not() {
        let with_url = |url: &str| {
            Config::from_toml(&format!(
                "[database]\nurl = {url:?}\n[storage]\nbucket = \"file:///srv/up\""
            ))
        };
        for url in ["sqlite:///srv/app.db", "sqlite://app.db"] {
            assert!(with_url(url).is_ok(), "{url}");
        }
        for url in ["mysql://x/y", "mariadb://root@127.0.0.1:3306/app"] {
            #[cfg(feature = "mysql")]
            assert!(with_url(url).is_ok(), "{url}");
            // Without the driver, said when the config is read, naming the key.
            #[cfg(not(feature = "mysql"))]
            assert_eq!(key_of(with_url(url)), "database.url", "{url}");
        }
        for url in ["sqlite://app.db?mode=ro", "sqlite://", "oracle://x/y"] {
            assert_eq!(key_of(with_url(url)), "database.url", "{url}");
        }
    }

    #[test]
    fn missing_action_marks_by_default_and_restore_is_read_with_its_window() {
        let c = with("").expect("minimal");
        assert_eq!(c.sweep.missing_action, MissingAction::Mark);
        assert_eq!(c.sweep.restore_window, Duration::from_secs(7 * 86_400));
        let c = with("[sweep]\nmissing_action = \"restore\"\nrestore_window = \"2h\"")
            .expect("restore");
        assert_eq!(c.rules().policy.missing_action, MissingAction::Restore);
        assert_eq!(c.rules().policy.restore_window, Duration::from_secs(7200));
        assert_eq!(
            key_of(with("[sweep]\nmissing_action = \"undelete\"")),
            "sweep.missing_action"
        );
        assert_eq!(
            key_of(with("[sweep]\nrestore_window = \"soon\"")),
            "sweep.restore_window"
        );
    }

    #[test]
    fn destructive_orphan_actions_need_a_prefix_or_explicit_consent() {
        assert_eq!(
            key_of(with("[sweep]\norphan_action = \"delete\"")),
            "sweep.orphan_action"
        );
        assert_eq!(
            key_of(with("[sweep]\norphan_action = \"quarantine\"")),
            "sweep.orphan_action"
        );
        with("[sweep]\norphan_action = \"delete\"\nallow_bucket_root = true").expect("consented");
        let scoped = Config::from_toml(
            "[database]\nurl = \"postgres://x/y\"\n[storage]\nbucket = \"b\"\nprefix = \"docs/\"\n\
             [sweep]\norphan_action = \"quarantine\"",
        );
        scoped.expect("a prefix makes quarantine safe");
    }

    #[test]
    fn identifiers_are_quoted_never_pasted() {
        let c = Config::from_toml(
            "[database]\nurl = \"postgres://x/y\"\ntable = 'app.my \"docs\"'\n\
             status_column = \"st; drop table x\"\n[storage]\nbucket = \"b\"",
        )
        .expect("odd but legal identifiers");
        assert_eq!(c.database.table.quoted(), "\"app\".\"my \"\"docs\"\"\"");
        assert_eq!(c.database.status_column.quoted(), "\"st; drop table x\"");
    }

    #[test]
    fn status_words_map_both_ways() {
        let c =
            with("[database.statuses]\npending = \"new\"\nprocessed = \"ready\"").expect("valid");
        assert_eq!(c.database.statuses.status("new"), Some(Status::Pending));
        assert_eq!(c.database.statuses.status("pending"), None);
        assert_eq!(c.database.statuses.word(Status::Processed), "ready");
    }

    #[test]
    fn a_file_url_names_a_local_folder_by_its_absolute_path() {
        let c = Config::from_toml(
            "[database]\nurl = \"postgres://x/y\"\n[storage]\nbucket = \"file:///srv/my uploads/\"",
        )
        .expect("a folder");
        assert_eq!(
            c.storage.location(),
            Ok(BucketLocation::Folder(Path::new("/srv/my uploads/")))
        );
        assert_eq!(
            with("").expect("valid").storage.location(),
            Ok(BucketLocation::S3("uploads"))
        );
        for bad in [
            "file://srv/uploads",
            "file:/srv/uploads",
            "file:uploads",
            "file://",
        ] {
            let result = Config::from_toml(&format!(
                "[database]\nurl = \"postgres://x/y\"\n[storage]\nbucket = {bad:?}"
            ));
            assert_eq!(key_of(result), "storage.bucket", "{bad}");
        }
        let nul = StorageConfig {
            bucket: "file:///a\0b".into(),
            ..StorageConfig::default()
        };
        assert!(nul.location().is_err());
        for (setting, key) in [
            (
                "endpoint_url = \"http://127.0.0.1:9000\"",
                "storage.endpoint_url",
            ),
            ("force_path_style = true", "storage.force_path_style"),
            ("list_page_size = 10", "storage.list_page_size"),
            ("list_concurrency = 4", "storage.list_concurrency"),
            ("read_timeout = \"5s\"", "storage.read_timeout"),
        ] {
            let result = Config::from_toml(&format!(
                "[database]\nurl = \"postgres://x/y\"\n[storage]\nbucket = \"file:///srv\"\n{setting}"
            ));
            assert_eq!(key_of(result), key, "{setting}");
        }
    }

    #[test]
    fn settle_time_is_a_folder_setting_defaulting_to_ten_seconds_and_zero_on_s3() {
        let toml = |bucket: &str, extra: &str| {
            Config::from_toml(&format!(
                "[database]\nurl = \"postgres://x/y\"\n[storage]\nbucket = {bucket:?}\n{extra}"
            ))
        };
        let folder = toml("file:///srv", "").expect("valid");
        assert_eq!(folder.rules().policy.settle_time, DEFAULT_SETTLE_TIME);
        let set = toml("file:///srv", "settle_time = \"2m\"").expect("valid");
        assert_eq!(set.rules().policy.settle_time, Duration::from_secs(120));
        let s3 = toml("uploads", "").expect("valid");
        assert_eq!(s3.rules().policy.settle_time, Duration::ZERO);
        assert_eq!(
            key_of(toml("uploads", "settle_time = \"10s\"")),
            "storage.settle_time"
        );
        assert_eq!(
            key_of(toml("file:///srv", "settle_time = \"soon\"")),
            "storage.settle_time"
        );
    }

    /// An inventory is read from S3: a build without S3 refuses the section instead.
    #[cfg(feature = "s3")]
    #[test]
    fn the_inventory_section_has_defaults_and_names_each_bad_key() {
        let url = "url = \"s3://inv/daily/uploads/all/\"";
        let c = with(&format!("[storage.inventory]\n{url}")).expect("valid");
        let inventory = c.storage.inventory.as_ref().expect("set");
        assert_eq!(inventory.max_age, Duration::from_secs(48 * 3600));
        assert_eq!(inventory.memory, 64 * 1024 * 1024);
        assert_eq!(
            inventory.location(),
            Ok(("inv", "daily/uploads/all/".to_owned()))
        );
        let c = with(&format!(
            "[storage.inventory]\n{url}\nmemory = \"2MiB\"\nmax_age = \"3d\""
        ))
        .expect("valid");
        let inventory = c.storage.inventory.expect("set");
        assert_eq!(inventory.memory, 2 * 1024 * 1024);
        assert_eq!(inventory.max_age, Duration::from_secs(3 * 86400));
        for (extra, key) in [
            ("url = \"inv/daily\"", "storage.inventory.url"),
            ("url = \"s3://inv\"", "storage.inventory.url"),
            ("url = \"s3://inv/\"", "storage.inventory.url"),
            (
                &format!("{url}\nmemory = \"lots\""),
                "storage.inventory.memory",
            ),
            (&format!("{url}\nmemory = 1000"), "storage.inventory.memory"),
            (
                &format!("{url}\nmax_age = \"0s\""),
                "storage.inventory.max_age",
            ),
            (
                &format!("{url}\nmax_age = \"old\""),
                "storage.inventory.max_age",
            ),
            (&format!("{url}\ncolour = 1"), "storage.inventory.colour"),
        ] {
            assert_eq!(
                key_of(with(&format!("[storage.inventory]\n{extra}"))),
                key,
                "{extra}"
            );
        }
        // An inventory describes an S3 bucket, never a folder.
        let folder = Config::from_toml(&format!(
            "[database]\nurl = \"sqlite://a.db\"\n[storage]\nbucket = \"file:///srv\"\n\
             [storage.inventory]\n{url}"
        ));
        assert_eq!(key_of(folder), "storage.inventory.url");
    }
}
