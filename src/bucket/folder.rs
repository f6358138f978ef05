//! The bucket as a local folder (`storage.bucket = "file:///srv/uploads"`): what ActiveStorage's
//! Disk service, Django's FileSystemStorage or a folder behind nginx write to. A key is a file's
//! path relative to the folder, its components joined by `/`; an object is a regular file.
//!
//! What S3 promises, kept on disk:
//! - The listing comes in UTF-8 byte order across nested folders, streamed (see [`Walk`]).
//! - An object's facts are its size and the time it arrived at its key: the later of its mtime
//!   and its ctime. `mv`, `cp -p`, `rsync -a` and `tar x` keep the source's mtime, so a file
//!   moved in today may say it was written two years ago; the rename or copy sets its ctime to
//!   now (ext4, xfs, btrfs and tmpfs all do on rename; pinned in the conformance suite). A
//!   `chmod`, a `touch` or a new hard link also set ctime: the file then counts as arrived
//!   again, which only ever makes it younger. Its ETag is made of size, mtime in nanoseconds
//!   and inode, so any rewrite or replacement of the file changes it, and the executor's "is it
//!   still the object the listing showed" check works as on S3.
//! - Unlike an S3 PUT, a file is visible while it is written, with the bytes written so far.
//!   The sweep judges no folder object younger than `storage.settle_time` by arrival (it is in
//!   grace); the watcher waits for the writer's close.
//!
//! Names and links, which S3 has not:
//! - A symbolic link to a file inside the folder is listed under its own name, with the facts
//!   of the file it leads to; the file is listed under its own key too, marked
//!   [`ObjectMeta::linked`]: its bytes are a doc's (a content-addressed layout, `docs/mydoc ->
//!   blobs/sha-abc`), so it is never an orphan, whatever its own key. The link arrived when
//!   it was made: its age is the later of its own and its file's arrival. Every listing first reads
//!   the whole folder's links for that (a folder walk without a `stat` per file; at most
//!   [`MAX_LINKED_FILES`] files reached by links). A delete looks again, just before it
//!   unlinks, so a link made after the listing still saves its file.
//! - A symbolic link that leads nowhere (its file deleted or renamed) is an absent object, as
//!   S3 would say of a deleted key: its record, if any, is `missing_object`, and the listing
//!   goes on. A link out of the folder, or to a folder, stops the listing naming the link: the
//!   first would expose files the app does not own, the second list one file under many keys.
//! - Hard links are one file under several names, each listed as its own object with the same
//!   ETag. Deleting one name (an orphan) loses no bytes while another name remains; a symbolic
//!   link to any of the names keeps them all (the link is matched by file, not by name).
//! - An entry that cannot be read (permissions) stops the listing with an error naming its
//!   path, never an empty or short listing: a sweep over a short listing would call every
//!   unread doc missing.
//! - A copy never replaces an existing file: the bytes go to a temporary file beside the target,
//!   which takes the target's name only while that name is free (`renameat2(RENAME_NOREPLACE)`,
//!   else `link`). A crash leaves at worst a `.reconcile-*` temporary file, never a half-written
//!   target.
//! - A delete unlinks the file and leaves its folders, even when they become empty: the app may
//!   have just created a folder to write into (ActiveStorage and Django make the folder, then the
//!   file), and removing it under it would fail that upload. Empty folders list as nothing.
//! - Keys that would leave the folder (`..` or `.` components, absolute paths, empty components,
//!   NUL) are refused on every operation, and so is any path whose existing part leads out of the
//!   folder through a symbolic link. (A process that can replace folders inside the root with
//!   symbolic links between the check and the use is not defended against: the folder must be
//!   writable only by the app and the reconciler.)

use super::{Bucket, CopyOutcome, DeleteOutcome};
use crate::error::{Error, Result};
use crate::model::ObjectMeta;
use chrono::{DateTime, Utc};
use futures::stream::{self, BoxStream, StreamExt};
use std::fs::{self, File, Metadata};
use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use tempfile::TempPath;

/// The name prefix of the temporary files a copy writes before renaming them into place.
pub const TEMP_PREFIX: &str = ".reconcile-";

/// Objects the folder walk may read ahead of the sweep.
const LIST_BUFFER: usize = 256;

/// The most files that symbolic links may reach in one folder: a listing holds their identities
/// (16 bytes each) to tell which files are no orphans; past it, it stops with an error rather
/// than risk calling one an orphan.
pub const MAX_LINKED_FILES: usize = 1 << 20;

/// A file by identity, whatever its name: (device, inode).
type FileId = (u64, u64);

#[derive(Debug, Clone)]
pub struct FolderBucket {
    /// The folder as configured (absolute, maybe through symbolic links; resolved at each use,
    /// so a folder mounted or re-pointed later is seen as it is then).
    root: PathBuf,
    /// The folder's path as reports show it, without a trailing `/`.
    name: String,
}

impl FolderBucket {
    /// The folder at `root`, an absolute path. Nothing is read until the first operation.
    pub fn new(root: &Path) -> Self {
        let text = root.to_string_lossy();
        let trimmed = text.trim_end_matches('/');
        FolderBucket {
            root: root.to_owned(),
            name: if trimmed.is_empty() { "/" } else { trimmed }.to_owned(),
        }
    }

    fn object_url(&self, key: &str) -> String {
        match self.name.as_str() {
            "/" => format!("file:///{key}"),
            name => format!("file://{name}/{key}"),
        }
    }

    /// The folder with its symbolic links resolved: every check compares against this.
    fn real_root(&self) -> Result<PathBuf> {
        let context = format!("opening {}", self.url());
        let root =
            fs::canonicalize(&self.root).map_err(|e| Error::storage(&context, e.to_string()))?;
        if !root.is_dir() {
            return Err(Error::storage(context, "not a folder"));
        }
        Ok(root)
    }

    /// The path of `key` inside `root`, after checking the key and that whatever part of the
    /// path exists stays inside the folder once symbolic links are followed.
    fn resolve(&self, root: &Path, key: &str, context: &str) -> Result<PathBuf> {
        if let Some(reason) = key_fault(key) {
            return Err(Error::storage(
                context,
                format!("refused key {key:?}: {reason}; keys are relative paths inside the folder"),
            ));
        }
        let path = root.join(key);
        match stays_inside(root, &path) {
            Ok(true) => Ok(path),
            Ok(false) => Err(Error::storage(
                context,
                format!("refused key {key:?}: a symbolic link leads it out of the folder"),
            )),
            Err(e) => Err(Error::storage(context, e.to_string())),
        }
    }

