//! Models for the grammar tests: a hand-built one per family that uses every construct, a
//! generator of arbitrary (syntax-only) models for round trips, and a generator of models the
//! kernel accepts, for the `nft list` tests.

#![allow(dead_code)]

use std::collections::BTreeSet;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use ipnet::IpNet;
use svcc_compiler::nft::model::*;

// ---------------------------------------------------------------------------------------------
// A small deterministic PRNG (xorshift64*), so failures are reproducible from the seed.
// ---------------------------------------------------------------------------------------------

pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }
    pub fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    /// Uniform in `0..n` (n > 0).
    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
    pub fn range(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.below(hi - lo + 1)
    }
    /// True with probability `num/den`.
    pub fn chance(&mut self, num: u64, den: u64) -> bool {
        self.below(den) < num
    }
    pub fn pick<'a, T>(&mut self, xs: &'a [T]) -> &'a T {
        &xs[self.below(xs.len() as u64) as usize]
    }
    pub fn u32(&mut self) -> u32 {
        self.next() as u32
    }
}

// ---------------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------------

pub fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}
pub fn net(s: &str) -> IpNet {
    s.parse().unwrap()
}
pub fn host(s: &str) -> IpNet {
    IpNet::from(ip(s))
}

fn set(name: &str, key: Vec<DataType>, data: Option<SetData>) -> Set {
    Set {
        name: name.into(),
        key,
        data,
        flags: SetFlags::default(),
        timeout: None,
        size: None,
        comment: None,
        elements: Vec::new(),
    }
}

fn el(key: Vec<Value>, data: Option<ElemData>, comment: Option<&str>) -> Element {
    Element {
        key,
        data,
        comment: comment.map(Into::into),
    }
}

fn chain(name: &str, base: Option<(ChainType, Hook, i32)>, rules: Vec<Rule>) -> Chain {
    Chain {
        name: name.into(),
        base: base.map(|(kind, hook, priority)| BaseChain {
            kind,
            hook,
            priority,
        }),
        comment: None,
        rules,
    }
}

const SVC_CHAIN: &str = "service-ULMVA6XW-ns1/svc1/tcp/p80";

