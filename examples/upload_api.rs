//! The upload API the reconciler exists for, as a runnable example: `POST /docs` creates a
//! `pending` record and answers with an upload URL; the client PUTs its file straight to the
//! bucket; the bucket's notification (or, on a folder, the file landing) moves the record on.
//!
//! ```text
//! cargo run --example upload_api -- --config config/reconcile.toml --listen 127.0.0.1:8080
//! ```
//!
//! It reads the reconciler's own config file: the same database mapping, bucket and prefix, and
//! `storage.upload_url_lifetime` as the URLs' expiry, so that the sweep, which refuses a
//! `pending_ttl` shorter than that, never expires a record whose URL still works.
//!
//! - An S3 bucket: the URL is a SigV4 presigned PUT of `prefix + id`, its content type signed.
//! - A `file:///` folder has no presigned URLs: this API accepts the PUT itself, at
//!   `/uploads/{id}`, with an HMAC-signed URL that expires the same way. The secret is
//!   `UPLOAD_API_SECRET` when set, else random per process (its URLs die with it).
//!
//! - `POST /docs/{id}/multipart {"parts": N}` starts a resumable (multipart) upload of a pending
//!   doc on S3 and answers presigned URLs for parts 1..N and for the completion; with `"uploadId"`
//!   it presigns fresh URLs for an upload already started (a client resuming after its URLs
//!   expired). The reconciler keeps such a record pending while the upload is in progress, up to
//!   `sweep.multipart_grace`.
//!
//! Records are written to the reference schema (`id`, `title`, status, created and updated
//! columns, named by `[database]`), ids are random UUIDs, times `CURRENT_TIMESTAMP`.

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use clap::Parser;
use futures::StreamExt;
use hmac::{Hmac, Mac};
use serde::Deserialize;
use serde_json::json;
use sha2::Sha256;
use sqlx::AnyPool;
use std::io::Write;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use upload_reconciler::bucket::folder::TEMP_PREFIX;
use upload_reconciler::catalog::Catalog;
use upload_reconciler::config::{BucketLocation, Config, Overrides};
use upload_reconciler::model::Status;
use upload_reconciler::{adapters, redact};

#[derive(Parser)]
#[command(about = "The example upload API: records in the reconciler's table, files in its bucket")]
struct Args {
    /// The reconciler's config file.
    #[arg(long)]
    config: PathBuf,
    /// Where to listen.
    #[arg(long, default_value = "127.0.0.1:8080")]
    listen: SocketAddr,
    /// The URL clients reach this API at, for the upload URLs of a folder bucket; defaults to
    /// `http://` + the address it listens on.
    #[arg(long)]
    public_url: Option<String>,
}

/// Where the file of a new record goes, and how a client is allowed to put it there.
enum Uploads {
    #[cfg(feature = "s3")]
    S3 {
        client: aws_sdk_s3::Client,
        bucket: String,
    },
    Folder {
        root: PathBuf,
        secret: Vec<u8>,
    },
}

struct Api {
    config: Config,
    /// The reconciler's own view of the table: reads records with its mapping and time parsing.
    catalog: Arc<dyn Catalog>,
    /// The app's writes (insert), and the title, which the reconciler does not map.
    pool: AnyPool,
    uploads: Uploads,
    /// Where clients reach this API (the folder's upload URLs, completion URLs).
    public_url: String,
}

#[tokio::main]
async fn main() {
    // The log goes to stderr (stdout's first line is the address, for whoever started us), with
    // colour codes only for a terminal: a log file full of escapes reads badly.
    tracing_subscriber::fmt()
        .with_target(false)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let args = Args::parse();
    if let Err(e) = run(args).await {
        eprintln!("upload_api: {}", redact::text(&e));
        std::process::exit(1);
    }
}