    /// Run file-system work off the async threads.
    async fn blocking<T: Send + 'static>(
        &self,
        context: String,
        work: impl FnOnce(&FolderBucket) -> Result<T> + Send + 'static,
    ) -> Result<T> {
        let this = self.clone();
        tokio::task::spawn_blocking(move || work(&this))
            .await
            .map_err(|e| Error::storage(context, format!("the file-system task failed: {e}")))?
    }

    fn head_now(&self, key: &str) -> Result<Option<ObjectMeta>> {
        let context = format!("HEAD {}", self.object_url(key));
        let root = self.real_root()?;
        // A key no file in the folder can have (`../x`, `a//b`) names no object: absent, as
        // the listing, which never yields it, said. Copies and deletes of it stay refused.
        if key_fault(key).is_some() {
            return Ok(None);
        }
        let path = self.resolve(&root, key, &context)?;
        match fs::metadata(&path) {
            Ok(m) if m.is_file() => Ok(Some(through_link(&path, object_meta(key.to_owned(), &m)))),
            // S3 has no object at a "folder" key either.
            Ok(m) if m.is_dir() => Ok(None),
            Ok(_) => Err(Error::storage(
                context,
                "neither a regular file nor a folder",
            )),
            Err(e) if absent(&e) => Ok(None),
            Err(e) => Err(Error::storage(context, e.to_string())),
        }
    }

    /// Copy `from` (as the caller saw it) to the new key `to`. The folder has no conditional
    /// copy, so the source is checked before and after: a copy of a file that changed meanwhile
    /// is removed again (it is ours: `to` did not exist) and nothing is said copied.
    fn copy_now(&self, from: &ObjectMeta, to: &str) -> Result<CopyOutcome> {
        let context = format!(
            "copying {} to {}",
            self.object_url(&from.key),
            self.object_url(to)
        );
        let root = self.real_root()?;
        let source = self.resolve(&root, &from.key, &context)?;
        let target = self.resolve(&root, to, &context)?;
        let storage = |e: io::Error| Error::storage(&context, e.to_string());
        if !still_same(&source, from).map_err(storage)? {
            return Ok(CopyOutcome::SourceChanged);
        }
        if let Some(outcome) = existing_copy(&source, &target, from, to).map_err(storage)? {
            return Ok(outcome);
        }
        match copy_new(&source, &target) {
            Ok(()) => {}
            // Taken between the look above and the rename: judge what is there now.
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
                return existing_copy(&source, &target, from, to)
                    .map_err(storage)?
                    .ok_or_else(|| Error::storage(&context, format!("{to:?} came and went")));
            }
            Err(e) if absent(&e) && !source.is_file() => return Ok(CopyOutcome::SourceChanged),
            Err(e) => return Err(storage(e)),
        }
        if !still_same(&source, from).map_err(storage)? {
            fs::remove_file(&target).map_err(storage)?;
            return Ok(CopyOutcome::SourceChanged);
        }
        let copied = fs::metadata(&target).map_err(storage)?;
        if i64::try_from(copied.len()).ok() != Some(from.size) {
            return Err(Error::storage(
                &context,
                format!(
                    "the copy has {} bytes, the original {}; original kept",
                    copied.len(),
                    from.size
                ),
            ));
        }
        Ok(CopyOutcome::Copied)
    }

    fn delete_now(&self, object: &ObjectMeta) -> Result<DeleteOutcome> {
        let context = format!("deleting {}", self.object_url(&object.key));
        let root = self.real_root()?;
        let path = self.resolve(&root, &object.key, &context)?;
        // A link made since the listing makes the file a doc's: look again, just before.
        if let Some(file) =
            regular_file_id(&path).map_err(|e| Error::storage(&context, e.to_string()))?
            && links_reach(&root, file).map_err(|e| Error::storage(&context, e))?
        {
            return Ok(DeleteOutcome::Changed);
        }
        match unlink_if_same(&path, object.etag.as_deref()) {
            Ok(true) => Ok(DeleteOutcome::Deleted),
            Ok(false) => Ok(DeleteOutcome::Changed),
            Err(e) => Err(Error::storage(context, e.to_string())),
        }
    }

    fn reached_by_link_now(&self, key: &str) -> Result<bool> {
        let context = format!("looking for links to {}", self.object_url(key));
        let root = self.real_root()?;
        let path = self.resolve(&root, key, &context)?;
        match regular_file_id(&path).map_err(|e| Error::storage(&context, e.to_string()))? {
            Some(file) => links_reach(&root, file).map_err(|e| Error::storage(&context, e)),
            None => Ok(false),
        }
    }

    fn ping_now(&self) -> Result<()> {
        let root = self.real_root()?;
        fs::read_dir(&root)
            .map(|_| ())
            .map_err(|e| Error::storage(format!("reading {}", self.url()), e.to_string()))
    }
}

#[async_trait::async_trait]
impl Bucket for FolderBucket {
    fn url(&self) -> String {
        format!("file://{}", self.name)
    }

    fn name(&self) -> &str {
        &self.name
    }

    fn list<'a>(&'a self, prefix: &'a str) -> BoxStream<'a, Result<ObjectMeta>> {
        let context = format!("listing {}", self.object_url(prefix));
        let walk = Walk::new(self.clone(), prefix.to_owned());
        let (tx, rx) = tokio::sync::mpsc::channel(LIST_BUFFER);
        tokio::task::spawn_blocking(move || {
            for item in walk {
                if tx.blocking_send(Listed::Object(item)).is_err() {
                    return; // the sweep stopped reading
                }
            }
            let _ = tx.blocking_send(Listed::End);
        });
        // The walk says when it is done, so a walker that died is an error, not a short listing.
        stream::unfold(Some(rx), move |rx| {
            let context = context.clone();
            async move {
                let mut rx = rx?;
                match rx.recv().await {
                    Some(Listed::Object(item)) => Some((item, Some(rx))),
                    Some(Listed::End) => None,
                    None => Some((
                        Err(Error::storage(
                            context,
                            "the folder walk stopped before its end",
                        )),
                        None,
                    )),
                }
            }
        })
        .boxed()
    }

    async fn head(&self, key: &str) -> Result<Option<ObjectMeta>> {
        let key = key.to_owned();
        self.blocking(format!("HEAD {}", self.object_url(&key)), move |f| {
            f.head_now(&key)
        })
        .await
    }

    async fn reached_by_link(&self, key: &str) -> Result<bool> {
        let key = key.to_owned();
        self.blocking(
            format!("looking for links to {}", self.object_url(&key)),
            move |f| f.reached_by_link_now(&key),
        )
        .await
    }

    async fn copy_new(&self, from: &ObjectMeta, to: &str) -> Result<CopyOutcome> {
        let (from, to) = (from.clone(), to.to_owned());
        self.blocking(
            format!("copying {}", self.object_url(&from.key)),
            move |f| f.copy_now(&from, &to),
        )
        .await
    }

    async fn delete_if(&self, object: &ObjectMeta) -> Result<DeleteOutcome> {
        let object = object.clone();
        self.blocking(
            format!("deleting {}", self.object_url(&object.key)),
            move |f| f.delete_now(&object),
        )
        .await
    }

