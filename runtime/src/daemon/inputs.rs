//! The watched inputs: files and directories (recursively) of manifests, kept in step with the
//! compile [`Session`] — only files whose text changed are parsed again (the session checks).
//!
//! inotify events (through `notify`) only say *where* to look: the paths they name are marked
//! dirty and re-read at the next sync, so a burst of events costs one read. What is read:
//! - in directories, `*.yaml`, `*.yml`, `*.json`, recursively, skipping hidden entries (names
//!   starting with `.`: editor temp files, and the `..data` / `..2024_…` directories of a
//!   Kubernetes ConfigMap volume, whose visible files are symlinks through `..data` — an event on
//!   a hidden entry makes its directory be re-checked instead);
//! - a file given explicitly, whatever its name.
//!
//! A file that is being written (created or modified, not yet closed) is read when its writer
//! closes it, or [`WRITE_GRACE`] after its last change, so a slow writer is not read half-done.
//! Writers that rename a finished file into place are picked up at once. Every syncPeriod the
//! whole tree is checked again (by size, mtime, ctime and inode; only changed files are read),
//! which also catches anything inotify missed (queue overflow, watch limits).

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::fs::Metadata;
use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::{Component, Path, PathBuf};
use std::time::{Duration, Instant};

use notify::event::{AccessKind, AccessMode, CreateKind, EventKind, ModifyKind};
use notify::{RecursiveMode, Watcher};
use svcc_compiler::session::Session;
use svcc_compiler::Diagnostic;

/// How long a file that is being written may stay unread.
pub const WRITE_GRACE: Duration = Duration::from_secs(1);

fn is_manifest(p: &Path) -> bool {
    matches!(
        p.extension().and_then(|e| e.to_str()),
        Some("yaml" | "yml" | "json")
    )
}

fn is_hidden(name: &std::ffi::OsStr) -> bool {
    name.as_encoded_bytes().first() == Some(&b'.')
}

/// What identifies a file's version without reading it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Stamp {
    dev: u64,
    ino: u64,
    len: u64,
    mtime: (i64, i64),
    ctime: (i64, i64),
}

impl Stamp {
    fn of(m: &Metadata) -> Stamp {
        Stamp {
            dev: m.dev(),
            ino: m.ino(),
            len: m.len(),
            mtime: (m.mtime(), m.mtime_nsec()),
            ctime: (m.ctime(), m.ctime_nsec()),
        }
    }
}

#[derive(Debug, Clone)]
struct Root {
    path: PathBuf,
    dir: bool,
    watched: bool,
}

/// What a refresh did.
#[derive(Debug, Default, Clone, Copy)]
pub struct Change {
    /// The session's content changed (a compile is needed).
    pub changed: bool,
    /// Files (re)parsed.
    pub files_read: usize,
    /// Files that left the session.
    pub files_removed: usize,
}

pub struct Inputs {
    roots: Vec<Root>,
    watcher: notify::RecommendedWatcher,
    /// Paths (files or directories) to look at again.
    dirty: BTreeSet<PathBuf>,
    /// Files being written: time of their last change event.
    writing: HashMap<PathBuf, Instant>,
    rescan_all: bool,
    /// Files in the session, with the stamp they had when read.
    known: BTreeMap<PathBuf, Stamp>,
    /// Files that cannot be read, and why (one error diagnostic each, reported with the
    /// compile's diagnostics: logged once when it appears, counted, `resolved:` when fixed).
    unreadable: BTreeMap<PathBuf, Diagnostic>,
}

fn name_of(p: &Path) -> String {
    p.display().to_string()
}

impl Inputs {
    /// Watches the paths (each must exist). `handler` receives the raw notify events (on
    /// notify's thread); hand them back to [`Inputs::on_event`].
    pub fn new<H>(paths: &[PathBuf], handler: H) -> Result<Inputs, String>
    where
        H: notify::EventHandler,
    {
        let watcher = notify::recommended_watcher(handler)
            .map_err(|e| format!("cannot start the file watcher: {e}"))?;
        let mut roots = Vec::new();
        for p in paths {
            let abs = std::path::absolute(p).map_err(|e| format!("{}: {e}", p.display()))?;
            let m = std::fs::metadata(&abs).map_err(|e| format!("--watch {}: {e}", p.display()))?;
            roots.push(Root {
                path: abs,
                dir: m.is_dir(),
                watched: false,
            });
        }
        let mut me = Inputs {
            roots,
            watcher,
            dirty: BTreeSet::new(),
            writing: HashMap::new(),
            rescan_all: true,
            known: BTreeMap::new(),
            unreadable: BTreeMap::new(),
        };
        for i in 0..me.roots.len() {
            me.watch_root(i)
                .map_err(|e| format!("cannot watch {}: {e}", me.roots[i].path.display()))?;
        }
        Ok(me)
    }

