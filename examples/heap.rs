//! What a long-running `svcc run` keeps on the heap, part by part, for a generated cluster:
//! live bytes (a counting allocator) after each step of a first sync; then the high-water
//! mark of a full verification (a whole compile while the applier's model and the last IR
//! are still held, as in `svcc run`).
//!
//!   cargo run --release --example heap -- cluster.yaml

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicIsize, Ordering};

use svcc_compiler::session::Session;
use svcc_compiler::{NodeSettings, Source};

struct Counting;
static LIVE: AtomicIsize = AtomicIsize::new(0);
static PEAK: AtomicIsize = AtomicIsize::new(0);
fn grow(by: isize) {
    let now = LIVE.fetch_add(by, Ordering::Relaxed) + by;
    PEAK.fetch_max(now, Ordering::Relaxed);
}
// SAFETY: forwards to the system allocator, counting bytes.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, l: Layout) -> *mut u8 {
        grow(l.size() as isize);
        unsafe { System.alloc(l) }
    }
    unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
        LIVE.fetch_sub(l.size() as isize, Ordering::Relaxed);
        unsafe { System.dealloc(p, l) }
    }
    unsafe fn realloc(&self, p: *mut u8, l: Layout, n: usize) -> *mut u8 {
        grow(n as isize - l.size() as isize);
        unsafe { System.realloc(p, l, n) }
    }
}
#[global_allocator]
static A: Counting = Counting;

fn mib(b: isize) -> String {
    format!("{:.1} MiB", b as f64 / 1048576.0)
}

fn main() {
    let path = std::env::args().nth(1).expect("usage: heap FILE");
    let text = std::fs::read_to_string(&path).expect("read");
    let settings = NodeSettings {
        hostname: "node-1".into(),
        node_ips: vec!["192.168.0.2".parse().unwrap()],
        cluster_cidrs: vec!["10.128.0.0/9".parse().unwrap()],
        ..Default::default()
    };
    let l0 = LIVE.load(Ordering::Relaxed);
    println!("input text read: {}", mib(l0));
    let mut s = Session::new(settings);
    s.set_file(Source { name: path, text });
    let l1 = LIVE.load(Ordering::Relaxed);
    println!(
        "session after set_file (compressed text + parsed objects + index): {}",
        mib(l1)
    );
    let out = s.compile();
    let l2 = LIVE.load(Ordering::Relaxed);
    println!("after compile (session state + output): {}", mib(l2));
    let ruleset = out.ruleset;
    drop(out.diagnostics);
    drop(out.notes);
    let ir = out.ir;

    // The full verification: the daemon holds the applier's model and the last IR (its
    // health checks and the conntrack thread) while it compiles everything again.
    let held = LIVE.load(Ordering::Relaxed);
    PEAK.store(held, Ordering::Relaxed);
    let again = s.compile();
    let peak = PEAK.load(Ordering::Relaxed);
    let with_new = LIVE.load(Ordering::Relaxed);
    // The applier keeps the new model, the daemon the new IR; the old ones go.
    drop((ruleset, ir, again.diagnostics, again.notes));
    let (ruleset, ir) = (again.ruleset, again.ir);
    let after = LIVE.load(Ordering::Relaxed);
    println!(
        "full verification: held {}, high-water {} (+{}), with both outputs {}, after it {}",
        mib(held),
        mib(peak),
        mib(peak - held),
        mib(with_new),
        mib(after)
    );
    let l3 = LIVE.load(Ordering::Relaxed);
    drop(ir);
    let l4 = LIVE.load(Ordering::Relaxed);
    println!("output's IR copy (Arc'd ports shared): {}", mib(l3 - l4));
    drop(ruleset);
    let l5 = LIVE.load(Ordering::Relaxed);
    println!("nft model (applier keeps it): {}", mib(l4 - l5));
    println!("session (files + compiled state): {}", mib(l5));
    drop(s);
    println!(
        "after dropping the session: {}",
        mib(LIVE.load(Ordering::Relaxed))
    );
}