    async fn ping(&self) -> Result<()> {
        self.blocking(format!("reaching {}", self.url()), |f| f.ping_now())
            .await
    }
}

enum Listed {
    Object(Result<ObjectMeta>),
    End,
}

/// Why `key` cannot name a file inside the folder, if it cannot.
fn key_fault(key: &str) -> Option<&'static str> {
    if key.is_empty() {
        return Some("it is empty");
    }
    if key.contains('\0') {
        return Some("it holds a NUL character");
    }
    if key.starts_with('/') {
        return Some("it is an absolute path");
    }
    key.split('/').find_map(|component| match component {
        "" => Some("it has an empty path component"),
        "." | ".." => Some("it has a `.` or `..` path component"),
        _ => None,
    })
}

/// Whether `path` lies inside `root` (both absolute, `root` resolved) once the symbolic links
/// of its deepest existing ancestor (or itself) are followed; the rest does not exist yet.
fn stays_inside(root: &Path, path: &Path) -> io::Result<bool> {
    for existing in path.ancestors() {
        match fs::canonicalize(existing) {
            Ok(real) => return Ok(real.starts_with(root)),
            Err(e) if absent(&e) => continue,
            Err(e) => return Err(e),
        }
    }
    Ok(false)
}

/// Not there: no such file, or a file where the path needs a folder.
fn absent(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::NotFound | io::ErrorKind::NotADirectory
    )
}

/// Whether the file at `path` is still the object the caller saw (same ETag where it has one).
fn still_same(path: &Path, seen: &ObjectMeta) -> io::Result<bool> {
    match fs::metadata(path) {
        Ok(m) if m.is_file() => Ok(seen.etag.as_ref().is_none_or(|e| *e == etag_of(&m))),
        Ok(_) => Ok(false),
        Err(e) if absent(&e) => Ok(false),
        Err(e) => Err(e),
    }
}

/// What a file already at `target` means for a copy of `source`: the same bytes are an earlier
/// copy of this very object (a quarantine stopped after copying), anything else is in the way.
/// `None` when nothing is there.
fn existing_copy(
    source: &Path,
    target: &Path,
    from: &ObjectMeta,
    to: &str,
) -> io::Result<Option<CopyOutcome>> {
    let there = match fs::symlink_metadata(target) {
        Ok(m) => m,
        Err(e) if absent(&e) => return Ok(None),
        Err(e) => return Err(e),
    };
    if there.is_file()
        && i64::try_from(there.len()).ok() == Some(from.size)
        && same_bytes(source, target)?
    {
        return Ok(Some(CopyOutcome::AlreadyCopied));
    }
    Ok(Some(CopyOutcome::Taken(object_meta(to.to_owned(), &there))))
}

/// Byte-for-byte equality of two files, read in blocks.
fn same_bytes(a: &Path, b: &Path) -> io::Result<bool> {
    use std::io::Read;
    let (mut a, mut b) = (
        io::BufReader::new(File::open(a)?),
        io::BufReader::new(File::open(b)?),
    );
    let (mut x, mut y) = (vec![0u8; 64 * 1024], vec![0u8; 64 * 1024]);
    loop {
        let n = a.read(&mut x)?;
        if n == 0 {
            return Ok(b.read(&mut y[..1])? == 0);
        }
        b.read_exact(&mut y[..n]).or_else(|e| {
            if e.kind() == io::ErrorKind::UnexpectedEof {
                Ok(())
            } else {
                Err(e)
            }
        })?;
        if x[..n] != y[..n] {
            return Ok(false);
        }
    }
}

/// Write `source`'s bytes to the new file `target`, never replacing one, creating its folders.
fn copy_new(source: &Path, target: &Path) -> io::Result<()> {
    let mut input = File::open(source)?;
    let metadata = input.metadata()?;
    if !metadata.is_file() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "the source is not a regular file",
        ));
    }
    // Early answer for the common case; the rename below is what guarantees it.
    if fs::symlink_metadata(target).is_ok() {
        return Err(io::ErrorKind::AlreadyExists.into());
    }
    let folder = target
        .parent()
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "no parent folder"))?;
    fs::create_dir_all(folder)?;
    let mut temp = tempfile::Builder::new()
        .prefix(TEMP_PREFIX)
        .tempfile_in(folder)?;
    io::copy(&mut input, temp.as_file_mut())?;
    temp.as_file().set_permissions(metadata.permissions())?;
    temp.as_file().sync_all()?;
    let temp = temp.into_temp_path();
    rename_noreplace(&temp, target)?;
    // Renamed away: nothing left for the guard to delete.
    let _ = temp.keep();
    // The new name survives a crash only once its folder is synced.
    File::open(folder)?.sync_all()
}

/// Give `from` the name `to`, never replacing a file there: `renameat2(RENAME_NOREPLACE)` where
/// the file system has it, else `link` then `unlink` (tempfile's `persist_noclobber`). On failure
/// `from` keeps its name. A quarantine that moves instead of copying would call this directly.
fn rename_noreplace(from: &Path, to: &Path) -> io::Result<()> {
    let mut path = TempPath::try_from_path(from)?;
    // `from` is no temporary file of ours: never delete it, whatever happens.
    path.disable_cleanup(true);
    path.persist_noclobber(to).map_err(|e| e.error)
}

/// Unlink `path` if it is still the file whose ETag is `etag` (any file when `None`). Returns
/// false when the file changed, and nothing was removed. POSIX has no conditional unlink: the
/// check and the unlink are two calls, microseconds apart. A missing file counts as removed when
/// no ETag is asked for (S3 answers a delete of a missing key the same way).
fn unlink_if_same(path: &Path, etag: Option<&str>) -> io::Result<bool> {
    if let Some(expected) = etag {
        match fs::metadata(path) {
            Ok(m) if m.is_file() && etag_of(&m) == expected => {}
            Ok(_) => return Ok(false),
            Err(e) if absent(&e) => return Ok(false),
            Err(e) => return Err(e),
        }
    }
    match fs::remove_file(path) {
        Ok(()) => Ok(true),
        Err(e) if absent(&e) => Ok(etag.is_none()),
        Err(e) => Err(e),
    }
}

/// An ETag from facts that change whenever the file's content may have: size, modification time
/// to the nanosecond, inode (a replacement is a new inode even with the same size and mtime).
fn etag_of(m: &Metadata) -> String {
    let mtime_nanos = i128::from(m.mtime()) * 1_000_000_000 + i128::from(m.mtime_nsec());
    format!("\"{:x}-{:x}-{:x}\"", m.len(), mtime_nanos, m.ino())
}

fn object_meta(key: String, m: &Metadata) -> ObjectMeta {
    ObjectMeta {
        key,
        size: i64::try_from(m.len()).unwrap_or(i64::MAX),
        etag: Some(etag_of(m)),
        last_modified: arrived(m),
        linked: false,
    }
}