    /// A directory recursively; a file through its directory (so that a file replaced by a
    /// rename, or a ConfigMap's `..data` swap next to it, is seen).
    fn watch_root(&mut self, i: usize) -> notify::Result<()> {
        let r = &self.roots[i];
        if r.dir {
            self.watcher.watch(&r.path, RecursiveMode::Recursive)?;
        } else {
            let parent = r.path.parent().unwrap_or(Path::new("/")).to_path_buf();
            self.watcher.watch(&parent, RecursiveMode::NonRecursive)?;
        }
        self.roots[i].watched = true;
        Ok(())
    }

    pub fn files(&self) -> usize {
        self.known.len() - self.unreadable.len()
    }

    pub fn unreadable(&self) -> usize {
        self.unreadable.len()
    }

    /// One error per file that cannot be read (permissions, not UTF-8 — with the position of
    /// the first bad byte —, an I/O error), rendered like every other input diagnostic.
    pub fn diagnostics(&self) -> impl Iterator<Item = &Diagnostic> {
        self.unreadable.values()
    }

    /// Takes in one watcher event; returns whether it marked something to look at.
    pub fn on_event(&mut self, ev: notify::Result<notify::Event>, now: Instant) -> bool {
        let ev = match ev {
            Ok(ev) => ev,
            Err(e) => {
                tracing::warn!(error = %e, "file watcher: {e}; re-reading every watched path");
                self.rescan_all = true;
                return true;
            }
        };
        if ev.need_rescan() {
            tracing::warn!("file watcher: events were lost; re-reading every watched path");
            self.rescan_all = true;
            return true;
        }
        let mut marked = false;
        for p in &ev.paths {
            let mut being_written = false;
            match ev.kind {
                // Our own reads (and anyone's) show up as opens and closes: not changes.
                EventKind::Access(AccessKind::Close(AccessMode::Write)) => {
                    self.writing.remove(p);
                }
                EventKind::Access(_) | EventKind::Other => continue,
                EventKind::Create(CreateKind::File)
                | EventKind::Modify(ModifyKind::Data(_))
                | EventKind::Modify(ModifyKind::Any) => being_written = true,
                EventKind::Remove(_) | EventKind::Modify(ModifyKind::Name(_)) => {
                    self.writing.remove(p);
                    for r in &mut self.roots {
                        if r.dir && r.path == *p {
                            r.watched = false; // the watch went with it
                        }
                    }
                }
                _ => {}
            }
            if self.mark(p) {
                marked = true;
                if being_written && self.dirty.contains(p) {
                    self.writing.insert(p.clone(), now);
                }
            }
        }
        marked
    }

    /// Marks what a changed path means for the inputs.
    fn mark(&mut self, p: &Path) -> bool {
        let mut hit = None;
        for r in &self.roots {
            if !r.dir {
                let same_dir = p.parent() == r.path.parent();
                if p == r.path || (same_dir && p.file_name().is_some_and(is_hidden)) {
                    hit = Some(r.path.clone());
                }
                continue;
            }
            let Ok(rel) = p.strip_prefix(&r.path) else {
                continue;
            };
            // The first hidden component below the root, if any.
            let mut at = r.path.clone();
            let mut hidden = None;
            for c in rel.components() {
                if let Component::Normal(n) = c {
                    if is_hidden(n) {
                        hidden = Some((at.clone(), at.join(n)));
                        break;
                    }
                    at.push(n);
                }
            }
            hit = Some(match hidden {
                // A hidden directory, or symlink to one, appeared or changed (a ConfigMap's
                // `..data` swap): re-check the directory that holds it (by stamps: only files
                // that changed are read).
                Some((dir, h)) if std::fs::metadata(&h).is_ok_and(|m| m.is_dir()) => dir,
                // Anything else hidden: an editor's or writer's temp file, created, written,
                // renamed away or removed; or a hidden directory removed (a ConfigMap's old
                // `..2024_…`, after `..data` moved on). Nothing visible changed through it.
                Some(_) => continue,
                None => p.to_path_buf(),
            });
        }
        let Some(h) = hit else {
            return false;
        };
        if !self.worth_a_look(&h) {
            return false;
        }
        self.dirty.insert(h);
        true
    }

    /// Whether a path can change the inputs: an existing directory, a manifest or explicit
    /// file, or a path that held files we read (a removed file or directory). Not: other files
    /// (`sed -i`'s temp file, `*.bak`), or paths that never held anything of ours.
    fn worth_a_look(&self, p: &Path) -> bool {
        match std::fs::metadata(p) {
            Ok(m) if m.is_dir() => true,
            Ok(_) if is_manifest(p) || self.roots.iter().any(|r| r.path == p) => true,
            _ => self
                .known
                .range(p.to_path_buf()..)
                .next()
                .is_some_and(|(k, _)| k.starts_with(p)),
        }
    }

