//! The commands: load the config, connect the adapters the config names, run, and say which exit
//! code the outcome deserves.

use crate::adapters::{connect, connect_catalog};
use crate::cli::{Cli, Command, SweepArgs};
use crate::config::{Config, Overrides};
use crate::error::{Error, Result};
use crate::model::Status;
use crate::processing::IfRunning;
use crate::report::{self, Format};
use crate::sweep::{Options, Progress, Quiet, Sweep};
use crate::{explain, progress, redact};
use chrono::Utc;
use std::io::{BufWriter, IsTerminal, Write};

/// Exit codes of a command that ran to its end (errors carry their own).
pub const OK: i32 = 0;
pub const DRIFT: i32 = 3;

/// Credentials the AWS SDK reads from the environment by itself: hidden like configured secrets.
const SECRET_ENV: [&str; 2] = ["AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN"];

pub async fn run(cli: Cli) -> Result<i32> {
    redact::remember_env(&SECRET_ENV);
    let overrides = Overrides {
        config_file: cli.global.config.clone(),
        database_url: cli.global.database_url.clone(),
        bucket: cli.global.bucket.clone(),
        prefix: cli.global.prefix.clone(),
        queue_url: cli.global.queue_url.clone(),
    };
    // Sweep flags before a subcommand would be silently ignored: say so instead.
    if cli.command.is_some() && cli.sweep != SweepArgs::default() {
        return Err(Error::Usage(
            "sweep flags (--dry-run, --format, --fail-on-drift, --force) go after `sweep`, \
             or without any subcommand"
                .into(),
        ));
    }
    let command = cli.command.unwrap_or(Command::Sweep(cli.sweep));
    // The demo writes the configuration of the sandbox it builds: there is none to load yet.
    if let Command::Demo { dir } = command {
        return demo(dir).await;
    }
    let config = Config::load(&overrides)?;
    redact::remember(config.secrets());
    match command {
        Command::Demo { .. } => Err(Error::Usage("`demo` takes no configuration".into())),
        Command::Sweep(args) => sweep(&config, &args).await,
        Command::Explain { id_or_key, format } => {
            let (catalog, bucket) = connect(&config).await?;
            let explanation = explain::explain(
                catalog.as_ref(),
                bucket.as_ref(),
                &config.storage.prefix,
                &config.rules().policy,
                &id_or_key,
                Utc::now(),
            )
            .await?;
            if explanation.matches_nothing() {
                return Err(Error::Usage(format!(
                    "explain: nothing by the id or key {id_or_key:?}: no record in the table, \
                     no object at {:?}, no audit trail",
                    explanation.key
                )));
            }
            explain::print(
                &explanation,
                default_format(format),
                &mut std::io::stdout().lock(),
            )?;
            Ok(OK)
        }
        Command::Daemon { dry_run } => {
            let options = crate::daemon::Options { dry_run };
            crate::daemon::run(&config, options, crate::stop::signal()).await?;
            Ok(OK)
        }
        Command::Retry { id, failed } => {
            let catalog = connect_catalog(&config).await?;
            catalog.migrate().await?;
            let (ids, if_running) = match id {
                Some(id) => (vec![id], IfRunning::Refuse),
                None if failed => (
                    catalog.ids_with_status(Status::Failed).await?,
                    IfRunning::Skip,
                ),
                None => (Vec::new(), IfRunning::Refuse),
            };
            let done = crate::processing::retry(
                catalog.as_ref(),
                &config.storage.prefix,
                config.processing.after_upload(),
                &ids,
                if_running,
            )
            .await?;
            for line in done.retried.iter().chain(&done.skipped) {
                println!("{line}");
            }
            println!(
                "{} doc(s) retried, {} skipped",
                done.retried.len(),
                done.skipped.len()
            );
            Ok(OK)
        }
        Command::Migrate => {
            let catalog = connect_catalog(&config).await?;
            catalog.migrate().await?;
            println!("schema reconciler is up to date");
            Ok(OK)
        }
        Command::CheckConfig => {
            let (catalog, bucket) = connect(&config).await?;
            bucket.ping().await?;
            let gaps = catalog.adoption_gaps();
            if config.sweep.orphan_action == crate::model::OrphanAction::Adopt && !gaps.is_empty() {
                // Found now rather than by the first adoption's INSERT failing at apply time.
                return Err(Error::config(
                    "database.adopt_values",
                    format!(
                        "orphan_action = \"adopt\" creates rows in {}, and these NOT NULL \
                         columns have no default: {}; give each a value in \
                         [database.adopt_values]",
                        config.database.table.quoted(),
                        gaps.join(", ")
                    ),
                ));
            }
            println!(
                "ok: database {} (table {}), bucket {} (prefix {:?})",
                redact::url(config.database.url.as_deref().unwrap_or_default()),
                config.database.table.quoted(),
                bucket.url(),
                config.storage.prefix
            );
            #[cfg(feature = "s3")]
            if let Some(inventory) = &config.storage.inventory {
                // The newest report, checked as a sweep would check it.
                let client = crate::bucket::s3::client(&config.storage).await;
                let inventory =
                    crate::inventory::source::Inventory::new(client, &config.storage, inventory)?;
                let newest = inventory.manifest(chrono::Utc::now()).await?;
                println!(
                    "ok: inventory {}: newest report {} ({:?}, {} data files)",
                    inventory.url(),
                    crate::inventory::shown(newest.created),
                    newest.format,
                    newest.manifest.files.len()
                );
            }
            #[cfg(feature = "s3")]
            if let Some(queue_url) = config.events.queue_url.as_deref().filter(|u| !u.is_empty()) {
                let queue = crate::events::sqs::Queue::connect(
                    &config.events,
                    queue_url,
                    config.storage.region.as_deref(),
                )
                .await;
                queue.check().await?;
                println!("ok: {}", queue.describe());
            }
            Ok(OK)
        }
    }
}