async fn run(args: Args) -> Result<(), String> {
    let config = Config::load(&Overrides {
        config_file: Some(args.config.clone()),
        ..Overrides::default()
    })
    .map_err(|e| e.to_string())?;
    redact::remember(config.secrets());
    let catalog = adapters::connect_catalog(&config)
        .await
        .map_err(|e| e.to_string())?;
    let url = config.database.url.clone().unwrap_or_default();
    sqlx::any::install_default_drivers();
    let pool = AnyPool::connect(&url)
        .await
        .map_err(|e| format!("connecting to {}: {e}", redact::url(&url)))?;
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .map_err(|e| format!("listening on {}: {e}", args.listen))?;
    let local = listener.local_addr().map_err(|e| e.to_string())?;
    let uploads = match config.storage.location()? {
        #[cfg(feature = "s3")]
        BucketLocation::S3(bucket) => Uploads::S3 {
            client: upload_reconciler::bucket::s3::client(&config.storage).await,
            bucket: bucket.to_owned(),
        },
        #[cfg(not(feature = "s3"))]
        BucketLocation::S3(bucket) => {
            return Err(format!(
                "{bucket:?} is an S3 bucket: build with the default features to presign for it"
            ));
        }
        BucketLocation::Folder(root) => Uploads::Folder {
            root: root.to_owned(),
            secret: secret(),
        },
    };
    let public_url = args
        .public_url
        .clone()
        .unwrap_or_else(|| format!("http://{local}"));
    let api = Arc::new(Api {
        config,
        catalog,
        pool,
        uploads,
        public_url,
    });
    let app = Router::new()
        .route("/docs", post(create))
        .route("/docs/{id}", get(show))
        .route("/docs/{id}/multipart", post(multipart))
        .route("/docs/{id}/multipart/{upload_id}/complete", post(complete))
        .route("/uploads/{id}", put(upload))
        .with_state(api);
    // Tests and scripts wait for this line to learn the port (`--listen 127.0.0.1:0`).
    println!("listening on http://{local}");
    axum::serve(listener, app).await.map_err(|e| e.to_string())
}

/// `UPLOAD_API_SECRET`, or 32 random bytes from the OS (two v4 UUIDs).
fn secret() -> Vec<u8> {
    match std::env::var("UPLOAD_API_SECRET") {
        Ok(secret) if !secret.is_empty() => secret.into_bytes(),
        _ => [uuid::Uuid::new_v4(), uuid::Uuid::new_v4()]
            .iter()
            .flat_map(|u| *u.as_bytes())
            .collect(),
    }
}

/// An error answer: `{"error": "..."}` with its status.
fn error(status: StatusCode, message: impl Into<String>) -> Response {
    (status, axum::Json(json!({ "error": message.into() }))).into_response()
}