    fn deferred(&self, p: &Path, now: Instant) -> bool {
        self.writing
            .get(p)
            .is_some_and(|t| now.saturating_duration_since(*t) < WRITE_GRACE)
    }

    /// Whether a refresh now would look at something.
    pub fn ready(&self, now: Instant) -> bool {
        self.rescan_all || self.dirty.iter().any(|p| !self.deferred(p, now))
    }

    /// When a file now deferred (being written) becomes due.
    pub fn next_due(&self) -> Option<Instant> {
        self.dirty
            .iter()
            .filter_map(|p| self.writing.get(p))
            .min()
            .map(|t| *t + WRITE_GRACE)
    }

    /// Brings the session up to date: the dirty paths, or (`full`) every watched path.
    pub fn refresh(&mut self, session: &mut Session, now: Instant, full: bool) -> Change {
        let mut ch = Change::default();
        if full || std::mem::take(&mut self.rescan_all) {
            self.rescan_all = false;
            for i in 0..self.roots.len() {
                if !self.roots[i].watched && self.roots[i].path.exists() {
                    match self.watch_root(i) {
                        Ok(()) => {
                            tracing::info!(path = %self.roots[i].path.display(), "watching again")
                        }
                        Err(e) => {
                            tracing::warn!(path = %self.roots[i].path.display(), error = %e, "cannot watch")
                        }
                    }
                }
            }
            let mut seen = BTreeSet::new();
            for r in self.roots.clone() {
                self.scan(&r.path, !r.dir, false, &mut seen, session, &mut ch);
            }
            let gone: Vec<PathBuf> = self
                .known
                .keys()
                .filter(|k| !seen.contains(*k))
                .cloned()
                .collect();
            for g in gone {
                self.forget(&g, session, &mut ch);
            }
            self.dirty.retain(|p| self.writing.contains_key(p));
            return ch;
        }
        let due: Vec<PathBuf> = self
            .dirty
            .iter()
            .filter(|p| !self.deferred(p, now))
            .cloned()
            .collect();
        for p in due {
            self.dirty.remove(&p);
            self.writing.remove(&p);
            let explicit = self.roots.iter().any(|r| !r.dir && r.path == p);
            let mut seen = BTreeSet::new();
            self.scan(&p, explicit, true, &mut seen, session, &mut ch);
            // Whatever was under this path and is not any more.
            let gone: Vec<PathBuf> = self
                .known
                .keys()
                .filter(|k| k.starts_with(&p) && !seen.contains(*k))
                .cloned()
                .collect();
            for g in gone {
                self.forget(&g, session, &mut ch);
            }
        }
        ch
    }

    /// Reads `p` (file) or the manifests under it (directory) into the session; `force` reads
    /// files even if their stamp is unchanged.
    fn scan(
        &mut self,
        p: &Path,
        explicit: bool,
        force: bool,
        seen: &mut BTreeSet<PathBuf>,
        session: &mut Session,
        ch: &mut Change,
    ) {
        match std::fs::metadata(p) {
            Ok(m) if m.is_dir() => {
                // Directory events say "something in here changed": compare stamps, read only
                // what changed (a file replaced by a rename has a new inode).
                let mut visited = HashSet::new();
                self.walk(p, &mut visited, false, seen, session, ch);
            }
            Ok(m) if m.is_file() && (explicit || is_manifest(p)) => {
                seen.insert(p.to_path_buf());
                self.read(p, &m, force, session, ch);
            }
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => {
                tracing::warn!(path = %p.display(), error = %e, "cannot look at a watched path");
                // Keep what we had: a transient error must not drop services.
                for k in self.known.keys().filter(|k| k.starts_with(p)) {
                    seen.insert(k.clone());
                }
            }
        }
    }

    fn walk(
        &mut self,
        dir: &Path,
        visited: &mut HashSet<(u64, u64)>,
        force: bool,
        seen: &mut BTreeSet<PathBuf>,
        session: &mut Session,
        ch: &mut Change,
    ) {
        let Ok(m) = std::fs::metadata(dir) else {
            return;
        };
        if !visited.insert((m.dev(), m.ino())) {
            return; // a symlink loop
        }
        let entries = match std::fs::read_dir(dir) {
            Ok(e) => e,
            Err(e) => {
                tracing::warn!(path = %dir.display(), error = %e, "cannot read a watched directory");
                for k in self.known.keys().filter(|k| k.starts_with(dir)) {
                    seen.insert(k.clone());
                }
                return;
            }
        };
        let mut paths: Vec<PathBuf> = entries
            .filter_map(|e| e.ok())
            .filter(|e| !is_hidden(&e.file_name()))
            .map(|e| e.path())
            .collect();
        paths.sort();
        for p in paths {
            match std::fs::metadata(&p) {
                Ok(m) if m.is_dir() => self.walk(&p, visited, force, seen, session, ch),
                Ok(m) if m.is_file() && is_manifest(&p) => {
                    seen.insert(p.clone());
                    self.read(&p, &m, force, session, ch);
                }
                _ => {}
            }
        }
    }

