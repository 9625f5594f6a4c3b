//! The sysctls kube-proxy's IPVS mode sets (`proxyutil.EnsureSysctl`: written only when
//! different), per network namespace (`/proc/sys/net` is the caller's namespace's).

use std::io;

/// One sysctl to hold a value, and why.
pub struct Sysctl {
    pub path: &'static str,
    pub value: &'static str,
    /// A failure to set it stops the apply (else it is reported and skipped).
    pub required: bool,
}

/// The sysctls for IPVS mode.
///
/// - `net/ipv4/vs/conntrack=1`: IPVS connections get conntrack entries, without which the glue
///   table's masquerade and ct-state rules never see IPVS traffic (required, as in kube-proxy).
/// - `net/ipv4/vs/expire_nodest_conn=1`: a packet of a connection whose real server was
///   deleted expires the connection (the client gets a reset instead of a black hole); this is
///   what makes deleting UDP real servers at once (no graceful period) safe.
/// - `net/ipv4/vs/expire_quiescent_template=1`: persistence (ClientIP affinity) templates that
///   point at a weight-0 (terminating) real server expire, so affinity moves off it.
/// - `net/ipv4/vs/conn_reuse_mode=0` only on kernels 4.1 ≤ k < 5.9 (kube-proxy #93297: older
///   kernels delay reused ports by a second with mode 1); left alone on ≥ 5.9.
/// - `net/ipv4/ip_forward=1`: masqueraded traffic to remote endpoints is forwarded.
/// - strictARP: `conf/all/arp_ignore=1`, `arp_announce=2`: the node does not answer ARP for
///   the VIPs on svcc-ipvs0 from other interfaces (MetalLB L2 needs this).
pub fn wanted(strict_arp: bool, kernel: Option<(u32, u32)>) -> Vec<Sysctl> {
    let mut v = vec![
        Sysctl {
            path: "net/ipv4/vs/conntrack",
            value: "1",
            required: true,
        },
        Sysctl {
            path: "net/ipv4/vs/expire_nodest_conn",
            value: "1",
            required: false,
        },
        Sysctl {
            path: "net/ipv4/vs/expire_quiescent_template",
            value: "1",
            required: false,
        },
        Sysctl {
            path: "net/ipv4/ip_forward",
            value: "1",
            required: false,
        },
    ];
    if let Some(k) = kernel {
        if ((4, 1)..(5, 9)).contains(&k) {
            v.push(Sysctl {
                path: "net/ipv4/vs/conn_reuse_mode",
                value: "0",
                required: false,
            });
        }
    }
    if strict_arp {
        v.push(Sysctl {
            path: "net/ipv4/conf/all/arp_ignore",
            value: "1",
            required: false,
        });
        v.push(Sysctl {
            path: "net/ipv4/conf/all/arp_announce",
            value: "2",
            required: false,
        });
    }
    v
}

/// (major, minor) of the running kernel.
pub fn kernel_version() -> Option<(u32, u32)> {
    let s = std::fs::read_to_string("/proc/sys/kernel/osrelease").ok()?;
    parse_release(&s)
}

fn parse_release(s: &str) -> Option<(u32, u32)> {
    let mut it = s.trim().split(|c: char| !c.is_ascii_digit());
    Some((it.next()?.parse().ok()?, it.next()?.parse().ok()?))
}

/// Writes `s.value` unless it is already there. Ok(true) if it wrote.
pub fn ensure(s: &Sysctl) -> io::Result<bool> {
    let p = format!("/proc/sys/{}", s.path);
    if std::fs::read_to_string(&p)?.trim() == s.value {
        return Ok(false);
    }
    std::fs::write(&p, s.value)?;
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn conn_reuse_mode_only_on_old_kernels() {
        let has = |k| {
            wanted(false, Some(k))
                .iter()
                .any(|s| s.path.ends_with("conn_reuse_mode"))
        };
        assert!(has((5, 4)));
        assert!(!has((5, 9)));
        assert!(!has((6, 1)));
        assert!(!has((4, 0)));
        assert_eq!(parse_release("6.1.0-57-amd64\n"), Some((6, 1)));
    }

    #[test]
    fn strict_arp_adds_arp_sysctls() {
        let n = |b| {
            wanted(b, None)
                .iter()
                .filter(|s| s.path.contains("arp_"))
                .count()
        };
        assert_eq!((n(false), n(true)), (0, 2));
    }
}
