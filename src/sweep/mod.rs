//! One sweep: merge the table against the listing (listed in key ranges at once where the bucket
//! can), decide every key, check the breaker, then hand the findings to the executor a chunk at a
//! time and report them in key order. Dry run and apply take this same path; only the executor's
//! mode differs.
//!
//! The scan finishes before the first write so that the breaker can see the whole picture; the
//! findings wait in a spool file meanwhile, so memory stays flat however many there are.
//!
//! A stop (SIGTERM, SIGINT) ends the scan at once, or the actions between transactions: the
//! transactions under way (an action each, or a batch of status-only ones) finish, the rest are
//! reported skipped (`shutdown`) and the history row says `interrupted`.

pub mod merge;
pub mod sort;
mod spool;

use crate::bucket::Bucket;
use crate::catalog::{Catalog, SweepRecord};
use crate::decide::{
    Decision, Policy, adoptable, decide_key, decide_keyless, decide_missing, decide_returned,
};
use crate::error::{Error, Interrupted, Result, SafetyStop};
use crate::execute::{Executor, Mode};
use crate::metrics::Metrics;
use crate::model::{
    Action, Finding, FindingKind, MissingAction, ObjectMeta, Outcome, Record, Versioning, key_of,
};
use crate::report::{Counts, Footer, Header, Sink, Tally};
use crate::rules::Rules;
use chrono::{DateTime, Utc};
use merge::{Merge, Pair};
use spool::Spool;
use tokio::sync::watch;
use uuid::Uuid;

/// Findings read from the spool and executed together: a few batches' worth, so that memory
/// stays flat and the report follows closely.
const CHUNK: usize = 8 * crate::execute::BATCH;

pub struct Sweep<'a> {
    pub catalog: &'a dyn Catalog,
    pub bucket: &'a dyn Bucket,
    pub prefix: &'a str,
    pub rules: &'a Rules,
    /// Where the daemon's sweeps are counted; one-shot sweeps have nobody to tell.
    pub metrics: Option<&'a Metrics>,
}

#[derive(Debug, Clone, Copy, Default)]
pub struct Options {
    pub dry_run: bool,
    /// Go past the breaker.
    pub force: bool,
}

/// The scan's result: what was found, waiting to be executed.
pub struct Plan {
    pub started_at: DateTime<Utc>,
    /// When the S3 Inventory the objects came from was taken; `None` for a live listing.
    pub inventory: Option<DateTime<Utc>>,
    pub objects_listed: u64,
    pub records_scanned: u64,
    pub multipart_uploads_listed: u64,
    /// What the parts of the abandoned multipart uploads found hold.
    pub abandoned_multipart_bytes: u64,
    pub counts: Counts,
    /// Findings whose action changes state: what the breaker weighs.
    pub state_changes: u64,
    spool: Spool,
}

/// What the scan has found so far: counted, and spooled when there is something to do.
struct Findings {
    counts: Counts,
    state_changes: u64,
    spool: Spool,
}

impl Findings {
    /// Count one decision; a drift becomes the finding `base` describes, with the drift's kind,
    /// action and detail.
    fn add(&mut self, decision: Decision, base: impl FnOnce() -> Finding) -> Result<()> {
        match decision {
            Decision::Consistent => Ok(()),
            Decision::InGrace => {
                self.counts.add(FindingKind::InGrace);
                Ok(())
            }
            Decision::Drift {
                kind,
                action,
                detail,
            } => {
                self.counts.add(kind);
                if action.changes_state() {
                    self.state_changes += 1;
                }
                self.spool.push(&Finding {
                    kind,
                    action,
                    detail,
                    ..base()
                })
            }
        }
    }
}

impl Plan {
    /// The findings, in key order, each once.
    pub fn next_finding(&mut self) -> Result<Option<Finding>> {
        self.spool.pop()
    }

