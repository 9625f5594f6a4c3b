//! Reading the user's inputs: manifest files, directories (recursively), `-` for stdin, and
//! the KubeProxyConfiguration file. The compiler itself never touches the filesystem.

use std::collections::HashMap;
use std::io::{ErrorKind, Read, Write};
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};

use anyhow::{anyhow, Context, Result};
use svcc_compiler::manifest::decode;
use svcc_compiler::{Diagnostic, Source};

fn is_manifest(p: &Path) -> bool {
    matches!(
        p.extension().and_then(|e| e.to_str()),
        Some("yaml" | "yml" | "json")
    )
}

fn is_hidden(p: &Path) -> bool {
    p.file_name()
        .is_some_and(|n| n.as_encoded_bytes().first() == Some(&b'.'))
}

/// Reads every input; directories contribute their `*.yaml|*.yml|*.json` files, sorted
/// (hidden entries skipped, as `svcc run` does). What cannot be read — a missing or unreadable
/// path, a file that is not UTF-8, a directory reached again through a symlink — is one
/// diagnostic naming it, and the other inputs are still read: the caller decides, like for an
/// invalid object, whether that stops the run (`--keep-going`).
pub fn read_sources(paths: &[PathBuf]) -> (Vec<Source>, Vec<Diagnostic>) {
    let mut out = Vec::new();
    let mut diags = Vec::new();
    // Directories entered, by (device, inode): a symlink back to an ancestor would otherwise
    // be walked forever, and one to a directory already read would read its files twice.
    let mut visited = HashMap::new();
    for p in paths {
        if p.as_os_str() == "-" {
            let mut bytes = Vec::new();
            match std::io::stdin().read_to_end(&mut bytes) {
                Ok(_) => match decode("<stdin>", bytes) {
                    Ok(s) => out.push(s),
                    Err(d) => diags.push(d),
                },
                Err(e) => diags.push(Diagnostic::error(
                    "<stdin>",
                    format!("cannot read standard input: {e}"),
                )),
            }
            continue;
        }
        match std::fs::metadata(p) {
            Ok(m) if m.is_dir() => {
                let mut files = Vec::new();
                walk(p, &m, &mut Vec::new(), &mut visited, &mut files, &mut diags);
                files.sort();
                for f in files {
                    match read_source(&f) {
                        Ok(s) => out.push(s),
                        Err(d) => diags.push(d),
                    }
                }
            }
            // A file given by name is read whatever it is (`<(kubectl get …)` is a pipe).
            Ok(_) => match read_source(p) {
                Ok(s) => out.push(s),
                Err(d) => diags.push(d),
            },
            Err(e) => diags.push(io_error(p, &e)),
        }
    }
    (out, diags)
}

/// `dir` and the manifests under it; `stack` = the directories being walked (ancestors).
fn walk(
    dir: &Path,
    meta: &std::fs::Metadata,
    stack: &mut Vec<(u64, u64)>,
    visited: &mut HashMap<(u64, u64), PathBuf>,
    files: &mut Vec<PathBuf>,
    diags: &mut Vec<Diagnostic>,
) {
    let id = (meta.dev(), meta.ino());
    if let Some(first) = visited.get(&id) {
        let name = dir.display().to_string();
        diags.push(if stack.contains(&id) {
            Diagnostic::error(
                &name,
                format!(
                    "directory loop: this is {} again (a symlink to an ancestor); not read again",
                    first.display()
                ),
            )
        } else {
            warning(
                &name,
                format!(
                    "the same directory as {} (already read); not read twice",
                    first.display()
                ),
            )
        });
        return;
    }
    visited.insert(id, dir.to_path_buf());
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) => {
            diags.push(io_error(dir, &e));
            return;
        }
    };
    let mut paths = Vec::new();
    for e in entries {
        match e {
            Ok(e) => paths.push(e.path()),
            Err(e) => diags.push(io_error(dir, &e)),
        }
    }
    paths.sort();
    stack.push(id);
    for p in paths {
        if is_hidden(&p) {
            continue;
        }
        match std::fs::metadata(&p) {
            Ok(m) if m.is_dir() => walk(&p, &m, stack, visited, files, diags),
            // Only regular files: a FIFO or a device named `*.yaml` would block or never end.
            Ok(m) if m.is_file() && is_manifest(&p) => files.push(p),
            Ok(m) if is_manifest(&p) => diags.push(warning(
                &p.display().to_string(),
                format!("not a regular file ({}); not read", file_type(&m)),
            )),
            Ok(_) => {}
            // A dangling symlink, a file removed since the listing, no permission.
            Err(e) if is_manifest(&p) || e.kind() != ErrorKind::NotFound => {
                diags.push(io_error(&p, &e))
            }
            Err(_) => {}
        }
    }
    stack.pop();
}

fn warning(file: &str, message: String) -> Diagnostic {
    let mut d = Diagnostic::error(file, message);
    d.severity = svcc_compiler::Severity::Warning;
    d
}

fn file_type(m: &std::fs::Metadata) -> &'static str {
    let t = m.file_type();
    if t.is_fifo() {
        "a FIFO"
    } else if t.is_socket() {
        "a socket"
    } else if t.is_char_device() || t.is_block_device() {
        "a device"
    } else {
        "not a file"
    }
}

fn io_error(p: &Path, e: &std::io::Error) -> Diagnostic {
    let why = match e.kind() {
        ErrorKind::NotFound => "no such file or directory (or removed while svcc read it)".into(),
        _ => e.to_string(),
    };
    Diagnostic::error(&p.display().to_string(), format!("cannot read: {why}"))
}

/// Reads one file; an error is one diagnostic naming it (for text that is not UTF-8: where).
// The error is the cold path, once per bad file: not worth a box.
#[allow(clippy::result_large_err)]
pub fn read_source(p: &Path) -> Result<Source, Diagnostic> {
    let bytes = std::fs::read(p).map_err(|e| io_error(p, &e))?;
    decode(&p.display().to_string(), bytes)
}

/// [`read_source`] for callers that only want a message.
pub fn read_file(p: &Path) -> Result<Source> {
    read_source(p).map_err(|d| anyhow!("{}", d.to_string().trim_start_matches("error: ")))
}

/// The machine's host name, as kube-proxy uses it when no override is given.
pub fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_lowercase())
        .unwrap_or_default()
}

/// Writes `text` to `path` atomically (a failed run leaves the previous file as it was).
pub fn write_atomic(path: &Path, text: &str) -> Result<()> {
    write_atomic_with(path, |w| w.write_all(text.as_bytes()))
}

/// Writes to a temporary file beside `path`, then renames it over `path`: readers see the
/// old file or the whole new one, never a part.
pub fn write_atomic_with(
    path: &Path,
    write: impl FnOnce(&mut dyn Write) -> std::io::Result<()>,
) -> Result<()> {
    let dir = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let tmp = dir.join(format!(
        ".{}.svcc-tmp",
        path.file_name().and_then(|n| n.to_str()).unwrap_or("out")
    ));
    let result = std::fs::File::create(&tmp).and_then(|f| {
        let mut w = std::io::BufWriter::new(f);
        write(&mut w)?;
        w.into_inner().map_err(|e| e.into_error())?.sync_all()
    });
    if let Err(e) = result {
        let _ = std::fs::remove_file(&tmp);
        return Err(e).with_context(|| format!("writing {}", tmp.display()));
    }
    std::fs::rename(&tmp, path)
        .with_context(|| format!("renaming {} to {}", tmp.display(), path.display()))?;
    Ok(())
}
