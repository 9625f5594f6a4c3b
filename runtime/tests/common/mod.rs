//! Test helpers: throwaway network namespaces, `nft` as the oracle, hand-built models.
#![allow(dead_code)]

use std::fs::File;
use std::io::Write;
use std::net::IpAddr;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};

use svcc_compiler::nft::model::*;

static COUNTER: AtomicU32 = AtomicU32::new(0);

/// A fresh network namespace `svccrt-<pid>-<n>`. `enter()` moves the calling thread into it;
/// Drop moves the thread back and deletes the namespace.
pub struct Netns {
    pub name: String,
    home: Option<File>,
}

impl Netns {
    pub fn new() -> Netns {
        let name = format!(
            "svccrt-{}-{}",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::SeqCst)
        );
        let st = Command::new("ip")
            .args(["netns", "add", &name])
            .status()
            .expect("ip netns add");
        assert!(st.success(), "ip netns add {name}");
        Netns { name, home: None }
    }

    /// setns(2) the calling thread into this namespace (sockets opened afterwards live there).
    pub fn enter(&mut self) {
        let home = File::open("/proc/thread-self/ns/net").expect("own netns");
        let ns = File::open(format!("/run/netns/{}", self.name)).expect("open netns");
        nix::sched::setns(&ns, nix::sched::CloneFlags::CLONE_NEWNET).expect("setns");
        self.home = Some(home);
    }

    /// Runs `nft ARGS` in the namespace; returns stdout, panics on failure.
    pub fn nft(&self, args: &[&str]) -> String {
        let out = Command::new("ip")
            .args(["netns", "exec", &self.name, "nft"])
            .args(args)
            .output()
            .expect("run nft");
        assert!(
            out.status.success(),
            "nft {:?}: {}",
            args,
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    }

    /// `nft -f -` with `script` on stdin.
    pub fn nft_f(&self, script: &str) -> Result<(), String> {
        let mut child = Command::new("ip")
            .args(["netns", "exec", &self.name, "nft", "-f", "-"])
            .stdin(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn nft");
        child
            .stdin
            .take()
            .unwrap()
            .write_all(script.as_bytes())
            .unwrap();
        let out = child.wait_with_output().unwrap();
        if out.status.success() {
            Ok(())
        } else {
            Err(String::from_utf8_lossy(&out.stderr).into_owned())
        }
    }

    pub fn list_table(&self, fam: &str) -> String {
        self.nft(&["list", "table", fam, "svcc"])
    }

    pub fn ruleset(&self) -> String {
        self.nft(&["list", "ruleset"])
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        if let Some(home) = self.home.take() {
            let _ = nix::sched::setns(&home, nix::sched::CloneFlags::CLONE_NEWNET);
        }
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .status();
    }
}

pub fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

pub fn net(s: &str) -> ipnet::IpNet {
    s.parse().unwrap()
}

pub fn tuple() -> Vec<DataType> {
    vec![
        DataType::Ipv4Addr,
        DataType::InetProto,
        DataType::InetService,
    ]
}

pub fn key3(addr: &str, p: L4Proto, port: u16) -> Vec<Value> {
    vec![Value::Addr(ip(addr)), Value::Proto(p), Value::Port(port)]
}

pub fn set(name: &str, key: Vec<DataType>, data: Option<SetData>) -> Set {
    Set {
        name: name.into(),
        key,
        data,
        flags: SetFlags::default(),
        timeout: None,
        size: None,
        comment: None,
        elements: vec![],
    }
}

pub fn elem(key: Vec<Value>, data: Option<ElemData>, comment: Option<&str>) -> Element {
    Element {
        key,
        data,
        comment: comment.map(Into::into),
    }
}

pub fn chain(name: &str, rules: Vec<Rule>) -> Chain {
    Chain {
        name: name.into(),
        base: None,
        comment: None,
        rules,
    }
}

pub fn base(name: &str, kind: ChainType, hook: Hook, priority: i32, rules: Vec<Rule>) -> Chain {
    Chain {
        name: name.into(),
        base: Some(BaseChain {
            kind,
            hook,
            priority,
        }),
        comment: None,
        rules,
    }
}

pub fn k3() -> Vec<Field> {
    vec![Field::Daddr, Field::L4Proto, Field::Dport]
}

pub fn k4() -> Vec<Field> {
    vec![Field::Saddr, Field::L4Proto, Field::Daddr, Field::Dport]
}

/// The name of the service chain for service `i`.
pub fn svc_chain(i: usize) -> String {
    format!("svc-{i}")
}

/// A small kube-proxy-like ruleset using every model variant, `services` services with two
/// endpoints each (at least 2 services).
pub fn kube_model(services: usize) -> Ruleset {
    Ruleset {
        tables: vec![kube_table(Family::Ip, services, true)],
    }
}

/// Both families; the ip6 table without `update @affinity` (nft 1.0.6 aborts on an ip6
/// update with concatenated data, so `nft -f` could not be the oracle).
pub fn dual_stack_model(services: usize) -> Ruleset {
    Ruleset {
        tables: vec![
            kube_table(Family::Ip, services, true),
            kube_table(Family::Ip6, services, false),
        ],
    }
}

/// Address `v4` of the test model in family `fam` (v6: fd00: + the v4 octets).
pub fn fa(fam: Family, v4: &str) -> IpAddr {
    let a: std::net::Ipv4Addr = v4.parse().unwrap();
    match fam {
        Family::Ip => IpAddr::V4(a),
        Family::Ip6 => {
            let o = a.octets();
            IpAddr::V6(std::net::Ipv6Addr::new(
                0xfd00,
                0,
                0,
                0,
                0,
                0,
                u16::from_be_bytes([o[0], o[1]]),
                u16::from_be_bytes([o[2], o[3]]),
            ))
        }
    }
}

/// Prefix `v4/len` in family `fam` (v6: length + 96).
pub fn fnet(fam: Family, v4: &str, len: u8) -> ipnet::IpNet {
    let l = if fam == Family::Ip { len } else { len + 96 };
    ipnet::IpNet::new(fa(fam, v4), l).unwrap().trunc()
}

pub fn kube_table(fam: Family, services: usize, with_update: bool) -> Table {
    let tuple = || vec![fam.addr_type(), DataType::InetProto, DataType::InetService];
    let key3 = |a: &str, p: L4Proto, port: u16| {
        vec![Value::Addr(fa(fam, a)), Value::Proto(p), Value::Port(port)]
    };
    let ip = |a: &str| fa(fam, a);
    let net = |a: &str| {
        let (a, l) = a.split_once('/').unwrap();
        fnet(fam, a, l.parse().unwrap())
    };
    let mut t = Table {
        family: fam,
        name: "svcc".into(),
        comment: Some("svcc test ruleset".into()),
        sets: vec![],
        chains: vec![],
    };
    let mut svc_ips = set("service-ips", tuple(), Some(SetData::Verdict));
    svc_ips.comment = Some("ClusterIP, NodePort and LoadBalancer dispatch".into());
    let mut no_ep = set("no-endpoints", tuple(), Some(SetData::Verdict));
    let mut cluster = set("cluster-ips", vec![fam.addr_type()], None);
    let mut lb_src = set("lb-source-ranges", vec![fam.addr_type()], None);
    lb_src.flags.interval = true;
    lb_src.elements = vec![
        elem(
            vec![Value::Prefix(net("10.0.0.0/8"))],
            None,
            Some("default/web"),
        ),
        elem(vec![Value::Prefix(net("192.168.0.0/16"))], None, None),
        elem(vec![Value::Addr(ip("172.16.0.1"))], None, None),
        elem(vec![Value::Prefix(net("11.0.0.0/8"))], None, None),
    ];
    let mut ports = set("node-ports", vec![DataType::InetService], None);
    ports.elements = vec![elem(vec![Value::Port(30080)], None, None)];
    let mut aff = set(
        "affinity",
        vec![
            fam.addr_type(),
            DataType::InetProto,
            fam.addr_type(),
            DataType::InetService,
        ],
        Some(SetData::Values(vec![
            fam.addr_type(),
            DataType::InetService,
        ])),
    );
    aff.flags = SetFlags {
        interval: false,
        timeout: true,
        dynamic: true,
    };
    aff.timeout = Some(10800);
    aff.size = Some(65535);
    let mut chains = vec![
        base(
            "nat-prerouting",
            ChainType::Nat,
            Hook::Prerouting,
            -100,
            vec![Rule::new()
                .s(Stmt::Vmap {
                    key: k3(),
                    map: "service-ips".into(),
                })
                .comment("dispatch")],
        ),
        base(
            "nat-output",
            ChainType::Nat,
            Hook::Output,
            -100,
            vec![Rule::new().m(Match::FibDaddrLocal).s(Stmt::Vmap {
                key: k3(),
                map: "service-ips".into(),
            })],
        ),
        base(
            "filter-input",
            ChainType::Filter,
            Hook::Input,
            0,
            vec![
                Rule::new().m(Match::CtStateNew).s(Stmt::Vmap {
                    key: k3(),
                    map: "no-endpoints".into(),
                }),
                Rule::new()
                    .m(Match::CtStateNew)
                    .m(Match::L4Proto(L4Proto::Tcp))
                    .m(Match::Lookup {
                        key: k3(),
                        set: "no-endpoints".into(),
                        negate: false,
                    })
                    .s(Stmt::Reject),
                Rule::new()
                    .m(Match::Lookup {
                        key: k3(),
                        set: "no-endpoints".into(),
                        negate: true,
                    })
                    .v(Verdict::Accept),
                Rule::new()
                    .m(Match::FibSaddrLocal)
                    .m(Match::Saddr {
                        negate: true,
                        addr: AddrMatch::Net(net("10.0.0.0/8")),
                    })
                    .v(Verdict::Drop),
                Rule::new()
                    .m(Match::Saddr {
                        negate: false,
                        addr: AddrMatch::Set("lb-source-ranges".into()),
                    })
                    .m(Match::Daddr {
                        negate: true,
                        addr: AddrMatch::Set("cluster-ips".into()),
                    })
                    .v(Verdict::Accept),
                Rule::new()
                    .m(Match::Daddr {
                        negate: false,
                        addr: AddrMatch::Net(net("127.0.0.0/8")),
                    })
                    .v(Verdict::Drop),
                Rule::new()
                    .m(Match::Daddr {
                        negate: false,
                        addr: AddrMatch::Net(net("10.96.0.0/12")),
                    })
                    .v(Verdict::Return),
                Rule::new()
                    .m(Match::Saddr {
                        negate: false,
                        addr: AddrMatch::Net(net("10.1.2.3/32")),
                    })
                    .v(Verdict::Accept),
                Rule::new()
                    .m(Match::Lookup {
                        key: vec![Field::Dport],
                        set: "node-ports".into(),
                        negate: false,
                    })
                    .v(Verdict::Accept),
            ],
        ),
        base(
            "nat-postrouting",
            ChainType::Nat,
            Hook::Postrouting,
            100,
            vec![
                Rule::new().m(Match::MarkClear(0x4000)).v(Verdict::Return),
                Rule::new().s(Stmt::MarkXor(0x4000)),
                Rule::new()
                    .m(Match::CtStatusDnat)
                    .s(Stmt::Masquerade { fully_random: true }),
                Rule::new().s(Stmt::Masquerade {
                    fully_random: false,
                }),
            ],
        ),
    ];
    for i in 0..services {
        let vip = format!("10.96.{}.{}", i / 250, i % 250 + 1);
        let name = svc_chain(i);
        let ep = |j: usize| format!("{name}-ep{j}");
        let epaddr = |j: usize| fa(fam, &format!("10.{}.{}.{}", 64 + j, i / 250, i % 250 + 1));
        let proto = if i % 3 == 2 {
            L4Proto::Udp
        } else {
            L4Proto::Tcp
        };
        svc_ips.elements.push(elem(
            key3(&vip, proto, 80),
            Some(ElemData::Verdict(Verdict::Goto(name.clone()))),
            Some(&format!("ns/svc-{i}:http")),
        ));
        cluster
            .elements
            .push(elem(vec![Value::Addr(ip(&vip))], None, None));
        let mut svc = chain(
            &name,
            vec![
                Rule::new()
                    .m(Match::Saddr {
                        negate: true,
                        addr: AddrMatch::Net(net("10.64.0.0/10")),
                    })
                    .s(Stmt::MarkOr(0x4000)),
                Rule::new().s(Stmt::DnatMap {
                    key: k4(),
                    map: "affinity".into(),
                }),
                Rule::new()
                    .m(Match::NumgenRandomZero { modulus: 2 })
                    .v(Verdict::Goto(ep(0))),
                Rule::new().v(Verdict::Goto(ep(1))),
            ],
        );
        svc.comment = Some(format!("ns/svc-{i}:http"));
        chains.push(svc);
        for j in 0..2 {
            let mut rules = vec![Rule::new().m(Match::L4Proto(proto)).s(Stmt::Dnat {
                addr: epaddr(j),
                port: 8080,
            })];
            if with_update {
                rules.insert(
                    0,
                    Rule::new()
                        .m(Match::L4Proto(proto))
                        .s(Stmt::Update {
                            set: "affinity".into(),
                            key: k4(),
                            timeout: 10800,
                            data: vec![Value::Addr(epaddr(j)), Value::Port(8080)],
                        })
                        .comment("affinity"),
                );
            }
            chains.push(chain(&ep(j), rules));
        }
    }
    no_ep.elements.push(elem(
        key3("10.96.250.250", L4Proto::Tcp, 80),
        Some(ElemData::Verdict(Verdict::Drop)),
        None,
    ));
    no_ep.elements.push(elem(
        key3("10.96.250.251", L4Proto::Sctp, 80),
        Some(ElemData::Verdict(Verdict::Jump("reject-new".into()))),
        None,
    ));
    no_ep.elements.push(elem(
        key3("10.96.250.252", L4Proto::Udp, 53),
        Some(ElemData::Verdict(Verdict::Accept)),
        None,
    ));
    no_ep.elements.push(elem(
        key3("10.96.250.253", L4Proto::Udp, 54),
        Some(ElemData::Verdict(Verdict::Return)),
        None,
    ));
    let mut rj = chain(
        "reject-new",
        vec![Rule::new().m(Match::CtStateNew).s(Stmt::Reject)],
    );
    rj.comment = Some("no endpoints".into());
    chains.push(rj);
    // The compiler's endpoint map (`id . slot -> address . port`, declared with typeof) and
    // the rules that pick from it.
    let mut eps = set(
        "endpoints",
        vec![DataType::Integer, DataType::Integer],
        Some(SetData::Values(vec![
            fam.addr_type(),
            DataType::InetService,
        ])),
    );
    eps.comment = Some("endpoints of each service port: id . slot -> address . port".into());
    let mut pick = Vec::new();
    for (k, (id, n, proto)) in [
        (305_419_896u32, 3u32, L4Proto::Tcp),
        (0, 1, L4Proto::Udp),
        (u32::MAX, 2, L4Proto::Sctp),
    ]
    .into_iter()
    .enumerate()
    {
        for slot in 0..n {
            eps.elements.push(elem(
                vec![Value::Num(id), Value::Num(slot)],
                Some(ElemData::Values(vec![
                    Value::Addr(fa(fam, &format!("10.80.{k}.{slot}"))),
                    Value::Port(8080 + slot as u16),
                ])),
                (slot == 0).then_some("ns/picked:http"),
            ));
        }
        pick.push(Rule::new().m(Match::L4Proto(proto)).s(Stmt::DnatMap {
            key: vec![
                Field::Numgen {
                    modulus: 1,
                    offset: id,
                },
                Field::Numgen {
                    modulus: n,
                    offset: 0,
                },
            ],
            map: "endpoints".into(),
        }));
    }
    chains.push(chain("pick", pick));
    t.sets = vec![svc_ips, no_ep, cluster, lb_src, ports, aff, eps];
    t.chains = chains;
    t
}

/// A listing made comparable regardless of kernel order: element lists sorted, blocks
/// (sets, chains) sorted. Used after incremental applies, where new chains come last in the
/// kernel and hash-set elements may list in another order than after a fresh load.
pub fn normalize(listing: &str) -> String {
    let mut header = Vec::new();
    let mut blocks: Vec<String> = Vec::new();
    let mut cur: Option<String> = None;
    for line in listing.lines() {
        let top = line.starts_with('\t') && !line.starts_with("\t\t");
        if let Some(b) = cur.as_mut() {
            b.push_str(line);
            b.push('\n');
            if top && line.trim() == "}" {
                blocks.push(sort_one(&cur.take().unwrap()));
            }
        } else if top && (line.contains("chain ") || line.contains("set ") || line.contains("map "))
        {
            cur = Some(format!("{line}\n"));
        } else if !line.trim().is_empty() {
            header.push(line.to_string());
        }
    }
    blocks.sort();
    format!("{}\n{}", header.join("\n"), blocks.join("\n"))
}

/// A listing with each element list sorted (the kernel lists hash sets in hash order, which
/// differs between two loads of the same ruleset); everything else stays in place.
pub fn sort_elements(listing: &str) -> String {
    let mut out = String::new();
    let mut rest = listing;
    while let Some(i) = rest.find("elements = {") {
        let j = i + rest[i..].find('}').expect("closing brace");
        out.push_str(&sort_one(&rest[..=j]));
        rest = &rest[j + 1..];
    }
    out.push_str(rest);
    out
}

/// The netlink-level listing (`nft --debug=netlink list`) with each run of element lines sorted.
pub fn sort_element_lines(listing: &str) -> String {
    let mut out: Vec<String> = Vec::new();
    let mut run: Vec<&str> = Vec::new();
    for line in listing.lines() {
        if line.starts_with("\telement ") {
            run.push(line);
            continue;
        }
        run.sort();
        out.extend(run.drain(..).map(String::from));
        out.push(line.to_string());
    }
    run.sort();
    out.extend(run.drain(..).map(String::from));
    out.join("\n")
}

fn sort_one(block: &str) -> String {
    let Some(i) = block.find("elements = {") else {
        return block.to_string();
    };
    let j = i + block[i..].find('}').expect("closing brace");
    let mut els: Vec<String> = block[i + 12..j]
        .split(',')
        .map(|e| e.split_whitespace().collect::<Vec<_>>().join(" "))
        .collect();
    els.sort();
    format!(
        "{}elements = {{ {} }}{}",
        &block[..i],
        els.join(", "),
        &block[j + 1..]
    )
}

/// Loads `model` with `nft -f` (its rendered text) into a fresh namespace and returns the
/// listing of `fam svcc` there.
pub fn oracle_listing(model: &Ruleset, fam: &str) -> String {
    let ns = Netns::new();
    ns.nft_f(&svcc_compiler::nft::render::render_replace(model))
        .expect("nft -f of the rendered model");
    ns.list_table(fam)
}

/// Points service `i`'s endpoint `j` at a new address (the chain's rules change).
pub fn move_endpoint(model: &mut Ruleset, i: usize, j: usize, addr: &str) {
    let name = format!("{}-ep{j}", svc_chain(i));
    for t in &mut model.tables {
        let a = fa(t.family, addr);
        let c = t
            .chains
            .iter_mut()
            .find(|c| c.name == name)
            .expect("endpoint chain");
        for r in &mut c.rules {
            for s in &mut r.stmts {
                match s {
                    Stmt::Dnat { addr: x, .. } => *x = a,
                    Stmt::Update { data, .. } => data[0] = Value::Addr(a),
                    _ => {}
                }
            }
        }
    }
}