/// Every construct of the model, in a ruleset the kernel accepts (nft 1.0.6): the addresses
/// come from the family. Regular chains with hook-specific statements (dnat, masquerade,
/// reject) are reachable only from hooks that allow them.
pub fn sample(fam: Family) -> Ruleset {
    let v6 = fam == Family::Ip6;
    // Addresses: 10.x / fd00:x:: … .
    let a = |v4: &str, v6s: &str| if v6 { ip(v6s) } else { ip(v4) };
    let n = |v4: &str, v6s: &str| if v6 { net(v6s) } else { net(v4) };
    let addr_t = fam.addr_type();
    let (tcp, udp, sctp) = (L4Proto::Tcp, L4Proto::Udp, L4Proto::Sctp);
    use DataType::{InetProto as P, InetService as S};
    use Value::{Addr, Port, Prefix, Proto};

    let mut cluster_ips = set("cluster-ips", vec![addr_t], None);
    cluster_ips.comment = Some("cluster IPs of all services".into());
    cluster_ips.elements = vec![
        el(vec![Addr(a("10.96.0.1", "fd00:96::1"))], None, None),
        el(
            vec![Addr(a("10.96.0.10", "fd00:96::a"))],
            None,
            Some("kube-system/kube-dns"),
        ),
        el(vec![Addr(a("10.96.3.3", "::ffff:10.96.3.3"))], None, None),
    ];

    let mut cidrs = set("cluster-cidrs", vec![addr_t], None);
    cidrs.flags.interval = true;
    cidrs.elements = vec![
        el(
            vec![Prefix(n("10.0.0.0/8", "fd01::/48"))],
            None,
            Some("pod / cidr: 10.0.0.0/8"),
        ),
        el(vec![Prefix(n("192.168.1.1/32", "fd02::1/128"))], None, None),
        // host bits set: the kernel keeps the network
        el(
            vec![Prefix(n("172.16.5.7/12", "fe80::1:2:3:4/64"))],
            None,
            None,
        ),
        el(vec![Addr(a("192.168.7.7", "fd03::7"))], None, None),
        el(
            vec![Prefix(n("100.64.0.0/10", "2001:db8::/32"))],
            None,
            Some("ünïcode ✓"),
        ),
    ];

    let vkey = vec![addr_t, P, S];
    let mut service_ips = set("service-ips", vkey.clone(), Some(SetData::Verdict));
    service_ips.comment = Some("ClusterIP, ExternalIP and LoadBalancer IP traffic".into());
    service_ips.elements = vec![
        el(
            vec![Addr(a("10.96.0.1", "fd00:96::1")), Proto(tcp), Port(443)],
            Some(ElemData::Verdict(Verdict::Goto(SVC_CHAIN.into()))),
            Some("ns1/svc1:p80 cluster IP"),
        ),
        el(
            vec![Addr(a("10.96.0.10", "fd00:96::a")), Proto(udp), Port(53)],
            Some(ElemData::Verdict(Verdict::Jump(
                "endpoints-affinity".into(),
            ))),
            None,
        ),
        el(
            vec![Addr(a("10.96.0.11", "fd00:96::b")), Proto(sctp), Port(9)],
            Some(ElemData::Verdict(Verdict::Drop)),
            None,
        ),
        el(
            vec![Addr(a("10.96.0.12", "fd00:96::c")), Proto(tcp), Port(1)],
            Some(ElemData::Verdict(Verdict::Accept)),
            None,
        ),
        el(
            vec![Addr(a("10.96.0.13", "fd00:96::d")), Proto(tcp), Port(65535)],
            Some(ElemData::Verdict(Verdict::Return)),
            None,
        ),
    ];

    let mut nodeports = set("service-nodeports", vec![P, S], Some(SetData::Verdict));
    nodeports.elements = vec![
        el(
            vec![Proto(tcp), Port(30080)],
            Some(ElemData::Verdict(Verdict::Goto(SVC_CHAIN.into()))),
            None,
        ),
        el(
            vec![Proto(udp), Port(30053)],
            Some(ElemData::Verdict(Verdict::Drop)),
            Some("no endpoints"),
        ),
    ];

    let mut no_ep = set("no-endpoint-services", vkey.clone(), None);
    no_ep.elements = vec![
        el(
            vec![Addr(a("10.96.0.20", "fd00:96::14")), Proto(tcp), Port(80)],
            None,
            Some("ns2/empty:http"),
        ),
        el(
            vec![Addr(a("10.96.0.21", "fd00:96::15")), Proto(udp), Port(8080)],
            None,
            None,
        ),
    ];

    let mut hairpin = set(
        "hairpin",
        vkey.clone(),
        Some(SetData::Values(vec![addr_t, S])),
    );
    hairpin.elements = vec![el(
        vec![Addr(a("10.96.0.1", "fd00:96::1")), Proto(tcp), Port(443)],
        Some(ElemData::Values(vec![
            Addr(a("192.168.0.5", "fd00:1::5")),
            Port(6443),
        ])),
        Some("apiserver"),
    )];

    // The userspace mode's listener ports: frontend -> proxy port.
    let mut proxy_ports = set("proxy-ports", vkey.clone(), Some(SetData::Values(vec![S])));
    proxy_ports.elements = vec![el(
        vec![Addr(a("10.96.0.1", "fd00:96::1")), Proto(tcp), Port(443)],
        Some(ElemData::Values(vec![Port(40123)])),
        Some("default/kubernetes:https"),
    )];

    // The compiler's endpoint map: id . slot -> address . port, declared with typeof.
    let mut endpoints = set(
        "endpoints",
        vec![DataType::Integer, DataType::Integer],
        Some(SetData::Values(vec![addr_t, S])),
    );
    endpoints.comment = Some("endpoints of each service port: id . slot -> address . port".into());
    let ep = |id: u32, slot: u32, addr: IpAddr, port: u16, c: Option<&str>| {
        el(
            vec![Value::Num(id), Value::Num(slot)],
            Some(ElemData::Values(vec![Addr(addr), Port(port)])),
            c,
        )
    };
    endpoints.elements = vec![
        ep(
            305419896,
            0,
            a("10.1.0.5", "fd00:1::5"),
            80,
            Some("ns1/svc1:p80"),
        ),
        ep(
            305419896,
            1,
            a("10.1.0.6", "fd00:1::6"),
            8080,
            Some("ns1/svc1:p80"),
        ),
        ep(0, 0, a("10.1.0.7", "::ffff:10.1.0.7"), 0, None),
        ep(u32::MAX, 6, a("10.1.0.8", "fd00:1::8"), 65535, None),
    ];

    // The compiler's endpoint maps today: key ranges (rbtree) -> address . port.
    let mut ranges = set(
        "endpoints-0",
        vec![DataType::Integer],
        Some(SetData::Values(vec![addr_t, S])),
    );
    ranges.flags.interval = true;
    ranges.elements = vec![
        el(
            vec![Value::Range(65536, 87381)],
            Some(ElemData::Values(vec![
                Addr(a("10.1.0.5", "fd00:1::5")),
                Port(80),
            ])),
            Some("ns1/svc1:p80"),
        ),
        el(
            vec![Value::Range(87382, 131071)],
            Some(ElemData::Values(vec![
                Addr(a("10.1.0.6", "fd00:1::6")),
                Port(80),
            ])),
            None,
        ),
        el(
            vec![Value::Range(4294901760, 4294967295)],
            Some(ElemData::Values(vec![
                Addr(a("10.1.0.7", "fd00:1::7")),
                Port(8080),
            ])),
            None,
        ),
    ];

    let mut protos = set("protos", vec![P], None);
    protos.elements = vec![
        el(vec![Proto(tcp)], None, None),
        el(vec![Proto(sctp)], None, None),
    ];
    let mut ports = set("ports", vec![S], None);
    ports.elements = vec![
        el(vec![Port(80)], None, None),
        el(vec![Port(443)], None, None),
    ];
    ports.size = Some(1000);

    // Static set with the timeout flag: its elements do not expire (no default timeout).
    let mut blocked = set("blocked", vec![addr_t], None);
    blocked.flags.timeout = true;
    blocked.elements = vec![el(vec![Addr(a("10.9.9.9", "fd00:9::9"))], None, None)];

    // Session affinity. nft 1.0.6 aborts on an IPv6 `update` with a concatenation (see the
    // report), so the IPv6 sample uses single-field keys and data there.
    let (aff_key, aff_data) = if v6 {
        (vec![addr_t], vec![addr_t])
    } else {
        (vec![addr_t, S], vec![addr_t, S])
    };
    let mut affinity = set("affinity", aff_key.clone(), Some(SetData::Values(aff_data)));
    affinity.flags = SetFlags {
        interval: false,
        timeout: true,
        dynamic: true,
    };
    affinity.timeout = Some(10800);
    affinity.comment = Some("session affinity".into());
    let mut seen = set("seen", vec![addr_t, S], None);
    seen.flags.timeout = true; // nft adds `dynamic` and `size 65535`
    seen.timeout = Some(90);
    let mut affinity2 = set(
        "affinity2",
        vec![addr_t, S],
        Some(SetData::Values(vec![addr_t, S])),
    );
    affinity2.flags = SetFlags {
        interval: false,
        timeout: true,
        dynamic: true,
    };
    affinity2.size = Some(1024);
    // What the compiler declares for ClientIP affinity (client . proto . frontend . port).
    let mut affinity4 = set(
        "affinity4",
        vec![addr_t, P, addr_t, S],
        Some(SetData::Values(vec![addr_t, S])),
    );
    affinity4.flags = SetFlags {
        interval: false,
        timeout: true,
        dynamic: true,
    };
    affinity4.size = Some(1 << 20);
    let aff4_key = vec![Field::Saddr, Field::L4Proto, Field::Daddr, Field::Dport];
    // A concatenated interval set with a prefix as its last component.
    let mut fw_allow = set("firewall-allow", vec![addr_t, P, S, addr_t], None);
    fw_allow.flags.interval = true;
    fw_allow.elements = vec![
        el(
            vec![
                Addr(a("10.0.0.1", "fd00::1")),
                Proto(tcp),
                Port(80),
                Prefix(n("192.168.0.0/16", "fd10::/64")),
            ],
            None,
            Some("ns/lb:http"),
        ),
        el(
            vec![
                Addr(a("10.0.0.1", "fd00::1")),
                Proto(tcp),
                Port(80),
                Prefix(n("10.1.2.3/32", "fd11::3/128")),
            ],
            None,
            None,
        ),
        el(
            vec![
                Addr(a("10.0.0.1", "fd00::1")),
                Proto(tcp),
                Port(80),
                Addr(a("10.9.9.9", "fd12::9")),
            ],
            None,
            None,
        ),
        el(
            vec![
                Addr(a("10.0.0.2", "fd00::2")),
                Proto(udp),
                Port(53),
                Prefix(n("0.0.0.0/0", "::/0")),
            ],
            None,
            None,
        ),
        el(
            vec![
                Addr(a("10.0.0.3", "fd00::3")),
                Proto(sctp),
                Port(443),
                Prefix(n("172.16.5.7/12", "fd13::1:2/100")),
            ],
            None,
            None,
        ),
    ];

    let key_aff: Vec<Field> = if v6 {
        vec![Field::Saddr]
    } else {
        vec![Field::Saddr, Field::Dport]
    };
    let aff_val: Vec<Value> = if v6 {
        vec![Addr(ip("fd00:1::5"))]
    } else {
        vec![Addr(ip("10.1.0.5")), Port(80)]
    };

    let services = chain(
        "services",
        None,
        vec![
            Rule::new().s(Stmt::Vmap {
                key: vec![Field::Daddr, Field::L4Proto, Field::Dport],
                map: "service-ips".into(),
            }),
            Rule::new()
                .m(Match::FibDaddrLocal)
                .s(Stmt::Vmap {
                    key: vec![Field::L4Proto, Field::Dport],
                    map: "service-nodeports".into(),
                })
                .comment("NodePorts"),
            // vmap is an expression statement: it kills the dependency even after a statement
            Rule::new().m(Match::L4Proto(udp)).s(Stmt::Vmap {
                key: vec![Field::L4Proto, Field::Dport],
                map: "service-nodeports".into(),
            }),
            Rule::new()
                .m(Match::L4Proto(sctp))
                .s(Stmt::MarkOr(0x100))
                .s(Stmt::Vmap {
                    key: vec![Field::L4Proto, Field::Dport],
                    map: "service-nodeports".into(),
                }),
        ],
    );
    let svc = chain(
        SVC_CHAIN,
        None,
        vec![
            Rule::new()
                .m(Match::Saddr {
                    negate: true,
                    addr: AddrMatch::Net(n("10.0.0.0/8", "fd01::/48")),
                })
                .s(Stmt::MarkOr(0x4000)),
            Rule::new()
                .m(Match::NumgenRandomZero { modulus: 2 })
                .m(Match::L4Proto(tcp))
                .s(Stmt::Dnat {
                    addr: a("10.1.0.5", "fd00:1::5"),
                    port: 80,
                })
                .comment("ns1/svc1:p80 -> 10.1.0.5:80"),
            Rule::new().m(Match::L4Proto(tcp)).s(Stmt::Dnat {
                addr: a("10.1.0.6", "fd00:1::6"),
                port: 8080,
            }),
            // The userspace mode: to the proxy listener of the frontend.
            Rule::new().m(Match::L4Proto(udp)).s(Stmt::RedirectMap {
                key: vec![Field::Daddr, Field::L4Proto, Field::Dport],
                map: "proxy-ports".into(),
            }),
            // As the compiler picks endpoints: a constant id (mod 1) . a random slot.
            Rule::new().m(Match::L4Proto(tcp)).s(Stmt::DnatMap {
                key: vec![
                    Field::Numgen {
                        modulus: 1,
                        offset: 305419896,
                    },
                    Field::Numgen {
                        modulus: 2,
                        offset: 0,
                    },
                ],
                map: "endpoints".into(),
            }),
            // nft prints no `offset 0`
            Rule::new()
                .m(Match::L4Proto(udp))
                .s(Stmt::DnatMap {
                    key: vec![
                        Field::Numgen {
                            modulus: 1,
                            offset: 0,
                        },
                        Field::Numgen {
                            modulus: 1,
                            offset: 0,
                        },
                    ],
                    map: "endpoints".into(),
                })
                .comment("one endpoint"),
            Rule::new().m(Match::L4Proto(sctp)).s(Stmt::DnatMap {
                key: vec![
                    Field::Numgen {
                        modulus: 1,
                        offset: u32::MAX,
                    },
                    Field::Numgen {
                        modulus: 7,
                        offset: 0,
                    },
                ],
                map: "endpoints".into(),
            }),
            // As the compiler picks endpoints: a random key of the service port's range.
            Rule::new().m(Match::L4Proto(tcp)).s(Stmt::DnatMap {
                key: vec![Field::Numgen {
                    modulus: 65536,
                    offset: 65536,
                }],
                map: "endpoints-0".into(),
            }),
            Rule::new().m(Match::L4Proto(udp)).s(Stmt::DnatMap {
                key: vec![Field::Numgen {
                    modulus: 65536,
                    offset: 4294901760,
                }],
                map: "endpoints-0".into(),
            }),
        ],
    );
    // lookup + dnat through a map; the l4proto match is a dependency nft drops
    let (dnat_map, dnat_key) = if v6 {
        ("hairpin", vec![Field::Saddr, Field::L4Proto, Field::Dport])
    } else {
        ("affinity", key_aff.clone())
    };
    let mut affinity_rules = vec![
        Rule::new()
            .m(Match::L4Proto(tcp))
            .m(Match::Lookup {
                key: dnat_key.clone(),
                set: dnat_map.into(),
                negate: false,
            })
            .s(Stmt::DnatMap {
                key: dnat_key,
                map: dnat_map.into(),
            }),
        // the dependency is not adjacent to its first use
        Rule::new()
            .m(Match::L4Proto(udp))
            .m(Match::Saddr {
                negate: false,
                addr: AddrMatch::Net(n("10.1.2.3/8", "fd00:1::1/32")),
            })
            .m(Match::Lookup {
                key: vec![Field::Dport],
                set: "ports".into(),
                negate: false,
            })
            .s(Stmt::MarkOr(0x2)),
        // used only by a statement: the match moves to the end of the matches
        Rule::new()
            .m(Match::L4Proto(sctp))
            .m(Match::CtStateNew)
            .s(Stmt::Update {
                set: "seen".into(),
                key: vec![Field::Saddr, Field::Dport],
                timeout: 0,
                data: vec![],
            }),
        Rule::new()
            .m(Match::L4Proto(tcp))
            .s(Stmt::Update {
                set: "affinity".into(),
                key: key_aff.clone(),
                timeout: 10800,
                data: aff_val,
            })
            .s(Stmt::Dnat {
                addr: a("10.1.0.5", "fd00:1::5"),
                port: 80,
            }),
        Rule::new()
            .m(Match::Lookup {
                key: vec![Field::Daddr, Field::L4Proto, Field::Dport],
                set: "hairpin".into(),
                negate: false,
            })
            .s(Stmt::DnatMap {
                key: vec![Field::Daddr, Field::L4Proto, Field::Dport],
                map: "hairpin".into(),
            }),
        // two l4proto matches: nft keeps the first one
        Rule::new()
            .m(Match::L4Proto(tcp))
            .m(Match::L4Proto(tcp))
            .m(Match::Lookup {
                key: vec![Field::Dport],
                set: "ports".into(),
                negate: true,
            })
            .v(Verdict::Return),
        // a dependency before a lookup that has meta l4proto in its key
        Rule::new()
            .m(Match::L4Proto(udp))
            .m(Match::Lookup {
                key: vec![Field::Daddr, Field::L4Proto, Field::Dport],
                set: "no-endpoint-services".into(),
                negate: false,
            })
            .v(Verdict::Drop),
        // a statement before the use makes nft keep the match
        Rule::new()
            .m(Match::L4Proto(tcp))
            .s(Stmt::MarkOr(1))
            .s(Stmt::DnatMap {
                key: vec![Field::Daddr, Field::L4Proto, Field::Dport],
                map: "hairpin".into(),
            }),
        // a match after the first use of th dport keeps `th`
        Rule::new()
            .m(Match::Lookup {
                key: vec![Field::Dport],
                set: "ports".into(),
                negate: false,
            })
            .m(Match::L4Proto(tcp))
            .v(Verdict::Accept),
    ];
    // As the compiler writes session affinity (nft 1.0.6 cannot load the IPv6 update).
    affinity_rules.push(
        Rule::new()
            .s(Stmt::DnatMap {
                key: aff4_key.clone(),
                map: "affinity4".into(),
            })
            .comment("session affinity: the endpoint this client used before"),
    );
    affinity_rules.push(
        Rule::new()
            .m(Match::Lookup {
                key: vec![Field::Daddr, Field::L4Proto, Field::Dport, Field::Saddr],
                set: "firewall-allow".into(),
                negate: true,
            })
            .v(Verdict::Drop),
    );
    if !v6 {
        affinity_rules.push(
            Rule::new()
                .m(Match::L4Proto(tcp))
                .m(Match::NumgenRandomZero { modulus: 3 })
                .s(Stmt::Update {
                    set: "affinity4".into(),
                    key: aff4_key.clone(),
                    timeout: 10800,
                    data: vec![Addr(ip("10.1.0.5")), Port(80)],
                })
                .s(Stmt::Dnat {
                    addr: ip("10.1.0.5"),
                    port: 80,
                })
                .comment("10.1.0.5:80"),
        );
        affinity_rules.push(
            Rule::new()
                .m(Match::L4Proto(udp))
                .s(Stmt::Update {
                    set: "affinity2".into(),
                    key: vec![Field::Saddr, Field::Dport],
                    timeout: 86400 * 2 + 61,
                    data: vec![Addr(ip("10.1.0.9")), Port(53)],
                })
                .v(Verdict::Accept),
        );
    }
    let endpoints_affinity = chain("endpoints-affinity", None, affinity_rules);

    let mut masquerading = chain(
        "masquerading",
        None,
        vec![
            Rule::new().m(Match::MarkClear(0x4000)).v(Verdict::Return),
            Rule::new().s(Stmt::MarkXor(0x4000)),
            Rule::new()
                .s(Stmt::Masquerade { fully_random: true })
                .comment("fully random"),
            Rule::new().s(Stmt::Masquerade {
                fully_random: false,
            }),
        ],
    );
    masquerading.comment = Some("SNAT what was marked".into());

    let reject_chain = chain(
        "reject-chain",
        None,
        vec![
            Rule::new()
                .m(Match::Lookup {
                    key: vec![Field::Daddr, Field::L4Proto, Field::Dport],
                    set: "no-endpoint-services".into(),
                    negate: false,
                })
                .s(Stmt::Reject),
            Rule::new()
                .m(Match::CtStatusDnat)
                .s(Stmt::Reject)
                .comment("reject"),
        ],
    );
    let firewall = chain(
        "firewall-check",
        None,
        vec![
            Rule::new()
                .m(Match::Lookup {
                    key: vec![Field::Daddr, Field::L4Proto, Field::Dport],
                    set: "no-endpoint-services".into(),
                    negate: true,
                })
                .m(Match::Lookup {
                    key: vec![Field::L4Proto],
                    set: "protos".into(),
                    negate: false,
                })
                .m(Match::Lookup {
                    key: vec![Field::Dport],
                    set: "ports".into(),
                    negate: false,
                })
                .v(Verdict::Drop),
            Rule::new()
                .m(Match::Saddr {
                    negate: false,
                    addr: AddrMatch::Set("cluster-ips".into()),
                })
                .m(Match::Daddr {
                    negate: true,
                    addr: AddrMatch::Set("cluster-cidrs".into()),
                })
                .v(Verdict::Accept),
            // a one-field lookup prints like an address match
            Rule::new()
                .m(Match::Lookup {
                    key: vec![Field::Saddr],
                    set: "blocked".into(),
                    negate: false,
                })
                .v(Verdict::Drop),
            Rule::new()
                .m(Match::Daddr {
                    negate: false,
                    addr: AddrMatch::Net(n("10.96.0.0/12", "fd00:96::/64")),
                })
                .v(Verdict::Drop),
            Rule::new()
                .m(Match::Daddr {
                    negate: false,
                    addr: AddrMatch::Net(host(if v6 { "fd00:96::1" } else { "10.96.0.1" })),
                })
                .v(Verdict::Drop),
            Rule::new()
                .m(Match::Saddr {
                    negate: true,
                    addr: AddrMatch::Net(n("0.0.0.0/0", "::/0")),
                })
                .v(Verdict::Return),
            Rule::new()
                .m(Match::FibSaddrLocal)
                .m(Match::CtStateNew)
                .m(Match::CtStatusDnat)
                .v(Verdict::Accept),
        ],
    );
    let marks = chain(
        "marks.x_y",
        None,
        vec![
            Rule::new().m(Match::MarkClear(0)).v(Verdict::Accept),
            Rule::new().m(Match::MarkClear(u32::MAX)).v(Verdict::Accept),
            Rule::new()
                .m(Match::MarkClear(0xffff_0000))
                .v(Verdict::Accept),
            Rule::new()
                .m(Match::MarkClear(0x8000_0000))
                .v(Verdict::Accept),
            Rule::new()
                .m(Match::MarkClear(0xff00_ff00))
                .v(Verdict::Accept),
            Rule::new().m(Match::MarkClear(1)).v(Verdict::Accept),
            Rule::new().s(Stmt::MarkOr(0)).s(Stmt::MarkXor(0)),
            Rule::new()
                .s(Stmt::MarkOr(u32::MAX))
                .s(Stmt::MarkXor(u32::MAX)),
            Rule::new()
                .m(Match::NumgenRandomZero { modulus: 1 })
                .v(Verdict::Jump("mark-for-masquerade".into())),
            Rule::new()
                .m(Match::NumgenRandomZero { modulus: u32::MAX })
                .v(Verdict::Goto("mark-for-masquerade".into())),
            Rule::new().comment("x").v(Verdict::Return),
        ],
    );
    let mark_for_masq = chain(
        "mark-for-masquerade",
        None,
        vec![Rule::new().s(Stmt::MarkOr(0x4000))],
    );
    let sctp_dnat = chain(
        "_sctp",
        None,
        vec![Rule::new().m(Match::L4Proto(sctp)).s(Stmt::Dnat {
            addr: a("10.1.0.7", "::ffff:10.1.0.7"),
            port: 9,
        })],
    );

    let mut fwd = chain(
        "filter-forward",
        Some((ChainType::Filter, Hook::Forward, -10)),
        vec![
            Rule::new()
                .m(Match::CtStateNew)
                .v(Verdict::Jump("reject-chain".into())),
            Rule::new().v(Verdict::Jump("firewall-check".into())),
        ],
    );
    fwd.comment = Some("filter / forward".into());

    let chains = vec![
        services,
        svc,
        endpoints_affinity,
        masquerading,
        mark_for_masq,
        reject_chain,
        firewall,
        marks,
        sctp_dnat,
        chain(
            "nat-prerouting",
            Some((ChainType::Nat, Hook::Prerouting, -100)),
            vec![Rule::new().v(Verdict::Jump("services".into()))],
        ),
        chain(
            "nat-output",
            Some((ChainType::Nat, Hook::Output, -110)),
            vec![Rule::new().v(Verdict::Jump("services".into()))],
        ),
        chain(
            "nat-postrouting",
            Some((ChainType::Nat, Hook::Postrouting, 100)),
            vec![Rule::new().v(Verdict::Jump("masquerading".into()))],
        ),
        fwd,
        chain(
            "filter-input",
            Some((ChainType::Filter, Hook::Input, 0)),
            vec![Rule::new()
                .m(Match::CtStateNew)
                .v(Verdict::Jump("firewall-check".into()))],
        ),
        chain(
            "filter-output",
            Some((ChainType::Filter, Hook::Output, -5)),
            vec![Rule::new().v(Verdict::Jump("reject-chain".into()))],
        ),
        chain(
            "filter-prerouting-pre-dnat",
            Some((ChainType::Filter, Hook::Prerouting, -110)),
            vec![],
        ),
        chain(
            "raw-ish",
            Some((ChainType::Filter, Hook::Postrouting, -300)),
            vec![],
        ),
        chain(
            "mangle-ish",
            Some((ChainType::Filter, Hook::Output, -151)),
            vec![],
        ),
        chain(
            "security-ish",
            Some((ChainType::Filter, Hook::Input, 60)),
            vec![],
        ),
        chain(
            "nat-input",
            Some((ChainType::Nat, Hook::Input, 101)),
            vec![],
        ),
    ];

    Ruleset {
        tables: vec![Table {
            family: fam,
            name: "svcc".into(),
            comment: Some("rules for Kubernetes Services, managed by svcc".into()),
            sets: vec![
                cluster_ips,
                cidrs,
                service_ips,
                nodeports,
                no_ep,
                hairpin,
                endpoints,
                ranges,
                protos,
                ports,
                blocked,
                affinity,
                seen,
                affinity2,
                affinity4,
                fw_allow,
                proxy_ports,
            ],
            chains,
        }],
    }
}