    fn read(
        &mut self,
        p: &Path,
        m: &Metadata,
        force: bool,
        session: &mut Session,
        ch: &mut Change,
    ) {
        let stamp = Stamp::of(m);
        // A file that could not be read is tried again at every look (its stamp need not change
        // when it becomes readable: a transient I/O error, a permission fixed elsewhere).
        if !force && self.known.get(p) == Some(&stamp) && !self.unreadable.contains_key(p) {
            return;
        }
        let source = match std::fs::read(p) {
            Ok(b) => svcc_compiler::manifest::decode(&name_of(p), b),
            // Gone between the listing and the read: as if it had not been listed.
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                self.forget(p, session, ch);
                return;
            }
            Err(e) => Err(Diagnostic::error(&name_of(p), format!("cannot read: {e}"))),
        };
        self.known.insert(p.to_path_buf(), stamp);
        match source {
            Ok(source) => {
                if self.unreadable.remove(p).is_some() {
                    // The diagnostic goes away: a sync reports it `resolved:`.
                    ch.changed = true;
                    tracing::debug!(file = %p.display(), "file readable again");
                }
                if session.set_file(source) {
                    ch.changed = true;
                    ch.files_read += 1;
                    tracing::debug!(file = %p.display(), "file read");
                }
            }
            Err(d) => {
                // A new or different problem: a sync reports it (even when the session, which
                // never had this file, did not change).
                if self.unreadable.get(p) != Some(&d) {
                    ch.changed = true;
                }
                self.unreadable.insert(p.to_path_buf(), d);
                if session.remove_file(&name_of(p)) {
                    ch.changed = true;
                    ch.files_removed += 1;
                }
            }
        }
    }

    fn forget(&mut self, p: &Path, session: &mut Session, ch: &mut Change) {
        self.known.remove(p);
        if self.unreadable.remove(p).is_some() {
            ch.changed = true; // its diagnostic is resolved
        }
        if session.remove_file(&name_of(p)) {
            ch.changed = true;
            ch.files_removed += 1;
            tracing::debug!(file = %p.display(), "file gone");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use svcc_compiler::NodeSettings;

    const SVC: &str = "apiVersion: v1\nkind: Service\nmetadata: {name: a, namespace: n}\nspec: {clusterIP: 10.96.0.1, ports: [{port: 80}]}\n";

    #[test]
    fn an_unreadable_file_is_reported_and_picked_up_when_fixed() {
        let dir = std::env::temp_dir().join(format!("svcc-inputs-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("good.yaml"), SVC).unwrap();
        let bad = dir.join("bad.yaml");
        std::fs::write(&bad, b"apiVersion: v1\nkind: Serv\xe9ice\n").unwrap();
        // Listed, gone when read: left out silently (it is not there).
        std::os::unix::fs::symlink(dir.join("nowhere.yaml"), dir.join("gone.yaml")).unwrap();
        let mut inputs = Inputs::new(std::slice::from_ref(&dir), |_| {}).unwrap();
        let mut session = Session::new(NodeSettings::default());
        let now = Instant::now();

        let ch = inputs.refresh(&mut session, now, true);
        assert!(ch.changed);
        assert_eq!((inputs.files(), inputs.unreadable()), (1, 1));
        let d: Vec<String> = inputs.diagnostics().map(|d| d.to_string()).collect();
        assert_eq!(
            d,
            [format!(
                "error: {}:2:11: not UTF-8 text: invalid byte 0xe9 at byte offset 25; the file is not read",
                bad.display()
            )]
        );
        let names: Vec<&str> = session.file_names().collect();
        assert_eq!(names, [dir.join("good.yaml").display().to_string()]);

        // Nothing changed: nothing to report again.
        assert!(!inputs.refresh(&mut session, now, true).changed);

        // Fixed (a new inode, as a rename into place): read, the error is gone.
        let tmp = dir.join(".bad.tmp");
        std::fs::write(
            &tmp,
            SVC.replace("name: a", "name: b").replace(".1,", ".2,"),
        )
        .unwrap();
        std::fs::rename(&tmp, &bad).unwrap();
        let ch = inputs.refresh(&mut session, now, true);
        assert!(ch.changed && ch.files_read == 1);
        assert_eq!((inputs.files(), inputs.unreadable()), (2, 0));
        assert_eq!(inputs.diagnostics().count(), 0);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
