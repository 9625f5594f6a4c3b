//! `svcc run` and files that cannot be read (issue 16): a file that is not UTF-8 is reported
//! (one error naming the file, line and column of the bad byte, under `svcc::input`), counted
//! (`svcc_input_unreadable_files`, `svcc_input_errors_total`), left out — every other Service is
//! still served — and picked up once it is fixed (`resolved:` logged). Needs root (see
//! tests/run/harness.rs); skipped otherwise.

#[path = "run/harness.rs"]
mod harness;

use std::time::Duration;

use harness::*;

const TCP80: &[(&str, &str, u16, u16, u16)] = &[("http", "TCP", 80, 8080, 0)];

#[test]
fn an_unreadable_file_is_reported_and_picked_up_when_fixed() {
    if skip() {
        return;
    }
    let vips = ["172.30.0.1", "172.30.0.2"];
    let t = Topo::new(2, &vips);
    t.write("a.yaml", &service("a", vips[0], TCP80, &eps(&[0]), ""));
    let d = Daemon::start(&t, &["--min-sync-period", "0s", "--sync-period", "1s"]);
    expect_tcp(&t, &d, "172.30.0.1:80", &format!("{}:8080", ep_ip(0)));

    // b.yaml in Latin-1: the é of an annotation is one byte, 0xe9.
    let good_b = service("b", vips[1], TCP80, &eps(&[1]), "");
    let latin1 = good_b.replacen(
        "namespace: t}",
        "namespace: t, annotations: {owner: Ren\u{e9}}}",
        1,
    );
    let bytes: Vec<u8> = latin1
        .chars()
        .map(|c| u8::try_from(u32::from(c)).unwrap())
        .collect();
    let tmp = t.dir.join(".b.yaml.tmp");
    std::fs::write(&tmp, &bytes).unwrap();
    std::fs::rename(&tmp, t.dir.join("b.yaml")).unwrap();
    expect_metric(&d, "svcc_input_unreadable_files", 1.0);
    let log = d.log_text();
    let line = log
        .lines()
        .find(|l| l.contains("ERROR") && l.contains("b.yaml:3:") && l.contains("not UTF-8"))
        .unwrap_or_else(|| panic!("no error naming b.yaml:3:COL:\n{log}"));
    assert!(line.contains("svcc::input"), "{line}");
    assert!(d.metric("svcc_input_errors_total") >= 1.0);
    // The rest is served, and keeps following changes.
    t.write("a.yaml", &service("a", vips[0], TCP80, &eps(&[1]), ""));
    expect_tcp(&t, &d, "172.30.0.1:80", &format!("{}:8080", ep_ip(1)));
    // Reported once, not at every sync.
    std::thread::sleep(Duration::from_millis(2500));
    let n = d
        .log_text()
        .lines()
        .filter(|l| l.contains("ERROR") && l.contains("b.yaml:3:"))
        .count();
    assert_eq!(n, 1, "{}", d.log_text());

    // Fixed in place (same inode): picked up.
    std::fs::write(t.dir.join("b.yaml"), &good_b).unwrap();
    expect_tcp(&t, &d, "172.30.0.2:80", &format!("{}:8080", ep_ip(1)));
    expect_metric(&d, "svcc_input_unreadable_files", 0.0);
    assert!(
        d.log_text()
            .lines()
            .any(|l| l.contains("resolved: error: ") && l.contains("b.yaml:3:")),
        "{}",
        d.log_text()
    );
}