// ---------------------------------------------------------------------------------------------
// Arbitrary models (syntax only: they need not load)
// ---------------------------------------------------------------------------------------------

const NAME_START: &[u8] = b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ_.";
const NAME_REST: &[u8] = b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789/-_.";

/// A name nft's lexer reads as one identifier (not a keyword: it has a `-`).
pub fn gen_name(r: &mut Rng, prefix: &str) -> String {
    let mut s = String::from(prefix);
    if s.is_empty() {
        s.push(*r.pick(NAME_START) as char);
    }
    for _ in 0..r.range(0, 24) {
        s.push(*r.pick(NAME_REST) as char);
    }
    s
}

/// A comment render.rs prints faithfully: no `"` or newline, at most 128 bytes.
pub fn gen_comment(r: &mut Rng) -> String {
    const PIECES: &[&str] = &[
        "a",
        "Z",
        "0",
        " ",
        "/",
        ":",
        "-",
        ".",
        "#",
        "{",
        "}",
        ";",
        "\t",
        "'",
        "\\",
        "ns1/svc1:http",
        "10.0.0.1:80",
        "[fd00::1]:53",
        "ü",
        "✓",
        "@set",
        "accept",
        "comment",
        "==",
        "&",
    ];
    let mut s = String::new();
    for _ in 0..r.range(0, 20) {
        let p = r.pick(PIECES);
        if s.len() + p.len() > 128 {
            break;
        }
        s.push_str(p);
    }
    s
}