/// When the file arrived at its name: the later of mtime and ctime (see the module docs). A
/// time chrono cannot hold cannot be judged old: it stays in grace.
fn arrived(m: &Metadata) -> DateTime<Utc> {
    let time = |secs: i64, nanos: i64| {
        u32::try_from(nanos)
            .ok()
            .and_then(|nanos| DateTime::from_timestamp(secs, nanos))
            .unwrap_or(DateTime::<Utc>::MAX_UTC)
    };
    time(m.mtime(), m.mtime_nsec()).max(time(m.ctime(), m.ctime_nsec()))
}

/// `object` as found at `path`, which may be a symbolic link: a link made just now to an old
/// file arrived just now (the app may be about to insert its record), so its arrival is the
/// later of the file's and the link's own.
fn through_link(path: &Path, object: ObjectMeta) -> ObjectMeta {
    match fs::symlink_metadata(path) {
        Ok(link) if link.file_type().is_symlink() => ObjectMeta {
            last_modified: object.last_modified.max(arrived(&link)),
            ..object
        },
        _ => object,
    }
}

/// The identity of the regular file at `path` (not following a final symbolic link: deleting a
/// link loses no bytes); `None` for anything else or nothing.
fn regular_file_id(path: &Path) -> io::Result<Option<FileId>> {
    match fs::symlink_metadata(path) {
        Ok(m) if m.is_file() => Ok(Some((m.dev(), m.ino()))),
        Ok(_) => Ok(None),
        Err(e) if absent(&e) => Ok(None),
        Err(e) => Err(e),
    }
}

/// Visit the file each symbolic link anywhere under `root` leads to, while `visit` says go on.
/// Links that lead nowhere, out of the folder or to a folder reach no file of ours and are
/// passed over (the listing judges those under the prefix). Folders are read without a `stat`
/// per entry; only links are followed. A folder this process may not read is passed over too
/// (a volume's `lost+found` is root's alone): under the listed prefix the walk itself stops
/// naming it, elsewhere no doc's link can be in it that the app, which must read its docs, put
/// there. Any other error is one naming the folder.
fn visit_link_targets(
    root: &Path,
    mut visit: impl FnMut(FileId) -> std::ops::ControlFlow<()>,
) -> std::result::Result<(), String> {
    let mut folders = vec![root.to_path_buf()];
    while let Some(folder) = folders.pop() {
        let reader = match fs::read_dir(&folder) {
            Ok(reader) => reader,
            // Removed since its parent was read, or not ours to read.
            Err(e) if absent(&e) || e.kind() == io::ErrorKind::PermissionDenied => continue,
            Err(e) => return Err(format!("reading {}: {e}", folder.display())),
        };
        for entry in reader {
            let entry = entry.map_err(|e| format!("reading {}: {e}", folder.display()))?;
            let kind = entry
                .file_type()
                .map_err(|e| format!("reading {}: {e}", entry.path().display()))?;
            if kind.is_dir() {
                folders.push(entry.path());
                continue;
            }
            if !kind.is_symlink() {
                continue;
            }
            let Ok(target) = fs::canonicalize(entry.path()) else {
                continue;
            };
            if !target.starts_with(root) {
                continue;
            }
            if let Ok(m) = fs::metadata(&target)
                && m.is_file()
                && visit((m.dev(), m.ino())).is_break()
            {
                return Ok(());
            }
        }
    }
    Ok(())
}

/// The files symbolic links inside `root` lead to, at most [`MAX_LINKED_FILES`].
fn link_targets(root: &Path) -> std::result::Result<std::collections::HashSet<FileId>, String> {
    use std::ops::ControlFlow;
    let mut targets = std::collections::HashSet::new();
    let mut too_many = false;
    visit_link_targets(root, |file| {
        targets.insert(file);
        if targets.len() > MAX_LINKED_FILES {
            too_many = true;
            return ControlFlow::Break(());
        }
        ControlFlow::Continue(())
    })?;
    if too_many {
        return Err(format!(
            "symbolic links in {} lead to more than {MAX_LINKED_FILES} files, more than a \
             listing keeps in memory to tell docs' files from orphans",
            root.display()
        ));
    }
    Ok(targets)
}

/// Whether a symbolic link inside `root` leads to `file`.
fn links_reach(root: &Path, file: FileId) -> std::result::Result<bool, String> {
    use std::ops::ControlFlow;
    let mut found = false;
    visit_link_targets(root, |target| {
        if target == file {
            found = true;
            return ControlFlow::Break(());
        }
        ControlFlow::Continue(())
    })?;
    Ok(found)
}

/// The listing: depth first, each folder's entries sorted by the key they lead to, a file by its
/// name and a folder by its name followed by `/`. That is byte order across folders, where a
/// plain sorted walk is not: it yields `a/b` before `a-b`, S3 the reverse (`-` is 0x2D, `/`
/// 0x2F). Sorting by the produced key is enough because no two entries of a folder lead to
/// overlapping key ranges: a folder's keys all start with `name/`, and no other entry's key does.
/// Memory: the entries of one folder per level of the current path. After an error it ends.
struct Walk {
    folder: FolderBucket,
    prefix: String,
    state: WalkState,
}

enum WalkState {
    Start,
    Walking {
        root: PathBuf,
        levels: Vec<Level>,
        /// The files symbolic links lead to, read before the walk.
        linked: std::collections::HashSet<FileId>,
    },
    Done,
}

/// One folder being walked: its key prefix (`docs/`, or empty for the root) and the entries
/// still to visit, in key order.
struct Level {
    key_prefix: String,
    entries: std::vec::IntoIter<Entry>,
}

struct Entry {
    name: String,
    kind: EntryKind,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum EntryKind {
    Folder,
    File,
    /// A symbolic link to a file inside the folder.
    Link,
}

impl Entry {
    fn sort_key(&self) -> impl Iterator<Item = u8> + '_ {
        let folder = self.kind == EntryKind::Folder;
        self.name.bytes().chain(folder.then_some(b'/'))
    }
}

impl Walk {
    fn new(folder: FolderBucket, prefix: String) -> Self {
        Walk {
            folder,
            prefix,
            state: WalkState::Start,
        }
    }

    fn error(&self, message: impl Into<String>) -> Error {
        Error::storage(
            format!("listing {}", self.folder.object_url(&self.prefix)),
            message,
        )
    }

    /// The first level: the folder the prefix names up to its last `/`, keeping the entries
    /// whose names start with the rest (`docs/ab` lists `docs/` for names starting `ab`).
    fn start(&self) -> Result<WalkState> {
        let root = self.folder.real_root()?;
        let (folder_part, name_part) = match self.prefix.rfind('/') {
            Some(i) => self.prefix.split_at(i + 1),
            None => ("", self.prefix.as_str()),
        };
        if !folder_part.is_empty() {
            let folder_key = &folder_part[..folder_part.len() - 1];
            let context = format!("listing {}", self.folder.object_url(&self.prefix));
            self.folder.resolve(&root, folder_key, &context)?;
        }
        let linked = link_targets(&root).map_err(|e| self.error(e))?;
        let levels = self.read_level(&root, folder_part, name_part)?;
        Ok(WalkState::Walking {
            root,
            levels: levels.into_iter().collect(),
            linked,
        })
    }

