//! Network namespaces: naming, creation with `ip`, entering from a thread with `setns()`,
//! and removal on drop, on SIGINT/SIGTERM, and of leftovers of dead runs.
//!
//! Every namespace is named `svcct-<pid>-<case>-<role>`; `ip netns list` is empty after a run.

use std::io::Write;
use std::os::fd::AsRawFd;
use std::process::{Command, Stdio};

pub const PREFIX: &str = "svcct-";
const NETNS_DIR: &str = "/run/netns";

/// Runs `ip [-n NS] -batch -` with the given lines; the error names the namespace and shows
/// the lines and `ip`'s message.
pub fn ip_batch(ns: Option<&str>, lines: &[String]) -> Result<(), String> {
    if lines.is_empty() {
        return Ok(());
    }
    let mut cmd = Command::new("ip");
    if let Some(ns) = ns {
        cmd.args(["-n", ns]);
    }
    cmd.args(["-batch", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn().map_err(|e| format!("cannot run `ip`: {e}"))?;
    let text = lines.join("\n") + "\n";
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(text.as_bytes())
        .map_err(|e| format!("writing to `ip -batch`: {e}"))?;
    let out = child
        .wait_with_output()
        .map_err(|e| format!("waiting for `ip`: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "`ip{} -batch -` failed: {}\n--- batch ---\n{text}",
            ns.map(|n| format!(" -n {n}")).unwrap_or_default(),
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    Ok(())
}

/// Moves the calling thread into the named network namespace. Only call this from a thread
/// created for the purpose (sockets it creates afterwards live in that namespace).
pub fn enter(ns: &str) -> Result<(), String> {
    let path = format!("{NETNS_DIR}/{ns}");
    let f = std::fs::File::open(&path).map_err(|e| format!("{path}: {e}"))?;
    // SAFETY: plain syscall on a valid descriptor.
    let rc = unsafe { libc::setns(f.as_raw_fd(), libc::CLONE_NEWNET) };
    if rc != 0 {
        return Err(format!(
            "setns({path}): {}",
            std::io::Error::last_os_error()
        ));
    }
    Ok(())
}

/// Writes sysctls (paths relative to /proc/sys, e.g. `net/ipv4/ip_forward`), each list inside
/// its namespace, from one helper thread that enters them in turn.
pub fn sysctls_many(per_ns: &[(String, Vec<(&str, &str)>)]) -> Result<(), String> {
    std::thread::scope(|s| {
        s.spawn(|| {
            for (ns, settings) in per_ns {
                enter(ns)?;
                for (k, v) in settings {
                    let p = format!("/proc/sys/{k}");
                    std::fs::write(&p, v).map_err(|e| format!("{ns}: writing {v} to {p}: {e}"))?;
                }
            }
            Ok(())
        })
        .join()
        .unwrap_or_else(|_| Err("sysctl thread panicked".to_string()))
    })
}

/// The namespaces of one case; all of them are deleted when this is dropped.
pub struct NsSet {
    pub names: Vec<String>,
}

impl NsSet {
    /// Creates `svcct-<pid>-<tag>-<role>` for every role.
    pub fn create(tag: &str, roles: &[String]) -> Result<NsSet, String> {
        let pid = std::process::id();
        let names: Vec<String> = roles
            .iter()
            .map(|r| format!("{PREFIX}{pid}-{tag}-{r}"))
            .collect();
        // Register first, so that a half-done creation is still cleaned up.
        let set = NsSet {
            names: names.clone(),
        };
        let lines: Vec<String> = names.iter().map(|n| format!("netns add {n}")).collect();
        ip_batch(None, &lines)?;
        Ok(set)
    }
}

impl Drop for NsSet {
    fn drop(&mut self) {
        delete(&self.names);
    }
}

/// Deletes namespaces (those that exist), quietly.
pub fn delete(names: &[String]) {
    let lines: Vec<String> = names
        .iter()
        .filter(|n| std::path::Path::new(NETNS_DIR).join(n).exists())
        .map(|n| format!("netns del {n}"))
        .collect();
    if lines.is_empty() {
        return;
    }
    if let Err(e) = ip_batch(None, &lines) {
        // Fall back to one at a time so one failure does not keep the others.
        eprintln!("flow: cleanup: {e}");
        for n in names {
            let _ = Command::new("ip")
                .args(["netns", "del", n])
                .stderr(Stdio::null())
                .status();
        }
    }
}

fn ours() -> Vec<(String, Option<u32>)> {
    let Ok(rd) = std::fs::read_dir(NETNS_DIR) else {
        return Vec::new();
    };
    rd.filter_map(|e| e.ok())
        .filter_map(|e| e.file_name().into_string().ok())
        .filter(|n| n.starts_with(PREFIX))
        .map(|n| {
            let pid = n[PREFIX.len()..]
                .split('-')
                .next()
                .and_then(|p| p.parse().ok());
            (n, pid)
        })
        .collect()
}

/// Removes the namespaces left by runs whose process is gone (killed, crashed).
pub fn sweep_stale() {
    let stale: Vec<String> = ours()
        .into_iter()
        .filter(|(_, pid)| match pid {
            Some(p) => !std::path::Path::new(&format!("/proc/{p}")).exists(),
            None => false,
        })
        .map(|(n, _)| n)
        .collect();
    if !stale.is_empty() {
        eprintln!(
            "flow: removing {} namespace(s) left by earlier runs",
            stale.len()
        );
        delete(&stale);
    }
}

/// Removes every namespace of this process.
pub fn sweep_mine() {
    let me = std::process::id();
    let mine: Vec<String> = ours()
        .into_iter()
        .filter(|(_, p)| *p == Some(me))
        .map(|(n, _)| n)
        .collect();
    delete(&mine);
}

/// On SIGINT/SIGTERM/SIGHUP: remove this run's namespaces, then exit. Call before any other
/// thread is started (the signal mask is inherited).
pub fn install_signal_cleanup() {
    // SAFETY: sigset manipulation on a local, then a dedicated thread waits in sigwait.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        for s in [libc::SIGINT, libc::SIGTERM, libc::SIGHUP] {
            libc::sigaddset(&mut set, s);
        }
        libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
        let set_copy = set;
        std::thread::spawn(move || {
            let mut sig: libc::c_int = 0;
            libc::sigwait(&set_copy, &mut sig);
            eprintln!("\nflow: signal {sig}: removing this run's namespaces");
            sweep_mine();
            std::process::exit(128 + sig);
        });
    }
}