pub fn gen_opt_comment(r: &mut Rng) -> Option<String> {
    r.chance(1, 3).then(|| gen_comment(r))
}

pub fn gen_addr(r: &mut Rng, fam: Family) -> IpAddr {
    match fam {
        Family::Ip => IpAddr::V4(Ipv4Addr::from(match r.below(4) {
            0 => r.u32(),
            1 => 0x0a00_0000 | (r.u32() & 0xffff),
            2 => 0,
            _ => u32::MAX,
        })),
        Family::Ip6 => {
            let v: u128 = match r.below(5) {
                0 => ((r.next() as u128) << 64) | r.next() as u128,
                1 => (0xfd00u128 << 112) | (r.next() & 0xffff) as u128,
                2 => 1,
                3 => (0xffffu128 << 32) | r.u32() as u128, // v4-mapped
                _ => 0,
            };
            IpAddr::V6(Ipv6Addr::from(v))
        }
    }
}

pub fn gen_net(r: &mut Rng, fam: Family) -> IpNet {
    let a = gen_addr(r, fam);
    let max = if fam == Family::Ip { 32 } else { 128 };
    IpNet::new(a, r.range(0, max) as u8).unwrap()
}

pub fn gen_proto(r: &mut Rng) -> L4Proto {
    *r.pick(&[L4Proto::Tcp, L4Proto::Udp, L4Proto::Sctp])
}