    /// The entries of the folder at `key_prefix`, sorted by key; `None` when it does not exist
    /// (never created, or removed since its parent was read).
    fn read_level(&self, root: &Path, key_prefix: &str, name_part: &str) -> Result<Option<Level>> {
        let path = root.join(key_prefix);
        let reader = match fs::read_dir(&path) {
            Ok(reader) => reader,
            Err(e) if absent(&e) => return Ok(None),
            Err(e) => return Err(self.error(format!("reading {}: {e}", path.display()))),
        };
        let mut entries = Vec::new();
        for entry in reader {
            let entry =
                entry.map_err(|e| self.error(format!("reading {}: {e}", path.display())))?;
            let name = entry.file_name().into_string().map_err(|raw| {
                self.error(format!(
                    "{} has a file name that is not UTF-8, which no key can name; rename it",
                    path.join(raw).display()
                ))
            })?;
            if !name.starts_with(name_part) {
                continue;
            }
            let kind = entry
                .file_type()
                .map_err(|e| self.error(format!("reading {}: {e}", entry.path().display())))?;
            if let Some(kind) = self.kind_of(root, &entry.path(), kind)? {
                entries.push(Entry { name, kind });
            }
        }
        entries.sort_by(|a, b| a.sort_key().cmp(b.sort_key()));
        Ok(Some(Level {
            key_prefix: key_prefix.to_owned(),
            entries: entries.into_iter(),
        }))
    }

    /// What the entry at `path` is: a folder to walk into, or a file to list; `None` for a
    /// symbolic link that leads nowhere (an absent object). Anything else is an error, never
    /// skipped: a symbolic link is followed only to a file inside the folder.
    fn kind_of(&self, root: &Path, path: &Path, kind: fs::FileType) -> Result<Option<EntryKind>> {
        if kind.is_dir() {
            return Ok(Some(EntryKind::Folder));
        }
        if kind.is_file() {
            return Ok(Some(EntryKind::File));
        }
        if !kind.is_symlink() {
            return Err(self.error(format!(
                "{} is neither a regular file nor a folder",
                path.display()
            )));
        }
        let target = match fs::canonicalize(path) {
            Ok(target) => target,
            // Its file was deleted or renamed: no object, as S3 says of a deleted key.
            Err(e) if absent(&e) => return Ok(None),
            Err(e) => {
                return Err(self.error(format!(
                    "the symbolic link {} leads nowhere usable: {e}",
                    path.display()
                )));
            }
        };
        if !target.starts_with(root) {
            return Err(self.error(format!(
                "the symbolic link {} leads out of the folder",
                path.display()
            )));
        }
        match fs::metadata(&target) {
            Ok(m) if m.is_file() => Ok(Some(EntryKind::Link)),
            Ok(_) => Err(self.error(format!(
                "the symbolic link {} leads to a folder, which is not followed",
                path.display()
            ))),
            Err(e) => Err(self.error(format!("reading {}: {e}", target.display()))),
        }
    }

    fn advance(&mut self) -> Option<Result<ObjectMeta>> {
        loop {
            let (root, levels, linked) = match &mut self.state {
                WalkState::Done => return None,
                WalkState::Start => {
                    match self.start() {
                        Ok(walking) => self.state = walking,
                        Err(e) => return Some(Err(e)),
                    }
                    continue;
                }
                WalkState::Walking {
                    root,
                    levels,
                    linked,
                } => (root, levels, linked),
            };
            let level = levels.last_mut()?;
            let Some(entry) = level.entries.next() else {
                levels.pop();
                continue;
            };
            let key = format!("{}{}", level.key_prefix, entry.name);
            let path = root.join(&key);
            if entry.kind == EntryKind::Folder {
                let root = root.clone();
                match self.read_level(&root, &format!("{key}/"), "") {
                    Ok(Some(level)) => {
                        if let WalkState::Walking { levels, .. } = &mut self.state {
                            levels.push(level);
                        }
                    }
                    Ok(None) => {}
                    Err(e) => return Some(Err(e)),
                }
                continue;
            }
            match fs::metadata(&path) {
                Ok(m) if m.is_file() => {
                    // A link itself is only a name: deleting it loses no bytes.
                    let reached =
                        entry.kind == EntryKind::File && linked.contains(&(m.dev(), m.ino()));
                    let object = ObjectMeta {
                        linked: reached,
                        ..object_meta(key, &m)
                    };
                    return Some(Ok(match entry.kind {
                        EntryKind::Link => through_link(&path, object),
                        _ => object,
                    }));
                }
                // Deleted since its folder was read (or a link's file since): it is not there,
                // as S3 would say.
                Err(e) if absent(&e) => continue,
                Ok(_) => {
                    return Some(Err(self.error(format!(
                        "{} stopped being a regular file during the listing",
                        path.display()
                    ))));
                }
                Err(e) => {
                    return Some(Err(self.error(format!("reading {}: {e}", path.display()))));
                }
            }
        }
    }
}

impl Iterator for Walk {
    type Item = Result<ObjectMeta>;

