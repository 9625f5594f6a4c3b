//! The IPVS model as reviewable, deterministic text (same model, same bytes), in three
//! sections each opened by a marker line (`# svcc:section NAME`) so a tool can split them
//! ([`section`]):
//!
//! 1. `ipvsadm`: `ipvsadm-restore` input (`-A`/`-a` lines, `--set` for the timeouts; `#`
//!    lines, which ipvsadm-restore skips, give each virtual server's provenance);
//! 2. `dummy-addresses`: one `ADDR/PREFIX` per line, the addresses for `svcc-ipvs0`;
//! 3. `nft`: the glue as an `nft -f` script replacing svcc's tables.

use std::fmt::Write;
use std::net::IpAddr;

use super::model::*;
use crate::family::L4Proto;

/// The sections of the text, in order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Section {
    Ipvsadm,
    DummyAddresses,
    Nft,
}

impl Section {
    pub const ALL: [Section; 3] = [Section::Ipvsadm, Section::DummyAddresses, Section::Nft];
    pub fn name(self) -> &'static str {
        match self {
            Section::Ipvsadm => "ipvsadm",
            Section::DummyAddresses => "dummy-addresses",
            Section::Nft => "nft",
        }
    }
    fn marker(self) -> String {
        format!("{MARKER}{}\n", self.name())
    }
}

const MARKER: &str = "# svcc:section ";

/// The whole text.
pub fn render(m: &IpvsModel) -> String {
    let mut out = String::new();
    out.push_str(
        "# svcc IPVS mode: ipvsadm-restore input, addresses of svcc-ipvs0, nftables glue\n",
    );
    out.push_str(&Section::Ipvsadm.marker());
    out.push_str(&render_ipvsadm(m));
    out.push_str(&Section::DummyAddresses.marker());
    for a in &m.dummy_addrs {
        let _ = writeln!(out, "{a}/{}", full_prefix(crate::family::Family::of(a)));
    }
    out.push_str(&Section::Nft.marker());
    out.push_str(&crate::nft::render::render_replace(&m.glue));
    out
}

/// Only the `ipvsadm-restore` input.
pub fn render_ipvsadm(m: &IpvsModel) -> String {
    let mut out = String::new();
    let t = m.timeouts;
    if !t.is_empty() {
        // ipvsadm --set: 0 keeps the current value.
        let _ = writeln!(
            out,
            "--set {} {} {}",
            t.tcp.unwrap_or(0),
            t.tcp_fin.unwrap_or(0),
            t.udp.unwrap_or(0)
        );
    }
    for vs in &m.services {
        let _ = writeln!(out, "# {} ({})", vs.comment, kind_name(vs.kind));
        let svc = service_arg(vs.protocol, vs.addr, vs.port);
        let _ = write!(out, "-A {svc} -s {}", vs.scheduler);
        let flags = sched_flag_names(vs);
        if !flags.is_empty() {
            let _ = write!(out, " -b {}", flags.join(","));
        }
        if let Some(p) = vs.persistence {
            let _ = write!(out, " -p {}", p.timeout);
            if p.netmask != full_prefix(vs.family) {
                let _ = write!(out, " -M {}", netmask_arg(vs, p.netmask));
            }
        }
        out.push('\n');
        for rs in &vs.real_servers {
            let _ = writeln!(
                out,
                "-a {svc} -r {} -m -w {}",
                sock(rs.addr, rs.port),
                rs.weight
            );
        }
    }
    out
}

/// The text of one section of [`render`]'s output (without its marker line); None if the
/// text has no such section.
pub fn section(text: &str, which: Section) -> Option<&str> {
    let marker = which.marker();
    let start = if text.starts_with(&marker) {
        marker.len()
    } else {
        text.find(&format!("\n{marker}"))? + 1 + marker.len()
    };
    let rest = &text[start..];
    let end = rest
        .find(&format!("\n{MARKER}"))
        .map_or(rest.len(), |i| i + 1);
    Some(&rest[..end])
}

/// The `ipvsadm-restore` part of [`render`]'s output.
pub fn ipvsadm_part(text: &str) -> Option<&str> {
    section(text, Section::Ipvsadm)
}

fn kind_name(k: crate::ir::FrontendKind) -> &'static str {
    use crate::ir::FrontendKind::*;
    match k {
        ClusterIp => "ClusterIP",
        ExternalIp => "external IP",
        LoadBalancer => "LoadBalancer IP",
        NodePort => "NodePort",
    }
}