pub fn gen_port(r: &mut Rng) -> u16 {
    match r.below(4) {
        0 => 0,
        1 => u16::MAX,
        _ => r.u32() as u16,
    }
}

pub fn gen_u32(r: &mut Rng) -> u32 {
    match r.below(5) {
        0 => 0,
        1 => u32::MAX,
        2 => 1 << r.below(32),
        3 => u32::MAX << r.below(32),
        _ => r.u32(),
    }
}

fn gen_types(r: &mut Rng, fam: Family) -> Vec<DataType> {
    let all = [
        fam.addr_type(),
        DataType::InetProto,
        DataType::InetService,
        DataType::Integer,
    ];
    (0..r.range(1, 3)).map(|_| *r.pick(&all)).collect()
}

pub fn gen_value(r: &mut Rng, fam: Family, t: DataType, interval: bool) -> Value {
    match t {
        DataType::Ipv4Addr | DataType::Ipv6Addr => {
            let f = if t == DataType::Ipv4Addr {
                Family::Ip
            } else {
                Family::Ip6
            };
            let _ = fam;
            if interval && r.chance(1, 2) {
                Value::Prefix(gen_net(r, f))
            } else {
                Value::Addr(gen_addr(r, f))
            }
        }
        DataType::InetProto => Value::Proto(gen_proto(r)),
        DataType::InetService => Value::Port(gen_port(r)),
        DataType::Integer => Value::Num(gen_u32(r)),
    }
}

fn gen_verdict(r: &mut Rng, chains: &[String]) -> Verdict {
    match r.below(5) {
        0 => Verdict::Accept,
        1 => Verdict::Drop,
        2 => Verdict::Return,
        3 => Verdict::Jump(r.pick(chains).clone()),
        _ => Verdict::Goto(r.pick(chains).clone()),
    }
}

/// `numgen random mod M offset O` (M > 0).
pub fn gen_numgen(r: &mut Rng) -> Field {
    Field::Numgen {
        modulus: gen_u32(r).max(1),
        offset: gen_u32(r),
    }
}

fn gen_fields(r: &mut Rng) -> Vec<Field> {
    let all = [Field::Saddr, Field::Daddr, Field::L4Proto, Field::Dport];
    let n = r.range(1, 4);
    let mut v: Vec<Field> = (0..n)
        .map(|_| {
            if r.chance(1, 6) {
                gen_numgen(r)
            } else {
                *r.pick(&all)
            }
        })
        .collect();
    // A one-field address key prints like an address match: see normalize_for_compare.
    if v.len() == 1 && matches!(v[0], Field::Saddr | Field::Daddr) {
        v.push(Field::Dport);
    }
    v
}