    /// The next (up to) `n` findings; none when all were taken.
    pub fn next_findings(&mut self, n: usize) -> Result<Vec<Finding>> {
        let mut findings = Vec::new();
        while findings.len() < n {
            match self.spool.pop()? {
                Some(finding) => findings.push(finding),
                None => break,
            }
        }
        Ok(findings)
    }
}

/// What a finished sweep reports back.
#[derive(Debug, Clone)]
pub struct Summary {
    pub header: Header,
    pub footer: Footer,
}

/// Reports scan progress; the CLI draws it on a terminal.
pub trait Progress: Send {
    fn scanned(&mut self, records: u64, objects: u64);
    fn done(&mut self);
}

/// No progress display.
pub struct Quiet;

impl Progress for Quiet {
    fn scanned(&mut self, _: u64, _: u64) {}
    fn done(&mut self) {}
}

impl Sweep<'_> {
    /// Merge and decide every key; nothing is written anywhere.
    pub async fn plan(&self, now: DateTime<Utc>, progress: &mut dyn Progress) -> Result<Plan> {
        let split_points = match self.bucket.keys_per_range() {
            Some(every) => self
                .catalog
                .split_points(every)
                .await?
                .iter()
                .map(|id| key_of(self.prefix, id))
                .collect(),
            None => Vec::new(),
        };
        // An inventory is read, checked and sorted before anything else: any fault in it ends
        // the sweep here, before a single finding.
        let inventory = self.bucket.snapshot(self.prefix, now).await?;
        // Listed whole first, and put in key order: the server's order need not be.
        let uploads = sort::by_key(self.bucket.multipart_uploads(self.prefix), sort::RUN).await?;
        let mut merge = Merge::new(
            self.catalog.records(),
            self.bucket.list_split(self.prefix, split_points),
            self.prefix,
        )
        .with_uploads(uploads.into_stream());
        let mut findings = Findings {
            counts: Counts::default(),
            state_changes: 0,
            spool: Spool::new("findings")?,
        };
        let mut abandoned_multipart_bytes = 0;
        // Asked once, at the first key that needs it.
        let mut versioning = None;
        while let Some(pair) = merge.next().await? {
            progress.scanned(merge.records_scanned, merge.objects_listed);
            let Pair {
                name,
                record,
                object,
                uploads,
            } = pair;
            if let Some(record) = record.as_ref().filter(|r| r.key.is_none()) {
                // No key, no object: judged by its status alone, nothing to look at.
                let decision = decide_keyless(record, now, &self.rules.policy);
                findings.add(decision, || Finding {
                    kind: FindingKind::InGrace,
                    id: record.id.clone(),
                    key: String::new(),
                    action: Action::Report,
                    detail: String::new(),
                    record: Some(record.clone()),
                    object: None,
                    upload: None,
                })?;
                continue;
            }
            let key = key_of(self.prefix, &name);
            // The prefix's own key is an empty name, which names no doc (on S3 it is most often
            // the prefix's folder marker); quarantined objects are no docs either.
            if name.is_empty() || self.rules.quarantine.contains(&key) {
                continue;
            }
            // The doc's id: its record's, or for an object without one, the name it would have.
            let id = record
                .as_ref()
                .map_or_else(|| name.clone(), |r| r.id.clone());
            // An inventory is a day or two old: what it says of an object's presence is
            // confirmed by a HEAD before a finding rests on it (dry run or not), and the key is
            // judged again on what the HEAD saw.
            let mut object = object;
            let mut looked = inventory.is_none();
            let (decision, verdicts) = loop {
                let judged = self
                    .judge(
                        &name,
                        record.as_ref(),
                        object.as_ref(),
                        &uploads,
                        now,
                        &mut versioning,
                    )
                    .await?;
                if looked || !rests_on_presence(&judged.0) {
                    break judged;
                }
                object = self.bucket.head(&key).await?;
                looked = true;
            };
            for (upload, verdict) in uploads.into_iter().zip(verdicts) {
                let verdict = match verdict {
                    // What abandoned parts cost is part of the finding (and of its gauge).
                    Decision::Drift {
                        kind,
                        action,
                        detail,
                    } => {
                        let bytes = self.bucket.multipart_bytes(&upload).await?;
                        abandoned_multipart_bytes += bytes;
                        Decision::Drift {
                            kind,
                            action,
                            detail: format!("{detail}, {bytes} bytes in its parts"),
                        }
                    }
                    other => other,
                };
                findings.add(verdict, || Finding {
                    kind: FindingKind::AbandonedMultipart,
                    id: id.clone(),
                    key: key.clone(),
                    action: Action::Abort,
                    detail: String::new(),
                    record: record.clone(),
                    object: None,
                    upload: Some(upload),
                })?;
            }
            findings.add(decision, || Finding {
                kind: FindingKind::InGrace,
                id,
                key,
                action: Action::Report,
                detail: String::new(),
                record,
                object,
                upload: None,
            })?;
        }
        progress.done();
        Ok(Plan {
            started_at: now,
            inventory,
            objects_listed: merge.objects_listed,
            records_scanned: merge.records_scanned,
            multipart_uploads_listed: merge.uploads_listed,
            abandoned_multipart_bytes,
            counts: findings.counts,
            state_changes: findings.state_changes,
            spool: findings.spool,
        })
    }

    /// Decide one key (`name`, below the prefix) as the merge paired it: the key itself, whether
    /// an orphan can be adopted, its second look, then each multipart upload at it.
    async fn judge(
        &self,
        name: &str,
        record: Option<&Record>,
        object: Option<&ObjectMeta>,
        uploads: &[crate::model::MultipartUpload],
        now: DateTime<Utc>,
        versioning: &mut Option<Versioning>,
    ) -> Result<(Decision, Vec<Decision>)> {
        let key = key_of(self.prefix, name);
        let (decision, verdicts) = decide_key(record, object, uploads, now, &self.rules.policy);
        let decision = adoptable(decision, name, self.catalog.key_kind());
        let seen = Seen {
            record,
            object,
            key: &key,
        };
        let decision = second_look(
            self.catalog,
            self.bucket,
            &self.rules.policy,
            decision,
            seen,
            now,
            versioning,
        )
        .await?;
        Ok((decision, verdicts))
    }

    /// The breaker's verdict on a plan: stop before writing anything when it trips.
    pub fn breaker(&self, plan: &Plan) -> Option<SafetyStop> {
        self.rules
            .breaker
            .check(plan.state_changes, plan.records_scanned)
    }

    /// A whole sweep: plan, breaker, execute, report. A safety stop, or a `shutdown` between two
    /// actions, still writes the report (the findings not attempted as skipped) before it returns
    /// its error.
    pub async fn run(
        &self,
        options: Options,
        now: DateTime<Utc>,
        progress: &mut dyn Progress,
        report: &mut dyn Sink,
        shutdown: watch::Receiver<bool>,
    ) -> Result<Summary> {
        let sweep_id = Uuid::new_v4();
        let clock = std::time::Instant::now();
        // The scan writes nothing: a stop may cut it anywhere.
        let mut scan_shutdown = shutdown.clone();
        let mut plan = tokio::select! {
            plan = self.plan(now, progress) => plan?,
            _ = crate::stop::requested(&mut scan_shutdown) => {
                return Err(Error::Interrupted(Interrupted::Scan));
            }
        };
        let header = Header {
            sweep_id,
            dry_run: options.dry_run,
            bucket: self.bucket.name().to_owned(),
            location: self.bucket.url(),
            prefix: self.prefix.to_owned(),
            started_at: plan.started_at,
            inventory: plan.inventory,
            objects_listed: plan.objects_listed,
            records_scanned: plan.records_scanned,
            counts: plan.counts.clone(),
        };
        report.begin(&header)?;

        // A dry run reports that apply would stop, and goes on: it writes nothing anyway.
        let stop = if options.force {
            None
        } else {
            self.breaker(&plan)
        };
        let held = stop.as_ref().filter(|_| !options.dry_run);
        if let (Some(stop), true) = (&stop, options.dry_run) {
            tracing::warn!("dry run: applying would stop here: {stop}");
        }

        let applying = !options.dry_run && held.is_none();
        let executor = Executor {
            after_upload: self.rules.after_upload,
            mode: if options.dry_run {
                Mode::DryRun
            } else {
                Mode::Apply
            },
            catalog: self.catalog,
            bucket: self.bucket,
            quarantine: &self.rules.quarantine,
            sweep_id: applying.then_some(sweep_id),
            restore_window: self.rules.policy.restore_window,
        };
        if applying {
            // After the breaker, so that a safety stop leaves the database exactly as it was.
            self.catalog.migrate().await?;
            // Under the sweep lock: audit what a process that died mid-action changed.
            executor.settle_intents().await?;
        }
        let history = applying.then(|| SweepRecord {
            id: sweep_id,
            started_at: plan.started_at,
            finished_at: None,
            bucket: header.bucket.clone(),
            prefix: header.prefix.clone(),
            objects_listed: plan.objects_listed,
            records_scanned: plan.records_scanned,
            counts: serde_json::Value::Null,
            outcome: "running",
            error: None,
        });
        if let Some(history) = &history {
            self.catalog.sweep_started(history).await?;
        }

        let mut actions = Tally::default();
        let mut left = 0u64;
        let concurrency = self.catalog.concurrent_writes();
        let executed = async {
            // A chunk of findings at a time: executed concurrently, then reported in key order.
            loop {
                let chunk = plan.next_findings(CHUNK)?;
                if chunk.is_empty() {
                    break;
                }
                let outcomes: Vec<Outcome> = if held.is_some() {
                    chunk
                        .iter()
                        .map(|finding| match finding.action.changes_state() {
                            true => Outcome::Skipped("safety stop".into()),
                            false => Outcome::Reported,
                        })
                        .collect()
                } else {
                    executor
                        .execute_many(&chunk, concurrency, &shutdown)
                        .await
                        .into_iter()
                        .map(|outcome| {
                            outcome.unwrap_or_else(|| {
                                left += 1;
                                Outcome::Skipped("shutdown".into())
                            })
                        })
                        .collect()
                };
                for (finding, outcome) in chunk.iter().zip(&outcomes) {
                    actions.add(outcome);
                    if let Some(m) = self.metrics {
                        m.action(finding.kind, finding.action, outcome);
                    }
                    report.finding(finding, outcome)?;
                }
            }
            Ok::<_, Error>(())
        }
        .await;

        let footer = Footer {
            finished_at: Utc::now(),
            actions,
            safety_stop: stop.as_ref().map(ToString::to_string),
        };
        let interrupted = left > 0;
        if let Some(mut history) = history {
            history.finished_at = Some(footer.finished_at);
            history.counts = serde_json::to_value(&plan.counts).unwrap_or_default();
            history.outcome = match (&executed, interrupted, footer.actions.failed) {
                (Err(_), _, _) => "failed",
                (Ok(()), true, _) => "interrupted",
                (Ok(()), false, 0) => "ok",
                (Ok(()), false, _) => "failed",
            };
            history.error = executed.as_ref().err().map(ToString::to_string);
            self.catalog.sweep_finished(&history).await?;
        }
        executed?;
        report.finish(&footer)?;
        if interrupted {
            // Not a sweep that ran to its end: the findings and duration metrics keep the last.
            return Err(Error::Interrupted(Interrupted::Actions {
                applied: footer.actions.applied,
                failed: footer.actions.failed,
                left,
            }));
        }
        if let Some(m) = self.metrics {
            for kind in FindingKind::ALL {
                let n = i64::try_from(plan.counts.get(kind)).unwrap_or(i64::MAX);
                m.findings.with_label_values(&[kind.as_str()]).set(n);
            }
            m.abandoned_multipart_bytes
                .set(i64::try_from(plan.abandoned_multipart_bytes).unwrap_or(i64::MAX));
            m.objects_listed.inc_by(plan.objects_listed);
            m.records_scanned.inc_by(plan.records_scanned);
            m.sweep_duration.observe(clock.elapsed().as_secs_f64());
            if held.is_none() && footer.actions.failed == 0 {
                m.sweep_last_success
                    .set(footer.finished_at.timestamp_millis() as f64 / 1000.0);
            }
        }
        if let Some(stop) = held {
            return Err(Error::SafetyStop(stop.clone()));
        }
        Ok(Summary { header, footer })
    }
}

