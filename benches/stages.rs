//! Criterion benchmarks of each compiler stage (parse, lower, optimize, render, whole-model
//! diff, iptables) and of the endpoint delta of `svcc run`, on generated clusters of 1k, 10k
//! and 30k services (10 endpoints each), plus the fixture corpus.
//!
//!   cargo bench --bench stages            (SVCC_BENCH_SIZES=1000,10000 to choose sizes)

#[path = "../fixtures/gen/cluster.rs"]
mod cluster;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use svcc_compiler::{lower, manifest, nft, NodeSettings, Source};

fn settings() -> NodeSettings {
    NodeSettings {
        hostname: "node-1".into(),
        node_ips: vec!["192.168.0.2".parse().unwrap()],
        cluster_cidrs: vec!["10.128.0.0/9".parse().unwrap()],
        ..Default::default()
    }
}

fn sizes() -> Vec<usize> {
    std::env::var("SVCC_BENCH_SIZES")
        .ok()
        .map(|s| s.split(',').filter_map(|x| x.trim().parse().ok()).collect())
        .unwrap_or_else(|| vec![1000, 10000, 30000])
}

fn stages(c: &mut Criterion) {
    let mut g = c.benchmark_group("stages");
    g.sample_size(10);
    for n in sizes() {
        let text = cluster::generate(&cluster::GenOptions {
            services: n,
            endpoints: n * 10,
            ..Default::default()
        });
        let src = vec![Source {
            name: "gen.yaml".into(),
            text,
        }];
        let s = settings();
        g.throughput(Throughput::Elements(n as u64));
        g.bench_with_input(BenchmarkId::new("parse", n), &src, |b, src| {
            b.iter(|| manifest::parse_sources(src, &mut Vec::new()))
        });
        let parsed = manifest::parse_sources(&src, &mut Vec::new());
        g.bench_with_input(BenchmarkId::new("lower", n), &parsed, |b, p| {
            b.iter(|| lower::lower(p, &s, &mut Vec::new(), &mut Vec::new()))
        });
        let ir = lower::lower(&parsed, &s, &mut Vec::new(), &mut Vec::new());
        g.bench_with_input(BenchmarkId::new("optimize", n), &ir, |b, ir| {
            b.iter(|| nft::build::build(ir))
        });
        let rs = nft::build::build(&ir);
        g.bench_with_input(BenchmarkId::new("render", n), &rs, |b, rs| {
            b.iter(|| nft::render::render_replace(rs))
        });
        // The difference of two whole models one endpoint apart, as the applier computes it
        // for a full compile (printed as the nft script `svcc diff` shows).
        let mut moved = rs.clone();
        if let Some(e) = moved.tables[0]
            .sets
            .iter_mut()
            .flat_map(|s| s.elements.iter_mut())
            .find(|e| e.comment.is_some())
        {
            e.comment = Some("moved".into());
        }
        g.bench_with_input(
            BenchmarkId::new("diff", n),
            &(rs.clone(), moved),
            |b, (x, y)| b.iter(|| svcc_runtime::diff_script(x, y).unwrap().len()),
        );
        g.bench_with_input(BenchmarkId::new("iptables", n), &ir, |b, ir| {
            b.iter(|| {
                svcc_compiler::iptables::build::build(ir)
                    .iter()
                    .map(|r| r.restore_text().len())
                    .sum::<usize>()
            })
        });
    }
    g.finish();
}

/// The whole fixture corpus, compiled case by case (small inputs: start-up costs).
fn corpus(c: &mut Criterion) {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/cases");
    let mut cases: Vec<Vec<Source>> = Vec::new();
    for e in std::fs::read_dir(root).unwrap().flatten() {
        let mut srcs = Vec::new();
        for f in std::fs::read_dir(e.path()).unwrap().flatten() {
            let name = f.file_name().to_string_lossy().to_string();
            if name.ends_with(".yaml") && name != "case.yaml" && name != "kube-proxy.yaml" {
                srcs.push(Source {
                    name,
                    text: std::fs::read_to_string(f.path()).unwrap(),
                });
            }
        }
        cases.push(srcs);
    }
    let s = settings();
    c.bench_function("corpus/compile", |b| {
        b.iter(|| {
            for srcs in &cases {
                let _ = svcc_compiler::compile(
                    srcs,
                    &s,
                    svcc_compiler::CompileOptions { keep_going: true },
                );
            }
        })
    });
}

/// `svcc run`'s path after one endpoint change: the session parses the changed file and gives
/// the delta of the one Service it belongs to (flat in the number of services).
fn delta(c: &mut Criterion) {
    let mut g = c.benchmark_group("delta");
    g.sample_size(20);
    let target = |i: u32| {
        Source {
        name: "target.yaml".into(),
        text: format!(
            "apiVersion: v1\nkind: Service\nmetadata: {{name: target, namespace: zz-bench}}\nspec:\n  clusterIP: 10.96.255.250\n  ports: [{{name: http, port: 80}}]\n---\napiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata:\n  name: target-1\n  namespace: zz-bench\n  labels: {{kubernetes.io/service-name: target}}\naddressType: IPv4\nendpoints:\n- addresses: [10.244.255.10]\n- addresses: [10.244.254.{}]\nports:\n- {{name: http, port: 80, protocol: TCP}}\n",
            i % 250 + 1
        ),
    }
    };
    for n in sizes() {
        let mut session = svcc_compiler::session::Session::new(settings());
        session.set_file(Source {
            name: "gen.yaml".into(),
            text: cluster::generate(&cluster::GenOptions {
                services: n,
                endpoints: n * 10,
                ..Default::default()
            }),
        });
        session.set_file(target(0));
        session.compile();
        let mut i = 0;
        g.bench_function(BenchmarkId::new("endpoint", n), |b| {
            b.iter(|| {
                i += 1;
                session.set_file(target(i));
                session.compile_delta().expect("a delta").delta.tables.len()
            })
        });
    }
    g.finish();
}

criterion_group!(benches, stages, delta, corpus);
criterion_main!(benches);