/// Any model whose every element render.rs prints faithfully (see the round-trip tests).
pub fn gen_any(r: &mut Rng) -> Ruleset {
    let mut tables = Vec::new();
    let mut seen = BTreeSet::new();
    for _ in 0..r.range(0, 3) {
        let fam = if r.chance(1, 2) {
            Family::Ip
        } else {
            Family::Ip6
        };
        let name = gen_name(r, "");
        if !seen.insert((fam, name.clone())) {
            continue;
        }
        let mut set_names = BTreeSet::new();
        let mut sets = Vec::new();
        for _ in 0..r.range(0, 5) {
            let name = gen_name(r, "s-");
            if !set_names.insert(name.clone()) {
                continue;
            }
            let key = gen_types(r, fam);
            let data = match r.below(3) {
                0 => None,
                1 => Some(SetData::Verdict),
                _ => Some(SetData::Values(gen_types(r, fam))),
            };
            let flags = SetFlags {
                interval: r.chance(1, 2),
                timeout: r.chance(1, 2),
                dynamic: r.chance(1, 2),
            };
            let mut s = Set {
                name,
                key,
                data,
                flags,
                timeout: r.chance(1, 3).then(|| gen_u32(r)),
                size: r.chance(1, 3).then(|| gen_u32(r)),
                comment: gen_opt_comment(r),
                elements: Vec::new(),
            };
            for _ in 0..r.range(0, 6) {
                let key = s
                    .key
                    .iter()
                    .map(|t| gen_value(r, fam, *t, s.flags.interval))
                    .collect();
                let data = match &s.data {
                    None => None,
                    Some(SetData::Verdict) => {
                        Some(ElemData::Verdict(gen_verdict(r, &["c-x".to_string()])))
                    }
                    Some(SetData::Values(ts)) => Some(ElemData::Values(
                        ts.iter().map(|t| gen_value(r, fam, *t, false)).collect(),
                    )),
                };
                s.elements.push(Element {
                    key,
                    data,
                    comment: gen_opt_comment(r).map(Into::into),
                });
            }
            sets.push(s);
        }
        let set_list: Vec<String> = set_names.into_iter().collect();
        let set_list = if set_list.is_empty() {
            vec!["s-none".to_string()]
        } else {
            set_list
        };
        let mut chain_names = BTreeSet::new();
        let nchains = r.range(0, 6);
        while (chain_names.len() as u64) < nchains {
            chain_names.insert(gen_name(r, "c-"));
        }
        let chain_list: Vec<String> = chain_names.iter().cloned().collect();
        let targets = if chain_list.is_empty() {
            vec!["c-x".to_string()]
        } else {
            chain_list.clone()
        };
        let mut chains = Vec::new();
        for name in chain_list {
            let base = r.chance(1, 3).then(|| BaseChain {
                kind: *r.pick(&[ChainType::Filter, ChainType::Nat]),
                hook: *r.pick(&[
                    Hook::Prerouting,
                    Hook::Input,
                    Hook::Forward,
                    Hook::Output,
                    Hook::Postrouting,
                ]),
                priority: match r.below(3) {
                    0 => r.u32() as i32,
                    1 => *r.pick(&[-300, -150, -100, 0, 50, 100, i32::MIN, i32::MAX]),
                    _ => r.range(0, 400) as i32 - 200,
                },
            });
            let mut rules = Vec::new();
            for _ in 0..r.range(0, 8) {
                rules.push(gen_rule(r, fam, &set_list, &targets));
            }
            chains.push(Chain {
                name,
                base,
                comment: gen_opt_comment(r),
                rules,
            });
        }
        tables.push(Table {
            family: fam,
            name,
            comment: gen_opt_comment(r),
            sets,
            chains,
        });
    }
    Ruleset { tables }
}

fn gen_addr_match(r: &mut Rng, fam: Family, sets: &[String]) -> AddrMatch {
    if r.chance(1, 3) {
        AddrMatch::Set(r.pick(sets).clone())
    } else {
        AddrMatch::Net(gen_net(r, fam))
    }
}