/// Failures of the database or the bucket: logged, answered 500 without internals.
fn internal(context: &str, e: impl std::fmt::Display) -> Response {
    tracing::error!(error = %redact::text(&e.to_string()), "{context}");
    error(
        StatusCode::INTERNAL_SERVER_ERROR,
        format!("{context} failed"),
    )
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct NewDoc {
    title: Option<String>,
    content_type: Option<String>,
}

async fn create(State(api): State<Arc<Api>>, body: Bytes) -> Response {
    let new: NewDoc = match serde_json::from_slice(&body) {
        Ok(new) => new,
        Err(e) => return error(StatusCode::BAD_REQUEST, format!("invalid JSON body: {e}")),
    };
    let Some(title) = new.title.filter(|t| !t.trim().is_empty()) else {
        return error(
            StatusCode::BAD_REQUEST,
            "title is required and cannot be empty",
        );
    };
    let content_type = new
        .content_type
        .unwrap_or_else(|| "application/octet-stream".into());
    if header::HeaderValue::from_str(&content_type).is_err() || !content_type.contains('/') {
        return error(
            StatusCode::BAD_REQUEST,
            format!("contentType {content_type:?} is not a media type like application/pdf"),
        );
    }
    let id = uuid::Uuid::new_v4().to_string();
    if let Err(e) = insert(&api, &id, &title).await {
        return internal("creating the record", e);
    }
    let record = match api.catalog.record(&id).await {
        Ok(Some(record)) => record,
        Ok(None) => return internal("reading the new record", "it is not there"),
        Err(e) => return internal("reading the new record", e),
    };
    let presigned_url = match upload_url(&api, &id, &content_type).await {
        Ok(url) => url,
        Err(e) => return internal("signing the upload URL", e),
    };
    (
        StatusCode::CREATED,
        axum::Json(json!({
            "id": id,
            "title": title,
            "createdAt": record.created_at.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
            "presignedUrl": presigned_url,
        })),
    )
        .into_response()
}

/// `INSERT` a pending record in the reference schema, through the config's mapping.
async fn insert(api: &Api, id: &str, title: &str) -> Result<(), sqlx::Error> {
    let db = &api.config.database;
    let (updated_column, updated_value) = match &db.updated_at_column {
        Some(column) => (format!(", {}", column.quoted()), ", CURRENT_TIMESTAMP"),
        None => (String::new(), ""),
    };
    let sql = format!(
        "INSERT INTO {} ({}, title, {}, {}{updated_column}) \
         VALUES ($1, $2, $3, CURRENT_TIMESTAMP{updated_value})",
        db.table.quoted(),
        db.id_column.quoted(),
        db.status_column.quoted(),
        db.created_at_column.quoted(),
    );
    sqlx::query(sqlx::AssertSqlSafe(sql))
        .bind(id)
        .bind(title)
        .bind(db.statuses.word(Status::Pending))
        .execute(&api.pool)
        .await
        .map(drop)
}

async fn title_of(api: &Api, id: &str) -> Result<Option<String>, sqlx::Error> {
    let db = &api.config.database;
    let sql = format!(
        "SELECT title FROM {} WHERE {} = $1",
        db.table.quoted(),
        db.id_column.quoted()
    );
    sqlx::query_scalar(sqlx::AssertSqlSafe(sql))
        .bind(id)
        .fetch_optional(&api.pool)
        .await
}

async fn show(State(api): State<Arc<Api>>, Path(id): Path<String>) -> Response {
    let record = match api.catalog.record(&id).await {
        Ok(Some(record)) => record,
        Ok(None) => return error(StatusCode::NOT_FOUND, format!("no doc {id:?}")),
        Err(e) => return internal("reading the record", e),
    };
    let title = match title_of(&api, &id).await {
        Ok(title) => title,
        Err(e) => return internal("reading the title", e),
    };
    axum::Json(json!({
        "id": record.id,
        "title": title,
        "status": record.raw_status,
        "createdAt": record.created_at.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
    }))
    .into_response()
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct NewMultipart {
    parts: Option<i64>,
    upload_id: Option<String>,
}

/// S3's limit on the parts of one upload.
const MAX_PARTS: i64 = 10_000;

async fn multipart(State(api): State<Arc<Api>>, Path(id): Path<String>, body: Bytes) -> Response {
    let request: NewMultipart = match serde_json::from_slice(&body) {
        Ok(request) => request,
        Err(e) => return error(StatusCode::BAD_REQUEST, format!("invalid JSON body: {e}")),
    };
    let parts = match request.parts {
        Some(parts @ 1..=MAX_PARTS) => parts as i32,
        _ => {
            return error(
                StatusCode::BAD_REQUEST,
                format!("parts is required, from 1 to {MAX_PARTS}"),
            );
        }
    };
    match api.catalog.record(&id).await {
        Ok(Some(record)) if record.status == Some(Status::Pending) => {}
        Ok(Some(record)) => {
            return error(
                StatusCode::CONFLICT,
                format!("doc {id:?} is {}, not pending", record.raw_status),
            );
        }
        Ok(None) => return error(StatusCode::NOT_FOUND, format!("no doc {id:?}")),
        Err(e) => return internal("reading the record", e),
    }
    match multipart_urls(&api, &id, parts, request.upload_id).await {
        Ok(answer) => (StatusCode::CREATED, axum::Json(answer)).into_response(),
        Err(MultipartError::Unsupported) => error(
            StatusCode::BAD_REQUEST,
            "resumable uploads need an S3 bucket; a folder takes one PUT",
        ),
        Err(MultipartError::Failed(e)) => internal("starting the multipart upload", e),
    }
}

// Only an S3 bucket has multipart uploads: the slim build (no `s3` feature) answers 400.
#[cfg_attr(not(feature = "s3"), allow(dead_code))]
enum MultipartError {
    Unsupported,
    Failed(String),
}

/// Start (or resume) the upload of `prefix + id` and presign its part and completion URLs.
async fn multipart_urls(
    api: &Api,
    id: &str,
    parts: i32,
    upload_id: Option<String>,
) -> Result<serde_json::Value, MultipartError> {
    #[cfg(feature = "s3")]
    if let Uploads::S3 { client, bucket } = &api.uploads {
        let failed = |e: &dyn std::fmt::Display| MultipartError::Failed(e.to_string());
        let key = format!("{}{id}", api.config.storage.prefix);
        let upload_id = match upload_id {
            Some(upload_id) => upload_id,
            None => client
                .create_multipart_upload()
                .bucket(bucket)
                .key(&key)
                .send()
                .await
                .map_err(|e| failed(&e))?
                .upload_id
                .ok_or_else(|| MultipartError::Failed("no upload id in the answer".into()))?,
        };
        let presigning = || {
            aws_sdk_s3::presigning::PresigningConfig::expires_in(
                api.config.storage.upload_url_lifetime,
            )
            .map_err(|e| failed(&e))
        };
        let mut part_urls = Vec::new();
        for number in 1..=parts {
            let request = client
                .upload_part()
                .bucket(bucket)
                .key(&key)
                .upload_id(&upload_id)
                .part_number(number)
                .presigned(presigning()?)
                .await
                .map_err(|e| failed(&e))?;
            part_urls.push(request.uri().to_owned());
        }
        // The SDK cannot presign CompleteMultipartUpload: the client completes through this API.
        let complete_url = format!(
            "{}/docs/{id}/multipart/{upload_id}/complete",
            api.public_url
        );
        return Ok(json!({
            "uploadId": upload_id,
            "partUrls": part_urls,
            "completeUrl": complete_url,
        }));
    }
    let _ = (api, id, parts, upload_id);
    Err(MultipartError::Unsupported)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
#[cfg_attr(not(feature = "s3"), allow(dead_code))]
struct Completion {
    parts: Vec<CompletedPart>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
#[cfg_attr(not(feature = "s3"), allow(dead_code))]
struct CompletedPart {
    part_number: i32,
    etag: String,
}

/// CompleteMultipartUpload for the client: the parts it sent, with the ETags S3 answered.
async fn complete(
    State(api): State<Arc<Api>>,
    Path((id, upload_id)): Path<(String, String)>,
    body: Bytes,
) -> Response {
    let completion: Completion = match serde_json::from_slice(&body) {
        Ok(completion) => completion,
        Err(e) => return error(StatusCode::BAD_REQUEST, format!("invalid JSON body: {e}")),
    };
    #[cfg(feature = "s3")]
    if let Uploads::S3 { client, bucket } = &api.uploads {
        use aws_sdk_s3::types::{CompletedMultipartUpload, CompletedPart as Part};
        let parts = completion
            .parts
            .iter()
            .map(|p| {
                Part::builder()
                    .part_number(p.part_number)
                    .e_tag(&p.etag)
                    .build()
            })
            .collect();
        let key = format!("{}{id}", api.config.storage.prefix);
        let done = client
            .complete_multipart_upload()
            .bucket(bucket)
            .key(&key)
            .upload_id(&upload_id)
            .multipart_upload(
                CompletedMultipartUpload::builder()
                    .set_parts(Some(parts))
                    .build(),
            )
            .send()
            .await;
        return match done {
            Ok(_) => axum::Json(json!({ "id": id, "key": key })).into_response(),
            Err(e) => error(
                StatusCode::BAD_REQUEST,
                format!(
                    "the bucket refused the completion: {}",
                    redact::text(&e.to_string())
                ),
            ),
        };
    }
    let _ = (api, id, upload_id, completion);
    error(
        StatusCode::BAD_REQUEST,
        "resumable uploads need an S3 bucket; a folder takes one PUT",
    )
}

/// The URL the client PUTs the file to, valid for `storage.upload_url_lifetime`.
async fn upload_url(api: &Api, id: &str, content_type: &str) -> Result<String, String> {
    let lifetime = api.config.storage.upload_url_lifetime;
    match &api.uploads {
        #[cfg(feature = "s3")]
        Uploads::S3 { client, bucket } => {
            let presigning = aws_sdk_s3::presigning::PresigningConfig::expires_in(lifetime)
                .map_err(|e| e.to_string())?;
            let request = client
                .put_object()
                .bucket(bucket)
                .key(format!("{}{id}", api.config.storage.prefix))
                .content_type(content_type)
                .presigned(presigning)
                .await
                .map_err(|e| e.to_string())?;
            Ok(request.uri().to_owned())
        }
        Uploads::Folder { secret, .. } => {
            let public_url = &api.public_url;
            let expires = chrono::Utc::now().timestamp() + lifetime.as_secs() as i64;
            let signature = sign(secret, id, expires, content_type);
            let mut url = url::Url::parse(&format!("{public_url}/uploads/"))
                .and_then(|base| base.join(id))
                .map_err(|e| format!("--public-url: {e}"))?;
            url.query_pairs_mut()
                .append_pair("expires", &expires.to_string())
                .append_pair("contentType", content_type)
                .append_pair("signature", &signature);
            Ok(url.to_string())
        }
    }
}

/// HMAC-SHA256 over what the URL allows: this id, until then, with this content type.
fn signer(secret: &[u8], id: &str, expires: i64, content_type: &str) -> Hmac<Sha256> {
    // HMAC takes keys of any length; the error case cannot happen.
    let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(secret)
        .unwrap_or_else(|_| unreachable!("HMAC accepts any key length"));
    mac.update(format!("PUT\n{id}\n{expires}\n{content_type}").as_bytes());
    mac
}

fn sign(secret: &[u8], id: &str, expires: i64, content_type: &str) -> String {
    let tag = signer(secret, id, expires, content_type)
        .finalize()
        .into_bytes();
    tag.iter().map(|b| format!("{b:02x}")).collect()
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct UploadQuery {
    expires: i64,
    content_type: String,
    signature: String,
}

/// A folder bucket's PUT: the signature, its expiry and the content type are checked, the body
/// is written to a temporary file beside the target and renamed into place when complete, so
/// the reconciler (its watcher and its sweeps) never sees half a file.
async fn upload(
    State(api): State<Arc<Api>>,
    Path(id): Path<String>,
    Query(query): Query<UploadQuery>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let (root, secret) = match &api.uploads {
        Uploads::Folder { root, secret, .. } => (root, secret),
        #[cfg(feature = "s3")]
        Uploads::S3 { .. } => {
            return error(
                StatusCode::NOT_FOUND,
                "uploads go to the S3 bucket's presigned URL",
            );
        }
    };
    let tag: Vec<u8> = (0..query.signature.len())
        .step_by(2)
        .filter_map(|i| {
            query
                .signature
                .get(i..i + 2)
                .and_then(|h| u8::from_str_radix(h, 16).ok())
        })
        .collect();
    // verify_slice compares in constant time.
    if signer(secret, &id, query.expires, &query.content_type)
        .verify_slice(&tag)
        .is_err()
    {
        return error(StatusCode::FORBIDDEN, "the upload URL's signature is wrong");
    }
    if chrono::Utc::now().timestamp() > query.expires {
        return error(StatusCode::FORBIDDEN, "the upload URL has expired");
    }
    let sent_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok());
    if sent_type != Some(query.content_type.as_str()) {
        return error(
            StatusCode::FORBIDDEN,
            format!(
                "Content-Type must be {:?}, the type the URL was signed for",
                query.content_type
            ),
        );
    }
    let key = format!("{}{id}", api.config.storage.prefix);
    match write_file(root, &key, body).await {
        Ok(Some(size)) => {
            tracing::info!(%key, size, "upload stored");
            StatusCode::OK.into_response()
        }
        // A client that PUTs nothing (curl's `--data-binary @file` of a file that is not
        // there) would otherwise see 200 and a doc `processed` with no bytes.
        Ok(None) => error(
            StatusCode::BAD_REQUEST,
            "the body is empty: PUT the file's bytes (nothing was stored)",
        ),
        Err(e) => internal("storing the upload", e),
    }
}

/// Stream the body into a temporary file in the target's folder, then rename it into place:
/// its size, or `None` (and nothing stored) when the body was empty.
async fn write_file(root: &std::path::Path, key: &str, body: Body) -> Result<Option<u64>, String> {
    // The id was made here (a UUID) and the prefix is the operator's: the key stays inside.
    let target = root.join(key);
    let folder = target
        .parent()
        .ok_or_else(|| format!("{key:?} has no folder"))?
        .to_owned();
    std::fs::create_dir_all(&folder).map_err(|e| e.to_string())?;
    let mut file = tempfile::Builder::new()
        .prefix(TEMP_PREFIX)
        .tempfile_in(&folder)
        .map_err(|e| e.to_string())?;
    let mut size = 0u64;
    let mut stream = body.into_data_stream();
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(|e| format!("reading the body: {e}"))?;
        size += chunk.len() as u64;
        file.write_all(&chunk).map_err(|e| e.to_string())?;
    }
    if size == 0 {
        // Dropping the temporary file removes it.
        return Ok(None);
    }
    // A temporary file is private (0600); the upload is the app's file like any other, which a
    // web server serving the folder must be able to read.
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        file.as_file()
            .set_permissions(std::fs::Permissions::from_mode(0o644))
            .map_err(|e| e.to_string())?;
    }
    file.as_file().sync_all().map_err(|e| e.to_string())?;
    file.persist(&target).map_err(|e| e.to_string())?;
    Ok(Some(size))
}