/// One key as the merge paired it.
#[derive(Debug, Clone, Copy)]
pub struct Seen<'a> {
    pub record: Option<&'a Record>,
    pub object: Option<&'a ObjectMeta>,
    pub key: &'a str,
}

/// What only a second look tells about a missing or a returned object, asked for those keys
/// alone: what the reconciler noted of the object, and, in a versioned bucket, what lies under
/// the missing key (its history, never the bucket's). `versioning` is asked of the bucket at
/// the first key that needs it and kept. The sweep and `explain` both ask this.
pub async fn second_look(
    catalog: &dyn Catalog,
    bucket: &dyn Bucket,
    policy: &Policy,
    decision: Decision,
    seen: Seen<'_>,
    now: DateTime<Utc>,
    versioning: &mut Option<Versioning>,
) -> Result<Decision> {
    if let Decision::Drift {
        kind: FindingKind::OrphanObject,
        action: Action::Delete | Action::Quarantine,
        ..
    } = &decision
    {
        let versioning = known_versioning(bucket, versioning).await?;
        return Ok(match decision {
            Decision::Drift {
                kind,
                action,
                mut detail,
            } if versioning.keeps_versions() => {
                detail.push_str(
                    "; the bucket keeps versions: this leaves a delete marker, and the bytes stay \
                     billed as a noncurrent version until a lifecycle rule expires them",
                );
                Decision::Drift {
                    kind,
                    action,
                    detail,
                }
            }
            other => other,
        });
    }
    let (Decision::Drift { kind, .. }, Some(record)) = (&decision, seen.record) else {
        return Ok(decision);
    };
    match (kind, seen.object) {
        (FindingKind::ObjectReturned, Some(object)) => {
            let noted = catalog.noted_object(seen.key).await?;
            Ok(decide_returned(record, object, noted.as_ref()))
        }
        (FindingKind::MissingObject, None) => {
            if known_versioning(bucket, versioning).await?.keeps_versions() {
                let history = bucket.versions(seen.key).await?;
                let noted = catalog.noted_object(seen.key).await?;
                return Ok(decide_missing(
                    record,
                    &history,
                    noted.as_ref(),
                    now,
                    policy,
                ));
            }
            Ok(match decision {
                Decision::Drift {
                    kind,
                    action,
                    mut detail,
                } if policy.missing_action == MissingAction::Restore => {
                    detail.push_str("; the bucket keeps no versions: nothing to restore");
                    Decision::Drift {
                        kind,
                        action,
                        detail,
                    }
                }
                other => other,
            })
        }
        _ => Ok(decision),
    }
}

/// Whether a finding says something of an object's presence or absence: what a snapshot of the
/// bucket (an inventory) cannot know for now.
fn rests_on_presence(decision: &Decision) -> bool {
    matches!(
        decision,
        Decision::Drift {
            kind: FindingKind::StalePending
                | FindingKind::LostNotification
                | FindingKind::LateUpload
                | FindingKind::OrphanObject
                | FindingKind::MissingObject
                | FindingKind::ObjectReturned,
            ..
        }
    )
}

/// Whether the bucket keeps versions: asked of it once, then kept in `known`.
async fn known_versioning(
    bucket: &dyn Bucket,
    known: &mut Option<Versioning>,
) -> Result<Versioning> {
    Ok(match known {
        Some(versioning) => *versioning,
        None => *known.insert(bucket.versioning().await?),
    })
}