fn gen_rule(r: &mut Rng, fam: Family, sets: &[String], chains: &[String]) -> Rule {
    loop {
        let mut rule = Rule::new();
        for _ in 0..r.range(0, 4) {
            let m = match r.below(10) {
                0 => Match::CtStateNew,
                1 => Match::CtStatusDnat,
                2 => Match::Saddr {
                    negate: r.chance(1, 2),
                    addr: gen_addr_match(r, fam, sets),
                },
                3 => Match::Daddr {
                    negate: r.chance(1, 2),
                    addr: gen_addr_match(r, fam, sets),
                },
                4 => Match::L4Proto(gen_proto(r)),
                5 => Match::MarkClear(gen_u32(r)),
                6 => Match::FibDaddrLocal,
                7 => Match::FibSaddrLocal,
                8 => Match::NumgenRandomZero {
                    modulus: gen_u32(r),
                },
                _ => Match::Lookup {
                    key: gen_fields(r),
                    set: r.pick(sets).clone(),
                    negate: r.chance(1, 2),
                },
            };
            rule.matches.push(m);
        }
        for _ in 0..r.range(0, 3) {
            let s = match r.below(8) {
                0 => Stmt::MarkOr(gen_u32(r)),
                1 => Stmt::MarkXor(gen_u32(r)),
                2 => Stmt::Masquerade {
                    fully_random: r.chance(1, 2),
                },
                3 => Stmt::Dnat {
                    addr: gen_addr(r, fam),
                    port: gen_port(r),
                },
                4 => Stmt::DnatMap {
                    key: gen_fields(r),
                    map: r.pick(sets).clone(),
                },
                5 => Stmt::Update {
                    set: r.pick(sets).clone(),
                    key: gen_fields(r),
                    timeout: gen_u32(r),
                    // Untyped in the text: an integer would read back as a port.
                    data: if r.chance(1, 2) {
                        vec![]
                    } else {
                        gen_types(r, fam)
                            .into_iter()
                            .filter(|t| *t != DataType::Integer)
                            .map(|t| gen_value(r, fam, t, false))
                            .collect()
                    },
                },
                6 => Stmt::Reject,
                _ => Stmt::Vmap {
                    key: gen_fields(r),
                    map: r.pick(sets).clone(),
                },
            };
            rule.stmts.push(s);
        }
        if r.chance(1, 2) {
            rule.verdict = Some(gen_verdict(r, chains));
        }
        rule.comment = gen_opt_comment(r);
        // A rule needs something besides a comment (an empty line or a lone comment is not a rule).
        if !rule.matches.is_empty() || !rule.stmts.is_empty() || rule.verdict.is_some() {
            return rule;
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Models the kernel accepts
// ---------------------------------------------------------------------------------------------

fn field_for(r: &mut Rng, t: DataType) -> Field {
    match t {
        DataType::InetProto => Field::L4Proto,
        DataType::InetService => Field::Dport,
        // As the compiler keys @endpoints: a constant (mod 1) or a slot (mod N). The kernel
        // refuses an offset + modulus - 1 past u32::MAX.
        DataType::Integer => {
            let modulus = if r.chance(1, 2) {
                1
            } else {
                r.range(1, 64) as u32
            };
            let offset = if r.chance(1, 4) { 0 } else { gen_u32(r) };
            Field::Numgen {
                modulus,
                offset: offset.min(u32::MAX - (modulus - 1)),
            }
        }
        _ => *r.pick(&[Field::Saddr, Field::Daddr]),
    }
}

struct Kset {
    name: String,
    key: Vec<DataType>,
    data: Option<SetData>,
    dynamic: bool,
}

/// A random ruleset nft 1.0.6 loads: one table per family requested, sets of the types svcc
/// uses, "leaf" chains with hook-specific statements that no base chain reaches, chains with
/// jumps, maps and vmaps that point only at leaves, and base chains with plain rules.
pub fn gen_loadable(r: &mut Rng, fam: Family) -> Ruleset {
    let at = fam.addr_type();
    use DataType::{InetProto as P, InetService as S};
    let mut sets = Vec::new();
    let mut ksets = Vec::new();
    let nleaves = r.range(1, 4) as usize;
    let leaves: Vec<String> = (0..nleaves)
        .map(|i| format!("leaf-{i}{}", gen_name(r, "-")))
        .collect();
    let templates: Vec<(Vec<DataType>, Option<SetData>, bool)> = vec![
        (vec![at], None, false),
        (vec![at], None, true), // interval
        (vec![at, P, S], Some(SetData::Verdict), false),
        (vec![P, S], Some(SetData::Verdict), false),
        (vec![at, P, S], Some(SetData::Values(vec![at, S])), false),
        (vec![at, S], Some(SetData::Values(vec![at, S])), false),
        // @endpoints: id . slot -> address . port (declared with typeof)
        (
            vec![DataType::Integer, DataType::Integer],
            Some(SetData::Values(vec![at, S])),
            false,
        ),
        (vec![at, P, S], None, false),
        (vec![P], None, false),
        (vec![S], None, false),
    ];
    for i in 0..r.range(2, 8) {
        let (key, data, interval) = r.pick(&templates).clone();
        let name = format!("set-{i}{}", gen_name(r, "-"));
        let mut s = Set {
            name: name.clone(),
            key: key.clone(),
            data: data.clone(),
            flags: SetFlags {
                interval,
                timeout: r.chance(1, 5),
                dynamic: false,
            },
            timeout: None,
            size: None,
            comment: if r.chance(1, 6) {
                Some(gen_long_comment(r))
            } else {
                gen_opt_comment(r)
            },
            elements: Vec::new(),
        };
        if s.uses_typeof() {
            // The typeof description takes ~130 of the 256 bytes of set user data.
            s.comment = s.comment.map(|c| c.chars().take(40).collect());
        }
        let mut keys = BTreeSet::new();
        for j in 0..r.range(0, 12) {
            let k: Vec<Value> = if interval {
                vec![gen_disjoint_prefix(r, fam, j as u32)]
            } else {
                key.iter().map(|t| gen_value(r, fam, *t, false)).collect()
            };
            if !keys.insert(k.clone()) {
                continue;
            }
            let d = match &data {
                None => None,
                Some(SetData::Verdict) => Some(ElemData::Verdict(match r.below(5) {
                    0 => Verdict::Accept,
                    1 => Verdict::Drop,
                    2 => Verdict::Return,
                    3 => Verdict::Jump(r.pick(&leaves).clone()),
                    _ => Verdict::Goto(r.pick(&leaves).clone()),
                })),
                Some(SetData::Values(ts)) => Some(ElemData::Values(
                    ts.iter().map(|t| gen_value(r, fam, *t, false)).collect(),
                )),
            };
            s.elements.push(Element {
                key: k,
                data: d,
                comment: gen_opt_comment(r).map(Into::into),
            });
        }
        if r.chance(1, 5) {
            s.size = Some(s.elements.len() as u32 + r.range(1, 5000) as u32);
        }
        ksets.push(Kset {
            name,
            key,
            data,
            dynamic: false,
        });
        sets.push(s);
    }
    // Dynamic sets/maps for `update` (single-field in ip6: nft 1.0.6 aborts on concatenations).
    for i in 0..r.range(0, 3) {
        let (key, data) = match (fam, r.below(3)) {
            (Family::Ip, 0) => (vec![at, S], Some(SetData::Values(vec![at, S]))),
            (Family::Ip, 1) => (vec![at, S], None),
            (Family::Ip, _) => (vec![at], Some(SetData::Values(vec![at]))),
            (Family::Ip6, 0) => (vec![at], Some(SetData::Values(vec![at]))),
            (Family::Ip6, _) => (vec![at], None),
        };
        let name = format!("dyn-{i}{}", gen_name(r, "-"));
        let timeout = match r.below(3) {
            0 => None,
            1 => Some(0),
            _ => Some(r.range(1, 10_000_000) as u32),
        };
        let size = r.chance(1, 3).then(|| r.range(1, 100_000) as u32);
        sets.push(Set {
            name: name.clone(),
            key: key.clone(),
            data: data.clone(),
            flags: SetFlags {
                interval: false,
                timeout: true,
                dynamic: r.chance(1, 2),
            },
            timeout,
            size,
            comment: gen_opt_comment(r),
            elements: Vec::new(),
        });
        ksets.push(Kset {
            name,
            key,
            data,
            dynamic: true,
        });
    }

    let mut chains = Vec::new();
    // Leaves: anything but jumps and vmaps.
    for name in &leaves {
        let mut rules = Vec::new();
        for _ in 0..r.range(0, 6) {
            rules.push(gen_loadable_rule(r, fam, &ksets, true, &[]));
        }
        chains.push(Chain {
            name: name.clone(),
            base: None,
            comment: gen_opt_comment(r),
            rules,
        });
    }
    // Dispatchers: jumps, gotos and vmaps to leaves.
    for i in 0..r.range(0, 3) {
        let mut rules = Vec::new();
        for _ in 0..r.range(0, 6) {
            rules.push(gen_loadable_rule(r, fam, &ksets, false, &leaves));
        }
        chains.push(Chain {
            name: format!("dispatch-{i}{}", gen_name(r, "-")),
            base: None,
            comment: gen_opt_comment(r),
            rules,
        });
    }
    // Base chains: plain matches, marks, accept/drop/return.
    let hooks = [
        (ChainType::Filter, Hook::Prerouting),
        (ChainType::Filter, Hook::Input),
        (ChainType::Filter, Hook::Forward),
        (ChainType::Filter, Hook::Output),
        (ChainType::Filter, Hook::Postrouting),
        (ChainType::Nat, Hook::Prerouting),
        (ChainType::Nat, Hook::Input),
        (ChainType::Nat, Hook::Output),
        (ChainType::Nat, Hook::Postrouting),
    ];
    for i in 0..r.range(0, 4) {
        let (kind, hook) = *r.pick(&hooks);
        let priority = match r.below(4) {
            0 => *r.pick(&[-300, -150, -100, 0, 50, 100]) + r.range(0, 20) as i32 - 10,
            1 => r.range(0, 2000) as i32 - 1000,
            2 => *r.pick(&[-100, 0, 100, 50]),
            _ => r.u32() as i32 / 2 + if r.chance(1, 2) { i32::MIN / 2 } else { 0 },
        };
        // nat chains must come after conntrack (priority > -200)
        let priority = if kind == ChainType::Nat {
            priority.max(-199)
        } else {
            priority
        };
        let mut rules = Vec::new();
        for _ in 0..r.range(0, 4) {
            let mut rule = Rule::new();
            for _ in 0..r.range(0, 3) {
                rule.matches.push(gen_plain_match(r, fam, &ksets));
            }
            if r.chance(1, 2) {
                rule.stmts.push(if r.chance(1, 2) {
                    Stmt::MarkOr(gen_u32(r))
                } else {
                    Stmt::MarkXor(gen_u32(r))
                });
            }
            if rule.stmts.is_empty() || r.chance(1, 2) {
                rule.verdict = Some(
                    r.pick(&[Verdict::Accept, Verdict::Drop, Verdict::Return])
                        .clone(),
                );
            }
            rule.comment = gen_opt_comment(r);
            rules.push(rule);
        }
        chains.push(Chain {
            name: format!("base-{i}{}", gen_name(r, "-")),
            base: Some(BaseChain {
                kind,
                hook,
                priority,
            }),
            comment: gen_opt_comment(r),
            rules,
        });
    }
    Ruleset {
        tables: vec![Table {
            family: fam,
            name: "svcc".into(),
            comment: gen_opt_comment(r),
            sets,
            chains,
        }],
    }
}

/// Over 128 bytes or with quotes/newlines: render.rs cleans it, normalize_for_compare too.
fn gen_long_comment(r: &mut Rng) -> String {
    let mut s = String::from("say \"hi\"\nthere ");
    while s.len() < 140 {
        s.push_str(if r.chance(1, 4) { "ü" } else { "ab/c " });
    }
    s
}

/// Non-overlapping prefixes: the j-th lives in its own /16 (v4) or /32 (v6), with host bits.
fn gen_disjoint_prefix(r: &mut Rng, fam: Family, j: u32) -> Value {
    match fam {
        Family::Ip => {
            let base = 0x0a00_0000u32 | (j << 16);
            let len = r.range(16, 32) as u8;
            let a = Ipv4Addr::from(base | (r.u32() & 0xffff));
            if len == 32 && r.chance(1, 2) {
                Value::Addr(IpAddr::V4(a))
            } else {
                Value::Prefix(IpNet::new(IpAddr::V4(a), len).unwrap())
            }
        }
        Family::Ip6 => {
            let base = (0xfd00u128 << 112) | ((j as u128) << 96);
            let len = r.range(32, 128) as u8;
            let low = ((r.u32() as u128) << 64) | r.next() as u128;
            let a = Ipv6Addr::from(base | low);
            if len == 128 && r.chance(1, 2) {
                Value::Addr(IpAddr::V6(a))
            } else {
                Value::Prefix(IpNet::new(IpAddr::V6(a), len).unwrap())
            }
        }
    }
}

/// A match that any hook accepts.
fn gen_plain_match(r: &mut Rng, fam: Family, sets: &[Kset]) -> Match {
    let lookups: Vec<&Kset> = sets
        .iter()
        .filter(|s| s.data.is_none() && !s.dynamic)
        .collect();
    let addr_sets: Vec<&&Kset> = lookups
        .iter()
        .filter(|s| s.key == vec![fam.addr_type()])
        .collect();
    loop {
        return match r.below(10) {
            0 => Match::CtStateNew,
            1 => Match::CtStatusDnat,
            2 | 3 => {
                let negate = r.chance(1, 2);
                let addr = if !addr_sets.is_empty() && r.chance(1, 3) {
                    AddrMatch::Set(r.pick(&addr_sets).name.clone())
                } else {
                    AddrMatch::Net(gen_net(r, fam))
                };
                if r.chance(1, 2) {
                    Match::Saddr { negate, addr }
                } else {
                    Match::Daddr { negate, addr }
                }
            }
            4 => Match::L4Proto(gen_proto(r)),
            5 => Match::MarkClear(gen_u32(r)),
            6 => Match::FibDaddrLocal,
            7 => Match::FibSaddrLocal,
            8 => Match::NumgenRandomZero {
                modulus: r.range(1, u32::MAX as u64) as u32,
            },
            _ => {
                if lookups.is_empty() {
                    continue;
                }
                let s = r.pick(&lookups);
                let key = s.key.iter().map(|t| field_for(r, *t)).collect();
                Match::Lookup {
                    key,
                    set: s.name.clone(),
                    negate: r.chance(1, 2),
                }
            }
        };
    }
}

fn gen_loadable_rule(
    r: &mut Rng,
    fam: Family,
    sets: &[Kset],
    leaf: bool,
    leaves: &[String],
) -> Rule {
    let mut rule = Rule::new();
    for _ in 0..r.range(0, 4) {
        rule.matches.push(gen_plain_match(r, fam, sets));
    }
    let maps_addr_port: Vec<&Kset> = sets
        .iter()
        .filter(|s| {
            !s.dynamic
                && s.data
                    == Some(SetData::Values(vec![
                        fam.addr_type(),
                        DataType::InetService,
                    ]))
        })
        .collect();
    let vmaps: Vec<&Kset> = sets
        .iter()
        .filter(|s| s.data == Some(SetData::Verdict))
        .collect();
    let dynamic: Vec<&Kset> = sets.iter().filter(|s| s.dynamic).collect();
    if r.chance(1, 2) {
        rule.stmts.push(if r.chance(1, 2) {
            Stmt::MarkOr(gen_u32(r))
        } else {
            Stmt::MarkXor(gen_u32(r))
        });
    }
    let mut terminal = false;
    if leaf {
        if !dynamic.is_empty() && r.chance(1, 3) {
            let s = r.pick(&dynamic);
            let key = s.key.iter().map(|t| field_for(r, *t)).collect();
            let data = match &s.data {
                Some(SetData::Values(ts)) => {
                    ts.iter().map(|t| gen_value(r, fam, *t, false)).collect()
                }
                _ => vec![],
            };
            let timeout = if r.chance(1, 4) {
                0
            } else {
                r.range(1, 10_000_000) as u32
            };
            if r.chance(2, 3) {
                let at = r.below(rule.matches.len() as u64 + 1) as usize;
                rule.matches.insert(at, Match::L4Proto(gen_proto(r)));
            }
            rule.stmts.push(Stmt::Update {
                set: s.name.clone(),
                key,
                timeout,
                data,
            });
        }
        match r.below(6) {
            0 => {
                // dnat to a port needs a transport protocol match first
                let at = r.below(rule.matches.len() as u64 + 1) as usize;
                rule.matches.insert(at, Match::L4Proto(gen_proto(r)));
                rule.stmts.push(Stmt::Dnat {
                    addr: gen_addr(r, fam),
                    port: gen_port(r),
                });
                terminal = true;
            }
            1 if !maps_addr_port.is_empty() => {
                let s = r.pick(&maps_addr_port);
                let key: Vec<Field> = s.key.iter().map(|t| field_for(r, *t)).collect();
                // nft wants the transport protocol known: a match or `meta l4proto` in the key
                if !key.contains(&Field::L4Proto) || r.chance(1, 2) {
                    let at = r.below(rule.matches.len() as u64 + 1) as usize;
                    rule.matches.insert(at, Match::L4Proto(gen_proto(r)));
                }
                rule.stmts.push(Stmt::DnatMap {
                    key,
                    map: s.name.clone(),
                });
                terminal = true;
            }
            2 => {
                rule.stmts.push(Stmt::Masquerade {
                    fully_random: r.chance(1, 2),
                });
                terminal = true;
            }
            3 => {
                rule.stmts.push(Stmt::Reject);
                terminal = true;
            }
            _ => {}
        }
    } else {
        if !vmaps.is_empty() && r.chance(1, 2) {
            let s = r.pick(&vmaps);
            let key = s.key.iter().map(|t| field_for(r, *t)).collect();
            if r.chance(1, 2) {
                let at = r.below(rule.matches.len() as u64 + 1) as usize;
                rule.matches.insert(at, Match::L4Proto(gen_proto(r)));
            }
            rule.stmts.push(Stmt::Vmap {
                key,
                map: s.name.clone(),
            });
            terminal = true;
        }
        if !terminal && r.chance(2, 3) {
            rule.verdict = Some(if r.chance(1, 2) {
                Verdict::Jump(r.pick(leaves).clone())
            } else {
                Verdict::Goto(r.pick(leaves).clone())
            });
        }
    }
    if !terminal && rule.verdict.is_none() && (rule.stmts.is_empty() || r.chance(1, 2)) {
        rule.verdict = Some(
            r.pick(&[Verdict::Accept, Verdict::Drop, Verdict::Return])
                .clone(),
        );
    }
    rule.comment = if r.chance(1, 8) {
        Some(gen_long_comment(r))
    } else {
        gen_opt_comment(r)
    };
    rule
}