fn sock(a: IpAddr, port: u16) -> String {
    match a {
        IpAddr::V4(v) => format!("{v}:{port}"),
        IpAddr::V6(v) => format!("[{v}]:{port}"),
    }
}

fn service_arg(p: L4Proto, a: IpAddr, port: u16) -> String {
    let opt = match p {
        L4Proto::Tcp => "-t",
        L4Proto::Udp => "-u",
        L4Proto::Sctp => "--sctp-service",
    };
    format!("{opt} {}", sock(a, port))
}

fn sched_flag_names(vs: &VirtualServer) -> Vec<String> {
    let s = vs.scheduler;
    if !s.has_flags() {
        return Vec::new();
    }
    let mut v = Vec::new();
    if vs.sched_flags.fallback {
        v.push(format!("{s}-fallback"));
    }
    if vs.sched_flags.port {
        v.push(format!("{s}-port"));
    }
    v
}

/// `-M`: a dotted mask for IPv4, a prefix length for IPv6 (as ipvsadm takes them).
fn netmask_arg(vs: &VirtualServer, prefix: u8) -> String {
    match vs.family {
        crate::family::Family::Ip => {
            let m = if prefix == 0 {
                0
            } else {
                u32::MAX << (32 - u32::from(prefix))
            };
            std::net::Ipv4Addr::from(m).to_string()
        }
        crate::family::Family::Ip6 => prefix.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::family::Family;
    use crate::ir::FrontendKind;

    fn model() -> IpvsModel {
        let vs = |addr: &str, proto, sched, persistence| VirtualServer {
            family: Family::of(&addr.parse().unwrap()),
            protocol: proto,
            addr: addr.parse().unwrap(),
            port: 80,
            scheduler: sched,
            sched_flags: crate::ipvs::build::sched_flags(sched),
            persistence,
            real_servers: vec![RealServer {
                addr: if addr.contains(':') {
                    "fd00::9".parse().unwrap()
                } else {
                    "10.0.0.9".parse().unwrap()
                },
                port: 8080,
                weight: 0,
            }],
            kind: FrontendKind::ClusterIp,
            comment: "ns/svc:http".into(),
        };
        IpvsModel {
            services: vec![
                vs("10.96.0.1", L4Proto::Tcp, Scheduler::Sh, None),
                vs(
                    "10.96.0.2",
                    L4Proto::Udp,
                    Scheduler::Rr,
                    Some(Persistence {
                        timeout: 10800,
                        netmask: 24,
                    }),
                ),
                vs("fd00::1", L4Proto::Sctp, Scheduler::Mh, None),
            ],
            dummy_addrs: vec!["10.96.0.1".parse().unwrap(), "fd00::1".parse().unwrap()],
            glue: Default::default(),
            timeouts: Timeouts {
                tcp: Some(900),
                tcp_fin: None,
                udp: Some(60),
            },
        }
    }

    #[test]
    fn ipvsadm_lines() {
        let t = render_ipvsadm(&model());
        assert_eq!(
            t,
            "--set 900 0 60\n\
             # ns/svc:http (ClusterIP)\n\
             -A -t 10.96.0.1:80 -s sh -b sh-fallback\n\
             -a -t 10.96.0.1:80 -r 10.0.0.9:8080 -m -w 0\n\
             # ns/svc:http (ClusterIP)\n\
             -A -u 10.96.0.2:80 -s rr -p 10800 -M 255.255.255.0\n\
             -a -u 10.96.0.2:80 -r 10.0.0.9:8080 -m -w 0\n\
             # ns/svc:http (ClusterIP)\n\
             -A --sctp-service [fd00::1]:80 -s mh -b mh-fallback,mh-port\n\
             -a --sctp-service [fd00::1]:80 -r [fd00::9]:8080 -m -w 0\n"
        );
    }

    #[test]
    fn sections_split() {
        let m = model();
        let t = render(&m);
        assert_eq!(ipvsadm_part(&t), Some(render_ipvsadm(&m).as_str()));
        assert_eq!(
            section(&t, Section::DummyAddresses),
            Some("10.96.0.1/32\nfd00::1/128\n")
        );
        let nft = section(&t, Section::Nft).unwrap();
        assert_eq!(nft, crate::nft::render::render_replace(&m.glue));
        assert_eq!(section("no markers", Section::Nft), None);
        // Deterministic: same model, same bytes.
        assert_eq!(t, render(&model()));
    }
}
