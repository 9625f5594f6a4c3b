//! Applier vs `nft -f` on the same model, each in a fresh network namespace.
//!
//! `cargo run --release -p svcc-runtime --example bench -- [ELEMENTS] [SERVICES]`
//! (defaults 100000 and 1000; needs root). Prints, for each case: the applier's time (encode +
//! kernel), `nft -f` of the rendered text, and an incremental one-element change.

use std::io::Write;
use std::net::{IpAddr, Ipv4Addr};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use svcc_compiler::nft::model::*;
use svcc_compiler::nft::render::render_replace;
use svcc_runtime::{Applier, ApplyOptions};

struct Netns(String);

impl Netns {
    fn new(tag: &str) -> Netns {
        let n = format!("svccbench-{}-{tag}", std::process::id());
        assert!(Command::new("ip")
            .args(["netns", "add", &n])
            .status()
            .unwrap()
            .success());
        Netns(n)
    }
    fn enter(&self) {
        let f = std::fs::File::open(format!("/run/netns/{}", self.0)).unwrap();
        nix::sched::setns(&f, nix::sched::CloneFlags::CLONE_NEWNET).unwrap();
    }
    fn nft_f(&self, text: &str) -> Duration {
        let path = format!("/tmp/{}.nft", self.0);
        std::fs::write(&path, text).unwrap();
        let t = Instant::now();
        let out = Command::new("ip")
            .args(["netns", "exec", &self.0, "nft", "-f", &path])
            .output()
            .unwrap();
        let d = t.elapsed();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let _ = std::fs::remove_file(path);
        d
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.0])
            .stdin(Stdio::null())
            .status();
    }
}

fn v4(n: u32) -> IpAddr {
    IpAddr::V4(Ipv4Addr::from(n))
}

fn tuple() -> Vec<DataType> {
    vec![
        DataType::Ipv4Addr,
        DataType::InetProto,
        DataType::InetService,
    ]
}

/// One dispatch verdict map with `elements` entries over `services` service chains, each
/// picking one of 3 endpoint chains with numgen probability rules (the near-linear layout of
/// the facts file).
fn model(elements: u32, services: u32) -> Ruleset {
    let mut chains = vec![Chain {
        name: "prerouting".into(),
        base: Some(BaseChain {
            kind: ChainType::Nat,
            hook: Hook::Prerouting,
            priority: -100,
        }),
        comment: None,
        rules: vec![Rule::new().s(Stmt::Vmap {
            key: vec![Field::Daddr, Field::L4Proto, Field::Dport],
            map: "service-ips".into(),
        })],
    }];
    for s in 0..services {
        let svc = format!("svc-{s}");
        let eps = 3;
        let mut rules = Vec::new();
        for k in 0..eps {
            let ep = format!("{svc}-ep{k}");
            let r = if k + 1 < eps {
                Rule::new()
                    .m(Match::NumgenRandomZero { modulus: eps - k })
                    .v(Verdict::Goto(ep.clone()))
            } else {
                Rule::new().v(Verdict::Goto(ep.clone()))
            };
            rules.push(r);
            chains.push(Chain {
                name: ep,
                base: None,
                comment: None,
                rules: vec![Rule::new().m(Match::L4Proto(L4Proto::Tcp)).s(Stmt::Dnat {
                    addr: v4(0x0a40_0000 + s * 4 + k),
                    port: 8080,
                })],
            });
        }
        chains.push(Chain {
            name: svc,
            base: None,
            comment: Some(format!("ns/svc-{s}:http")),
            rules,
        });
    }
    let elems = (0..elements)
        .map(|i| Element {
            key: vec![
                Value::Addr(v4(0x0a60_0000 + i)),
                Value::Proto(L4Proto::Tcp),
                Value::Port(80),
            ],
            data: Some(ElemData::Verdict(Verdict::Goto(format!(
                "svc-{}",
                i % services
            )))),
            comment: Some(format!("ns/svc-{i}:http").into()),
        })
        .collect();
    let map = Set {
        name: "service-ips".into(),
        key: tuple(),
        data: Some(SetData::Verdict),
        flags: SetFlags::default(),
        timeout: None,
        size: None,
        comment: None,
        elements: elems,
    };
    Ruleset {
        tables: vec![Table {
            family: Family::Ip,
            name: "svcc".into(),
            comment: None,
            sets: vec![map],
            chains,
        }],
    }
}

fn main() {
    let args: Vec<u32> = std::env::args()
        .skip(1)
        .filter_map(|a| a.parse().ok())
        .collect();
    let elements = args.first().copied().unwrap_or(100_000);
    let services = args.get(1).copied().unwrap_or(1000);
    let m = model(elements, services);
    let s = m.stats();
    println!(
        "model: {} elements, {} chains, {} rules",
        s.elements, s.chains, s.rules
    );

    let t = Instant::now();
    let text = render_replace(&m);
    let render = t.elapsed();
    let mut d_nft = Duration::from_secs(1);
    if std::env::var_os("BENCH_NO_NFT").is_none() {
        let ns_nft = Netns::new("nft");
        d_nft = ns_nft.nft_f(&text);
        println!(
            "nft -f (rendered text, {} bytes): {:.3} s (render {:.3} s)",
            text.len(),
            d_nft.as_secs_f64(),
            render.as_secs_f64()
        );
    }

    let ns = Netns::new("svcc");
    ns.enter();
    let mut ap = Applier::new().unwrap();
    let owned = m.clone();
    let t = Instant::now();
    let rep = ap.apply_owned(owned, &ApplyOptions::default()).unwrap();
    let d = t.elapsed();
    println!(
        "applier full: {:.3} s ({} messages, {} bytes in one sendmsg; encode {:.3} s, kernel {:.3} s)",
        d.as_secs_f64(),
        rep.messages,
        rep.bytes,
        rep.encode_time.as_secs_f64(),
        rep.kernel_time.as_secs_f64()
    );
    println!(
        "ratio applier / nft -f: {:.2}",
        d.as_secs_f64() / d_nft.as_secs_f64()
    );

    // One endpoint changes (one element's verdict), as `svcc run` would apply it.
    let mut m2 = m.clone();
    m2.tables[0].sets[0].elements[7].data = Some(ElemData::Verdict(Verdict::Goto("svc-0".into())));
    let m3 = m2.clone();
    let t = Instant::now();
    let rep = ap.apply_owned(m2, &ApplyOptions::default()).unwrap();
    let d = t.elapsed();
    println!(
        "applier incremental (1 element, apply_owned): {:.1} ms, {} messages, {} bytes (plan+encode {:.1} ms, kernel {:.1} ms)",
        d.as_secs_f64() * 1e3,
        rep.messages,
        rep.bytes,
        rep.encode_time.as_secs_f64() * 1e3,
        rep.kernel_time.as_secs_f64() * 1e3
    );
    let t = Instant::now();
    let rep = ap.apply(&m3, &ApplyOptions::default()).unwrap();
    println!(
        "applier re-apply (no change): {:.1} ms, {} messages",
        t.elapsed().as_secs_f64() * 1e3,
        rep.messages
    );
    let mut out = std::io::stdout();
    let _ = out.flush();
}