    fn next(&mut self) -> Option<Self::Item> {
        let item = self.advance();
        if !matches!(item, Some(Ok(_))) {
            self.state = WalkState::Done;
        }
        item
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::ffi::OsStrExt;
    use std::os::unix::fs::symlink;

    fn folder() -> (tempfile::TempDir, FolderBucket) {
        let dir = tempfile::tempdir().expect("temp dir");
        let bucket = FolderBucket::new(dir.path());
        (dir, bucket)
    }

    fn put(root: &Path, key: &str, body: &str) {
        let path = root.join(key);
        fs::create_dir_all(path.parent().expect("parent")).expect("create folders");
        fs::write(path, body).expect("write file");
    }

    fn keys(bucket: &FolderBucket, prefix: &str) -> Result<Vec<String>> {
        Walk::new(bucket.clone(), prefix.to_owned())
            .map(|o| o.map(|o| o.key))
            .collect()
    }

    fn error_of<T: std::fmt::Debug>(result: Result<T>) -> String {
        match result {
            Err(e) => e.to_string(),
            Ok(v) => panic!("expected an error, got {v:?}"),
        }
    }

    #[test]
    fn a_sibling_that_sorts_between_a_folder_and_its_slash_comes_first() {
        let (dir, bucket) = folder();
        for key in [
            "a/b", "a-b", "a.b", "a0", "a/a/z", "a/-", "b~", "é/x", "b/c/d",
        ] {
            put(dir.path(), key, key);
        }
        assert_eq!(
            keys(&bucket, "").expect("listing"),
            [
                "a-b", "a.b", "a/-", "a/a/z", "a/b", "a0", "b/c/d", "b~", "é/x"
            ]
        );
    }

    #[test]
    fn a_prefix_may_end_inside_a_name_or_at_a_folder() {
        let (dir, bucket) = folder();
        for key in ["docs/abc", "docs/ab/x", "docs/b", "docs-x", "other/abc"] {
            put(dir.path(), key, key);
        }
        assert_eq!(
            keys(&bucket, "docs/ab").expect("listing"),
            ["docs/ab/x", "docs/abc"]
        );
        assert_eq!(
            keys(&bucket, "docs/").expect("listing"),
            ["docs/ab/x", "docs/abc", "docs/b"]
        );
        assert_eq!(
            keys(&bucket, "docs").expect("listing"),
            ["docs-x", "docs/ab/x", "docs/abc", "docs/b"]
        );
        assert_eq!(
            keys(&bucket, "nothing/here").expect("listing"),
            Vec::<String>::new()
        );
        assert_eq!(
            keys(&bucket, "docs/b/").expect("a file is no folder"),
            Vec::<String>::new()
        );
    }

    #[test]
    fn empty_folders_list_as_nothing() {
        let (dir, bucket) = folder();
        fs::create_dir_all(dir.path().join("a/b/c")).expect("folders");
        fs::create_dir_all(dir.path().join("d")).expect("folders");
        assert_eq!(keys(&bucket, "").expect("listing"), Vec::<String>::new());
    }

    #[test]
    fn a_missing_root_is_an_error_not_an_empty_listing() {
        let (dir, _) = folder();
        let bucket = FolderBucket::new(&dir.path().join("unmounted"));
        let error = error_of(keys(&bucket, ""));
        assert!(error.contains("unmounted"), "{error}");
    }

    #[test]
    fn a_file_name_that_is_not_utf8_stops_the_listing_naming_the_path() {
        let (dir, bucket) = folder();
        put(dir.path(), "docs/a", "a");
        fs::write(
            dir.path()
                .join("docs")
                .join(std::ffi::OsStr::from_bytes(b"bad\xff")),
            "x",
        )
        .expect("write");
        let mut walk = Walk::new(bucket, String::new());
        let error = error_of(walk.by_ref().collect::<Result<Vec<_>>>());
        assert!(error.contains("docs/bad"), "{error}");
        assert!(error.contains("not UTF-8"), "{error}");
        assert!(walk.next().is_none(), "the listing ends at its error");
    }

    #[tokio::test]
    async fn keys_that_would_leave_the_folder_are_absent_to_head_and_refused_by_writes() {
        let (dir, bucket) = folder();
        put(dir.path(), "docs/a", "a");
        for key in [
            "../x",
            "docs/../../x",
            "/etc/passwd",
            "docs//a",
            "docs/./a",
            "docs/a/",
            "",
            "a\0b",
            "..",
        ] {
            // No file in the folder has such a key: HEAD says absent, as the listing does.
            assert_eq!(bucket.head(key).await.expect("head"), None, "{key:?}");
            for error in [
                error_of(bucket.copy_new(&seen("docs/a"), key).await),
                error_of(bucket.copy_new(&seen(key), "docs/b").await),
                error_of(bucket.delete_if(&seen(key)).await),
            ] {
                assert!(
                    error.contains(&format!("refused key {key:?}")),
                    "{key:?}: {error}"
                );
            }
        }
        let listing = error_of(keys(&bucket, "../"));
        assert!(listing.contains("refused key \"..\""), "{listing}");
        assert!(!dir.path().join("docs/b").exists());
    }

    #[tokio::test]
    async fn symbolic_links_are_not_followed_out_of_the_folder() {
        let outside = tempfile::tempdir().expect("temp dir");
        fs::write(outside.path().join("secret"), "secret").expect("write");
        let (dir, bucket) = folder();
        put(dir.path(), "docs/a", "a");
        symlink(outside.path(), dir.path().join("docs/out")).expect("symlink");
        symlink(outside.path().join("secret"), dir.path().join("file-out")).expect("symlink");

        for key in ["docs/out/secret", "file-out", "docs/out/new"] {
            let error = error_of(bucket.head(key).await);
            assert!(
                error.contains("leads it out of the folder"),
                "{key}: {error}"
            );
            let error = error_of(bucket.delete_if(&seen(key)).await);
            assert!(
                error.contains("leads it out of the folder"),
                "{key}: {error}"
            );
        }
        error_of(bucket.copy_new(&seen("docs/a"), "docs/out/new").await);
        error_of(bucket.copy_new(&seen("file-out"), "docs/stolen").await);
        assert!(!outside.path().join("new").exists());
        assert!(!dir.path().join("docs/stolen").exists());
        assert!(outside.path().join("secret").exists());

        let listing = error_of(keys(&bucket, ""));
        assert!(listing.contains("leads out of the folder"), "{listing}");
    }

    #[tokio::test]
    async fn a_symbolic_link_to_a_file_inside_is_listed_as_that_file() {
        let (dir, bucket) = folder();
        put(dir.path(), "real/a", "body");
        symlink(dir.path().join("real/a"), dir.path().join("link")).expect("symlink");
        let listed: Vec<ObjectMeta> = Walk::new(bucket.clone(), String::new())
            .collect::<Result<_>>()
            .expect("listing");
        assert_eq!(
            listed.iter().map(|o| o.key.as_str()).collect::<Vec<_>>(),
            ["link", "real/a"]
        );
        assert_eq!(listed[0].etag, listed[1].etag, "the same file");
        assert_eq!(
            (listed[0].linked, listed[1].linked),
            (false, true),
            "the file a link leads to is marked, the link (only a name) is not"
        );
        let head = bucket.head("link").await.expect("head").expect("present");
        assert_eq!(head.etag, listed[0].etag);
    }

    #[tokio::test]
    async fn a_link_anywhere_in_the_folder_marks_its_file_in_any_listing_and_a_dangling_one_is_absent()
     {
        let (dir, bucket) = folder();
        put(dir.path(), "docs/blobs/one", "1");
        put(dir.path(), "docs/blobs/two", "2");
        put(dir.path(), "docs/hard", "h");
        fs::hard_link(
            dir.path().join("docs/hard"),
            dir.path().join("docs/blobs/three"),
        )
        .expect("hard link");
        fs::create_dir_all(dir.path().join("public/deep")).expect("folders");
        // Outside the listed prefix, through a chain of two links, and to a hard link's other name.
        symlink("../../docs/blobs/one", dir.path().join("public/deep/a")).expect("symlink");
        symlink("a", dir.path().join("public/deep/b")).expect("symlink");
        symlink("../docs/hard", dir.path().join("public/h")).expect("symlink");
        symlink("blobs/gone", dir.path().join("docs/dangling")).expect("symlink");
        let linked: Vec<(String, bool)> = Walk::new(bucket.clone(), "docs/".into())
            .map(|o| o.map(|o| (o.key, o.linked)))
            .collect::<Result<_>>()
            .expect("a dangling link is no listing error");
        assert_eq!(
            linked,
            [
                ("docs/blobs/one".to_owned(), true),
                ("docs/blobs/three".to_owned(), true),
                ("docs/blobs/two".to_owned(), false),
                ("docs/hard".to_owned(), true),
            ]
        );
        assert_eq!(bucket.head("docs/dangling").await.expect("head"), None);
    }

    #[tokio::test]
    async fn a_delete_looks_for_links_again_and_keeps_a_file_linked_since_the_listing() {
        let (dir, bucket) = folder();
        put(dir.path(), "docs/blobs/one", "1");
        put(dir.path(), "docs/blobs/two", "2");
        let listed = keys_meta(&bucket);
        assert!(listed.iter().all(|o| !o.linked), "{listed:?}");
        // A new doc deduplicated onto `one` after the listing.
        symlink("blobs/one", dir.path().join("docs/new-doc")).expect("symlink");
        assert_eq!(
            bucket.delete_if(&listed[0]).await.expect("delete"),
            DeleteOutcome::Changed
        );
        assert_eq!(
            fs::read_to_string(dir.path().join("docs/new-doc")).expect("read"),
            "1"
        );
        // The link itself may go (it is only a name), and so may the file nothing leads to.
        let link = bucket
            .head("docs/new-doc")
            .await
            .expect("head")
            .expect("present");
        assert_eq!(
            bucket.delete_if(&link).await.expect("delete"),
            DeleteOutcome::Deleted
        );
        assert!(dir.path().join("docs/blobs/one").exists());
        assert_eq!(
            bucket.delete_if(&listed[1]).await.expect("delete"),
            DeleteOutcome::Deleted
        );
    }

    #[test]
    fn a_file_arrives_when_it_is_renamed_or_copied_in_whatever_its_mtime_says() {
        let (dir, bucket) = folder();
        let two_years = std::time::Duration::from_secs(730 * 86_400);
        put(dir.path(), "elsewhere", "moved");
        let old = std::time::SystemTime::now() - two_years;
        File::options()
            .write(true)
            .open(dir.path().join("elsewhere"))
            .and_then(|f| f.set_modified(old))
            .expect("backdate");
        let before = fs::metadata(dir.path().join("elsewhere")).expect("stat");
        fs::create_dir_all(dir.path().join("docs")).expect("folder");
        // A rename (mv) moves no bytes and keeps mtime; this file system sets ctime to now.
        std::thread::sleep(std::time::Duration::from_millis(20));
        fs::rename(dir.path().join("elsewhere"), dir.path().join("docs/moved")).expect("mv");
        let after = fs::metadata(dir.path().join("docs/moved")).expect("stat");
        assert_eq!(after.mtime(), before.mtime(), "rename keeps mtime");
        assert!(
            (after.ctime(), after.ctime_nsec()) > (before.ctime(), before.ctime_nsec()),
            "rename sets ctime on this file system"
        );
        let listed = keys_meta(&bucket);
        let age = Utc::now() - listed[0].last_modified;
        assert!(age < chrono::Duration::minutes(1), "arrived {age} ago");
        // `touch -d` on a file in place: as recent as the touch.
        File::options()
            .write(true)
            .open(dir.path().join("docs/moved"))
            .and_then(|f| f.set_modified(old))
            .expect("backdate again");
        let age = Utc::now() - keys_meta(&bucket)[0].last_modified;
        assert!(age < chrono::Duration::minutes(1), "arrived {age} ago");
    }

    /// Names a file system treats specially or a naive path join would misread; the
    /// conformance suite runs copy and delete over the names both backends share.
    #[tokio::test]
    async fn hostile_names_are_keys_exactly_as_named_on_disk() {
        let (dir, bucket) = folder();
        let names = [
            "docs/a b",
            "docs/a+b%20",
            "docs/ünï/cödé",
            "docs/new\nline",
            "docs/tab\there",
            "docs/a..b",
            "docs/...",
            "docs/.hidden",
            "docs/back\\slash",
            "docs/ctl\u{1}x",
        ];
        for name in names {
            put(dir.path(), name, name);
        }
        let mut sorted = names.map(str::to_owned).to_vec();
        sorted.sort();
        assert_eq!(keys(&bucket, "docs/").expect("listing"), sorted);
        for name in names {
            let head = bucket.head(name).await.expect("head").expect("present");
            assert_eq!(head.size, name.len() as i64, "{name:?}");
        }
    }

    #[tokio::test]
    async fn head_tells_files_from_folders_and_absence() {
        let (dir, bucket) = folder();
        put(dir.path(), "docs/a", "12345");
        let head = bucket.head("docs/a").await.expect("head").expect("present");
        assert_eq!(head.size, 5);
        let listed = keys_meta(&bucket);
        assert_eq!(
            listed,
            vec![head.clone()],
            "listing and HEAD agree on every fact"
        );
        assert_eq!(
            bucket.head("docs").await.expect("head"),
            None,
            "a folder is no object"
        );
        assert_eq!(bucket.head("docs/b").await.expect("head"), None);
        assert_eq!(bucket.head("docs/a/below").await.expect("head"), None);

        // A rewrite with the same size is a new ETag.
        let replacement = dir.path().join("docs/.replacement");
        fs::write(&replacement, "54321").expect("write");
        fs::rename(&replacement, dir.path().join("docs/a")).expect("replace");
        let again = bucket.head("docs/a").await.expect("head").expect("present");
        assert_ne!(again.etag, head.etag);
    }

    fn keys_meta(bucket: &FolderBucket) -> Vec<ObjectMeta> {
        Walk::new(bucket.clone(), String::new())
            .collect::<Result<_>>()
            .expect("listing")
    }

    /// An object as a caller might have seen it, with no ETag to hold it to.
    fn seen(key: &str) -> ObjectMeta {
        ObjectMeta {
            key: key.to_owned(),
            size: 0,
            etag: None,
            last_modified: Utc::now(),
            linked: false,
        }
    }

    #[tokio::test]
    async fn a_copy_is_checked_and_an_identical_earlier_copy_is_recognised() {
        let (dir, bucket) = folder();
        put(dir.path(), "docs/a", "body");
        let a = bucket.head("docs/a").await.expect("head").expect("present");
        let copied = bucket.copy_new(&a, "quarantine/docs/a/1").await;
        assert_eq!(copied.expect("copy"), CopyOutcome::Copied);
        assert_eq!(
            fs::read_to_string(dir.path().join("quarantine/docs/a/1")).expect("read"),
            "body"
        );
        let again = bucket.copy_new(&a, "quarantine/docs/a/1").await;
        assert_eq!(again.expect("copy"), CopyOutcome::AlreadyCopied);
        // The original changed since it was seen: nothing is copied.
        put(dir.path(), "docs/a", "other body");
        let changed = bucket.copy_new(&a, "quarantine/docs/a/2").await;
        assert_eq!(changed.expect("copy"), CopyOutcome::SourceChanged);
        assert!(!dir.path().join("quarantine/docs/a/2").exists());
        assert_eq!(
            bucket.delete_if(&a).await.expect("delete"),
            DeleteOutcome::Changed
        );
        assert!(dir.path().join("docs/a").exists());
    }

    #[tokio::test]
    async fn a_copy_never_replaces_a_file_and_keeps_the_source() {
        let (dir, bucket) = folder();
        put(dir.path(), "docs/a", "v2");
        put(dir.path(), "quarantine/docs/a", "v1");
        let a = bucket.head("docs/a").await.expect("head").expect("present");
        let taken = bucket
            .copy_new(&a, "quarantine/docs/a")
            .await
            .expect("copy");
        assert!(matches!(taken, CopyOutcome::Taken(_)), "{taken:?}");
        assert_eq!(
            fs::read_to_string(dir.path().join("quarantine/docs/a")).expect("read"),
            "v1"
        );
        assert_eq!(
            fs::read_to_string(dir.path().join("docs/a")).expect("read"),
            "v2"
        );
        let gone = bucket.copy_new(&seen("docs/none"), "docs/b").await;
        assert_eq!(gone.expect("copy"), CopyOutcome::SourceChanged);
        // No temporary file is left behind by either refusal.
        assert_eq!(
            keys(&bucket, "").expect("listing"),
            ["docs/a", "quarantine/docs/a"]
        );
    }

    #[test]
    fn rename_noreplace_refuses_a_taken_name_and_keeps_both_files() {
        let dir = tempfile::tempdir().expect("temp dir");
        let (from, to) = (dir.path().join("from"), dir.path().join("to"));
        fs::write(&from, "new").expect("write");
        fs::write(&to, "old").expect("write");
        let error = rename_noreplace(&from, &to).expect_err("taken");
        assert_eq!(error.kind(), io::ErrorKind::AlreadyExists);
        assert_eq!(fs::read_to_string(&from).expect("kept"), "new");
        assert_eq!(fs::read_to_string(&to).expect("kept"), "old");
        fs::remove_file(&to).expect("free the name");
        rename_noreplace(&from, &to).expect("free name");
        assert!(!from.exists());
        assert_eq!(fs::read_to_string(&to).expect("moved"), "new");
    }

    #[test]
    fn unlink_if_same_leaves_a_changed_file() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("a");
        fs::write(&path, "v1").expect("write");
        let seen = etag_of(&fs::metadata(&path).expect("stat"));
        let replacement = dir.path().join("b");
        fs::write(&replacement, "v2").expect("write");
        fs::rename(&replacement, &path).expect("replace");
        assert!(!unlink_if_same(&path, Some(&seen)).expect("checked"));
        assert!(path.exists());
        let now = etag_of(&fs::metadata(&path).expect("stat"));
        assert!(unlink_if_same(&path, Some(&now)).expect("same"));
        assert!(!path.exists());
        assert!(unlink_if_same(&path, None).expect("a missing file is deleted already"));
    }

