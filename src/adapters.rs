//! The one place that picks the adapters a config names: the catalog from the database URL
//! (`postgres://`, `sqlite://`), the bucket from `storage.bucket` (an S3 bucket name, or
//! `file:///path` for a local folder). Commands and the daemon get their adapters here and
//! nowhere else; a new backend plugs in here.

use crate::bucket::Bucket;
use crate::bucket::folder::FolderBucket;
#[cfg(feature = "s3")]
use crate::bucket::s3::S3Bucket;
use crate::catalog::deadline::Deadline;
use crate::catalog::sql::SqlCatalog;
use crate::catalog::{Catalog, Scope};
use crate::config::{BucketLocation, Config};
use crate::error::{Error, Result};
use crate::redact;
use std::sync::Arc;

/// Both adapters of a deployment.
pub async fn connect(config: &Config) -> Result<(Arc<dyn Catalog>, Arc<dyn Bucket>)> {
    let catalog = connect_catalog(config).await?;
    let bucket = connect_bucket(config).await?;
    Ok((catalog, bucket))
}

pub async fn connect_catalog(config: &Config) -> Result<Arc<dyn Catalog>> {
    let url = config.database.url.as_deref().unwrap_or_default();
    Ok(if url.starts_with("sqlite:") {
        Arc::new(SqlCatalog::connect(&config.database, scope(config)).await?)
    } else {
        // A networked database can go silent: every call gets a deadline.
        let limit = config.database.query_timeout;
        let catalog =
            tokio::time::timeout(limit, SqlCatalog::connect(&config.database, scope(config)))
                .await
                .map_err(|_| {
                    Error::database(
                        format!("connecting to {}", redact::url(url)),
                        sqlx::Error::PoolTimedOut,
                    )
                })??;
        Arc::new(Deadline {
            inner: catalog,
            limit,
            database: redact::url(url),
        })
    })
}

/// The deployment this config describes: what its catalog's rows and sweep lock belong to.
pub fn scope(config: &Config) -> Scope {
    Scope {
        table: config.database.table.quoted(),
        bucket: config.storage.bucket.clone(),
        prefix: config.storage.prefix.clone(),
    }
}

pub async fn connect_bucket(config: &Config) -> Result<Arc<dyn Bucket>> {
    let location = config
        .storage
        .location()
        .map_err(|message| Error::config("storage.bucket", message))?;
    Ok(match location {
        #[cfg(feature = "s3")]
        BucketLocation::S3(_) => {
            let live: Arc<dyn Bucket> = Arc::new(S3Bucket::connect(&config.storage).await?);
            match &config.storage.inventory {
                // The sweep lists the inventory; everything else goes to the live bucket.
                Some(inventory) => {
                    let client = crate::bucket::s3::client(&config.storage).await;
                    let inventory = crate::inventory::source::Inventory::new(
                        client,
                        &config.storage,
                        inventory,
                    )?;
                    Arc::new(crate::inventory::source::InventoryBucket::new(
                        live, inventory,
                    ))
                }
                None => live,
            }
        }
        #[cfg(not(feature = "s3"))]
        BucketLocation::S3(name) => {
            return Err(Error::config(
                "storage.bucket",
                format!(
                    "{name:?} is an S3 bucket, and this reconcile was built without S3 support \
                     (cargo's `s3` feature, on by default); use a file:/// folder or a default build"
                ),
            ));
        }
        BucketLocation::Folder(root) => Arc::new(FolderBucket::new(root)),
    })
}