/// `reconcile demo`: build the sandbox, then the three sweeps a new user would run on it, each
/// through the sandbox's own config file, exactly as `reconcile --config ...` runs them.
async fn demo(dir: Option<std::path::PathBuf>) -> Result<i32> {
    let sandbox = crate::demo::create(dir, Utc::now()).await?;
    let config_file = sandbox.join(crate::demo::CONFIG_FILE);
    let config = Config::load(&Overrides {
        config_file: Some(config_file.clone()),
        ..Overrides::default()
    })?;
    let table = |dry_run| SweepArgs {
        dry_run,
        format: Some(Format::Table),
        ..SweepArgs::default()
    };
    let steps = [
        (
            "1. The audit (--dry-run): every inconsistency, nothing written",
            true,
        ),
        (
            "2. Apply: each action re-checked, written and audited",
            false,
        ),
        ("3. A second audit: nothing left to do", true),
    ];
    for (title, dry_run) in steps {
        println!("\n== {title}\n");
        sweep(&config, &table(dry_run)).await?;
    }
    print!(
        "{}",
        crate::demo::legend(&sandbox, &config.sweep.quarantine_prefix)
    );
    let program = crate::demo::program();
    println!(
        "\nThe sandbox stays in {dir}: a SQLite database (app.db, and the reconciler's own \
         tables in app.db.reconciler.db) and a folder as the bucket (uploads/). \
         `cargo install --locked --path .` (with `--no-default-features` for the embedded \
         default alone) puts `reconcile` on the PATH. Try:\n\n  \
         {program} --config {config} --dry-run\n  \
         {program} --config {config} explain contract-7.pdf\n",
        dir = sandbox.display(),
        config = crate::demo::shell_word(&config_file.display().to_string()),
    );
    Ok(OK)
}

async fn sweep(config: &Config, args: &SweepArgs) -> Result<i32> {
    let (catalog, bucket) = connect(config).await?;
    let sweep = Sweep {
        catalog: catalog.as_ref(),
        bucket: bucket.as_ref(),
        prefix: &config.storage.prefix,
        rules: &config.rules(),
        metrics: None,
    };
    let options = Options {
        dry_run: args.dry_run,
        force: args.force,
    };
    let mut progress: Box<dyn Progress> = if std::io::stderr().is_terminal() {
        Box::new(progress::Terminal::new())
    } else {
        Box::new(Quiet)
    };
    let out: Box<dyn Write + Send> = Box::new(BufWriter::new(std::io::stdout()));
    let mut sink = report::sink(default_format(args.format), out);
    // An applying sweep takes the same lock as the daemon's: never two sweeps of one deployment
    // at once (and a sweep row left `running` is then surely a dead process's).
    let lock = if args.dry_run {
        None
    } else {
        Some(catalog.try_sweep_lock().await?.ok_or_else(|| {
            Error::Busy(format!(
                "another process is sweeping {} (bucket {}, prefix {:?}): it holds the sweep \
                 lock; try again when it has finished",
                config.database.table.quoted(),
                config.storage.bucket,
                config.storage.prefix
            ))
        })?)
    };
    // An applying sweep stops between actions on SIGTERM or SIGINT and says what it applied;
    // a dry run writes nothing, so the signals' default (end at once) is right for it.
    let stop = if args.dry_run {
        crate::stop::never()
    } else {
        crate::stop::on_signal()
    };
    let result = sweep
        .run(options, Utc::now(), progress.as_mut(), sink.as_mut(), stop)
        .await;
    if let Some(lock) = lock {
        lock.release().await;
    }
    let summary = result?;
    if summary.footer.actions.failed > 0 {
        return Err(Error::storage(
            "applying",
            format!(
                "{} of the sweep's actions failed (see the report and the log); nothing of them was committed",
                summary.footer.actions.failed
            ),
        ));
    }
    if args.fail_on_drift && summary.header.counts.drift() > 0 {
        return Ok(DRIFT);
    }
    Ok(OK)
}

fn default_format(format: Option<Format>) -> Format {
    format.unwrap_or(if std::io::stdout().is_terminal() {
        Format::Table
    } else {
        Format::Json
    })
}