    #[tokio::test]
    async fn delete_leaves_the_folders_and_the_listing_ignores_them() {
        let (dir, bucket) = folder();
        put(dir.path(), "docs/sub/a", "a");
        let a = bucket
            .head("docs/sub/a")
            .await
            .expect("head")
            .expect("present");
        assert_eq!(
            bucket.delete_if(&a).await.expect("delete"),
            DeleteOutcome::Deleted
        );
        assert!(dir.path().join("docs/sub").is_dir());
        assert_eq!(keys(&bucket, "").expect("listing"), Vec::<String>::new());
        assert_eq!(
            bucket
                .delete_if(&a)
                .await
                .expect("a missing key is no error"),
            DeleteOutcome::Changed
        );
    }

    #[tokio::test]
    async fn ping_needs_a_readable_folder() {
        let (dir, bucket) = folder();
        bucket.ping().await.expect("a folder");
        put(dir.path(), "file", "x");
        let error = error_of(FolderBucket::new(&dir.path().join("file")).ping().await);
        assert!(error.contains("not a folder"), "{error}");
        let error = error_of(FolderBucket::new(&dir.path().join("none")).ping().await);
        assert!(error.contains("none"), "{error}");
        assert_eq!(bucket.url(), format!("file://{}", dir.path().display()));
        assert_eq!(
            FolderBucket::new(Path::new("/srv/up/")).url(),
            "file:///srv/up"
        );
        assert_eq!(
            FolderBucket::new(Path::new("/")).object_url("a"),
            "file:///a"
        );
    }

