//! One bad input never blocks the rest.
//!
//! - Every file of `fixtures/bad/` (whatever is added there: the test goes by the directory
//!   listing) is compiled together with a valid companion (`fixtures/bad-companion/valid.yaml`)
//!   with `--keep-going`: the companion's Service is compiled, the bad file is reported (an
//!   error naming it; a warning for the few files that alone only warn, exit 0: a slice
//!   without its Service, an empty file), and the exit status is `--keep-going`'s: 0.
//!   Exception: bad node settings (a KubeProxyConfiguration, see `is_node_settings`).
//! - Files that cannot be read at all (permission denied, not UTF-8, a dangling symlink — a file
//!   gone between the listing and the read —, a directory loop, a FIFO) are each one diagnostic
//!   naming them; with `--keep-going` the rest is compiled, without it the exit status is 2 and
//!   nothing is written.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

const COMPANION: &str = "fixtures/bad-companion/valid.yaml";
/// What the companion's Service compiles to (the element comment of its ClusterIP).
const SURVIVOR: &str = "companion/survivor:https";

/// Node settings (a KubeProxyConfiguration, by name or content), not manifests:
/// tests/snapshots.rs passes these as `--config` (same rule). A bad config is a problem of the
/// node, not of one object: `--keep-going` does not apply (exit 2, nothing compiled), so for
/// them the companion must NOT be compiled.
fn is_node_settings(f: &Path) -> bool {
    let name = f.file_name().unwrap().to_string_lossy();
    name.contains("kube-proxy-config")
        || std::fs::read(f)
            .is_ok_and(|b| b.windows(28).any(|w| w == b"kind: KubeProxyConfiguration"))
}

fn svcc(args: &[&str], keep_caps: bool) -> Output {
    let mut c = Command::new(env!("CARGO_BIN_EXE_svcc"));
    c.current_dir(root()).args(args);
    if !keep_caps && is_root() {
        use std::os::unix::process::CommandExt;
        // SAFETY: only async-signal-safe calls (prctl) between fork and exec.
        unsafe {
            c.pre_exec(|| {
                // Root reads any file whatever its mode: without these two capabilities in the
                // bounding set, the exec'd svcc (uid 0) gets neither, and file modes apply.
                // linux/capability.h: CAP_DAC_OVERRIDE = 1, CAP_DAC_READ_SEARCH = 2.
                for cap in [1, 2] {
                    if libc::prctl(libc::PR_CAPBSET_DROP, cap as libc::c_ulong, 0, 0, 0) != 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                }
                Ok(())
            });
        }
    }
    c.output().expect("running svcc")
}

fn text(o: &Output) -> (String, String) {
    (
        String::from_utf8_lossy(&o.stdout).into_owned(),
        String::from_utf8_lossy(&o.stderr).into_owned(),
    )
}

/// Diagnostic lines (`error: FILE…` / `warning: FILE…`) that name `file`.
fn naming<'a>(stderr: &'a str, file: &str) -> Vec<&'a str> {
    stderr
        .lines()
        .filter(|l| {
            ["error: ", "warning: "].iter().any(|p| {
                l.strip_prefix(p)
                    .is_some_and(|r| r.starts_with(&format!("{file}:")))
            })
        })
        .collect()
}

/// Whether the file alone, without `--keep-going`, fails (exit 2). Some files of the corpus
/// are only worth a warning (a slice without its Service, an empty file): for those a warning
/// naming the file is the report expected; for the others, an error.
fn alone_fails(rel: &str) -> bool {
    let out = svcc(&["compile", "--node-ip", "192.168.0.2", rel], true);
    match out.status.code() {
        Some(2) => true,
        Some(0) => false,
        c => panic!("{rel} alone: exit status {c:?}: {}", text(&out).1),
    }
}

