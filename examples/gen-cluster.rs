//! Prints a synthetic cluster (Services + EndpointSlices) for benchmarks and scale tests.
//!
//! cargo run --release --example gen-cluster -- SERVICES ENDPOINTS [--dual-stack] > cluster.yaml
#[path = "../fixtures/gen/cluster.rs"]
mod cluster;

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let num = |i: usize, d: usize| args.get(i).and_then(|s| s.parse().ok()).unwrap_or(d);
    let o = cluster::GenOptions {
        services: num(0, 100),
        endpoints: num(1, 1000),
        dual_stack: args.iter().any(|a| a == "--dual-stack"),
        ..Default::default()
    };
    print!("{}", cluster::generate(&o));
}