    mod byte_order {
        use super::*;
        use proptest::prelude::*;

        /// Path components over characters on both sides of `/` (0x2F): `-` and `.` below it,
        /// digits, letters, `~` and a two-byte character above it.
        fn component() -> impl Strategy<Value = String> {
            proptest::string::string_regex("[-.0a~é]{1,3}")
                .expect("regex")
                .prop_filter("not . or ..", |c| c != "." && c != "..")
        }

        fn key() -> impl Strategy<Value = String> {
            proptest::collection::vec(component(), 1..4).prop_map(|parts| parts.join("/"))
        }

        /// Keys that can coexist as files: none is a folder of another.
        fn tree(keys: Vec<String>) -> Vec<String> {
            let mut kept: Vec<String> = Vec::new();
            for key in keys {
                let clash = kept.iter().any(|k| {
                    *k == key
                        || k.starts_with(&format!("{key}/"))
                        || key.starts_with(&format!("{k}/"))
                });
                if !clash {
                    kept.push(key);
                }
            }
            kept
        }

        proptest! {
            #![proptest_config(ProptestConfig { cases: 96, ..ProptestConfig::default() })]

            #[test]
            fn the_walk_lists_exactly_the_sorted_keys(
                keys in proptest::collection::vec(key(), 1..16),
                cut in any::<prop::sample::Index>(),
                pick in any::<prop::sample::Index>(),
            ) {
                let keys = tree(keys);
                let (dir, bucket) = folder();
                for key in &keys {
                    put(dir.path(), key, "x");
                }
                let mut expected = keys.clone();
                expected.sort();
                prop_assert_eq!(super::keys(&bucket, "").expect("listing"), expected.clone());

                // A prefix cut anywhere in a key, inside a name or at a `/`.
                let picked = &keys[pick.index(keys.len())];
                let bounds: Vec<usize> = (0..=picked.len()).filter(|i| picked.is_char_boundary(*i)).collect();
                let prefix = &picked[..bounds[cut.index(bounds.len())]];
                let filtered: Vec<String> = expected.into_iter().filter(|k| k.starts_with(prefix)).collect();
                prop_assert_eq!(super::keys(&bucket, prefix).expect("listing"), filtered, "prefix {:?}", prefix);
            }
        }
    }
}