#[test]
fn every_bad_file_leaves_the_rest_compiled() {
    let mut files: Vec<PathBuf> = std::fs::read_dir(root().join("fixtures/bad"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.is_file())
        .collect();
    files.sort();
    assert!(files.len() >= 16, "fixtures/bad/ has the corpus");
    let mut failures = Vec::new();
    for f in &files {
        let name = f.file_name().unwrap().to_str().unwrap().to_string();
        let rel = format!("fixtures/bad/{name}");
        let mut args = vec!["compile", "--keep-going", "--hostname-override", "node-a"];
        if is_node_settings(f) {
            args.extend(["--config", &rel, COMPANION]);
        } else {
            args.extend(["--node-ip", "192.168.0.2", &rel, COMPANION]);
        }
        let out = svcc(&args, true);
        let (stdout, stderr) = text(&out);
        let named = naming(&stderr, &rel);
        let problem = if is_node_settings(f) {
            // Exception: node settings are not objects (see is_node_settings).
            if out.status.code() != Some(2) {
                Some(format!("exit status {:?}, expected 2", out.status.code()))
            } else if !stdout.is_empty() {
                Some("something was written".into())
            } else if !named.iter().any(|l| l.starts_with("error: ")) {
                Some("no error names the file".into())
            } else {
                None
            }
        } else if out.status.code() != Some(0) {
            Some(format!(
                "exit status {:?}, expected 0 (--keep-going)",
                out.status.code()
            ))
        } else if !stdout.contains(SURVIVOR) {
            Some("the companion's Service is not in the output".into())
        } else if named.is_empty() {
            Some("no diagnostic names the file".into())
        } else if !named.iter().any(|l| l.starts_with("error: ")) && alone_fails(&rel) {
            Some("only warnings name the file, yet alone it fails".into())
        } else {
            None
        };
        if let Some(p) = problem {
            failures.push(format!("{rel}: {p}\n$ svcc {}\n{stderr}", args.join(" ")));
        }
        // Every diagnostic has the documented shape: `error: FILE[:LINE[:COL]]: message`.
        for l in named {
            assert!(l.contains(": "), "{l}");
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// A scratch directory removed on drop.
struct Scratch(PathBuf);

impl Scratch {
    fn new(tag: &str) -> Scratch {
        let d = std::env::temp_dir().join(format!("svcc-bad-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        Scratch(d)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() == 0 }
}

fn mkfifo(p: &Path) {
    let c = std::ffi::CString::new(p.as_os_str().as_encoded_bytes()).unwrap();
    // SAFETY: a valid NUL-terminated path.
    assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o644) }, 0);
}

#[test]
fn unreadable_files_do_not_stop_the_rest() {
    use std::os::unix::fs::{symlink, PermissionsExt};
    let s = Scratch::new("unreadable");
    let d = s.0.join("manifests");
    std::fs::create_dir_all(d.join("sub")).unwrap();
    std::fs::copy(root().join(COMPANION), d.join("sub/valid.yaml")).unwrap();
    // Not UTF-8.
    std::fs::write(
        d.join("latin1.yaml"),
        b"apiVersion: v1\nkind: Service # caf\xe9\n",
    )
    .unwrap();
    // Permission denied: mode 000. Root ignores modes, so svcc runs without
    // CAP_DAC_OVERRIDE / CAP_DAC_READ_SEARCH (see `svcc`); as another user the mode suffices.
    let locked = d.join("locked.yaml");
    std::fs::copy(root().join("fixtures/bad/invalid-ip.yaml"), &locked).unwrap();
    std::fs::set_permissions(&locked, std::fs::Permissions::from_mode(0o000)).unwrap();
    // Listed but gone when read: a dangling symlink behaves exactly like a file removed
    // between the listing and the read (the read fails with ENOENT).
    symlink(d.join("removed.yaml"), d.join("gone.yaml")).unwrap();
    // A directory loop: sub/up -> .. (walked forever before).
    symlink("..", d.join("sub/up")).unwrap();
    // A FIFO with a manifest's name: reading it would block for ever.
    mkfifo(&d.join("pipe.yaml"));
    let dir = d.display().to_string();

    let args = [
        "compile",
        "--keep-going",
        "--hostname-override",
        "node-a",
        "--node-ip",
        "192.168.0.2",
        &dir,
    ];
    let out = svcc(&args, false);
    let (stdout, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    assert!(stdout.contains(SURVIVOR), "the rest is compiled: {stderr}");
    let one = |file: &str, what: &str| {
        let n = naming(&stderr, &format!("{dir}/{file}"));
        assert_eq!(n.len(), 1, "one diagnostic for {file}: {stderr}");
        assert!(n[0].contains(what), "{file}: {what}: {stderr}");
    };
    one(
        "latin1.yaml",
        "2:20: not UTF-8 text: invalid byte 0xe9 at byte offset 34",
    );
    if is_root() {
        one("locked.yaml", "cannot read: Permission denied");
    }
    one("gone.yaml", "cannot read: no such file or directory");
    one("sub/up", "directory loop");
    one("pipe.yaml", "not a regular file (a FIFO)");
    assert!(
        !stderr.contains("10.96.0.300") && !stdout.contains("default/web"),
        "the unreadable file's objects are left out: {stderr}"
    );

    // Without --keep-going: exit 2, nothing written, every problem still reported.
    let out_file = s.0.join("out.nft");
    std::fs::write(&out_file, "previous\n").unwrap();
    let of = out_file.display().to_string();
    let out = svcc(
        &[
            "compile",
            "--hostname-override",
            "node-a",
            "--node-ip",
            "192.168.0.2",
            "-o",
            &of,
            &dir,
        ],
        false,
    );
    let (_, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert_eq!(std::fs::read_to_string(&out_file).unwrap(), "previous\n");
    let errors = if is_root() { 4 } else { 3 };
    assert!(
        stderr.contains(&format!(
            "svcc: {errors} error(s) in the input; nothing written"
        )),
        "{stderr}"
    );

    // A missing path on the command line is one error too; the other inputs are compiled.
    let out = svcc(
        &[
            "compile",
            "--keep-going",
            "--node-ip",
            "192.168.0.2",
            "fixtures/bad/no-such-file.yaml",
            COMPANION,
        ],
        true,
    );
    let (stdout, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    assert!(stdout.contains(SURVIVOR));
    assert_eq!(
        naming(&stderr, "fixtures/bad/no-such-file.yaml").len(),
        1,
        "{stderr}"
    );
}
