//! `svcc run --backend userspace` in the real kernel (issue 11): the proxy's own behaviour,
//! beyond the flow cases (which run through the `userspace` flow loader): a dead endpoint
//! hidden by a connect retry, ClientIP affinity, UDP sessions and their idle timeout, a
//! listener kept across syncs and closed with its service port, a long connection to a removed
//! endpoint left to finish, thousands of short connections without a file-descriptor leak.
//! Same bench as tests/run.rs (tests/run/harness.rs); needs root, else skipped.

#[path = "run/harness.rs"]
mod harness;

use std::io::{BufRead, BufReader, Write};
use std::net::TcpStream;
use std::time::Duration;

use harness::*;

const TCP80: &[(&str, &str, u16, u16, u16)] = &[("http", "TCP", 80, 8080, 0)];
const UDP53: &[(&str, &str, u16, u16, u16)] = &[("dns", "UDP", 53, 5353, 0)];
const CIP: &str = "172.30.0.10";
const RANGE: &str = "41000-41999";

fn ep(i: usize, port: u16) -> String {
    format!("{}:{port}", ep_ip(i))
}

fn start(t: &Topo, extra: &[&str]) -> Daemon {
    let mut a = vec!["--backend", "userspace", "--proxy-port-range", RANGE];
    a.extend_from_slice(extra);
    Daemon::start(t, &a)
}

/// The listener port the rules send `frontend` (`IP . proto . port`) to.
fn listener_port(t: &Topo, key: &str) -> Option<u16> {
    let list = t.nft(&["list", "map", "ip", "svcc", "proxy-ports"]);
    list.lines()
        .find(|l| l.contains(key))
        .and_then(|l| l.rsplit(". ").next())
        .and_then(|p| {
            p.trim_end_matches(',')
                .split_whitespace()
                .next()?
                .parse()
                .ok()
        })
}

#[test]
fn connect_retry_hides_a_dead_endpoint() {
    if skip() {
        return;
    }
    let t = Topo::new(1, &[CIP]);
    // 10.0.1.99 is no pod: its connects time out (250 ms), the proxy tries the next endpoint.
    let dead = vec![("10.0.1.99".to_string(), "node-a", true)];
    let mut e = eps(&[0]);
    e.extend(dead);
    t.write("svc.yaml", &service("web", CIP, TCP80, &e, ""));
    let d = start(&t, &[]);
    for i in 0..10 {
        let got = tcp_from(&t.pod, &format!("{CIP}:80"));
        assert_eq!(
            got.as_deref(),
            Ok(ep(0, 8080).as_str()),
            "try {i}\n{}",
            d.log_text()
        );
    }
    // Round robin sends every other connection to the dead endpoint first.
    assert_eq!(d.metric("svcc_userspace_connections_accepted_total"), 10.0);
    assert!(d.metric("svcc_userspace_connect_retries_total") >= 4.0);
    assert!(d.metric("svcc_userspace_connect_failures_total") >= 4.0);
    assert_eq!(d.metric("svcc_userspace_listeners"), 1.0);
    let labels = r#"{service_port="t/web:http",protocol="tcp",family="ip",role="internal"}"#;
    assert_eq!(
        d.metric(&format!(
            "svcc_userspace_service_port_connections_accepted_total{labels}"
        )),
        10.0
    );
}

#[test]
fn client_ip_affinity_and_round_robin() {
    if skip() {
        return;
    }
    let t = Topo::new(3, &[CIP, "172.30.0.11"]);
    let aff =
        "  sessionAffinity: ClientIP\n  sessionAffinityConfig: {clientIP: {timeoutSeconds: 60}}\n";
    let mut text = service("sticky", CIP, TCP80, &eps(&[0, 1, 2]), aff);
    text.push_str("---\n");
    text.push_str(&service("rr", "172.30.0.11", TCP80, &eps(&[0, 1, 2]), ""));
    t.write("svc.yaml", &text);
    let d = start(&t, &[]);
    let sticky: Vec<String> = (0..10)
        .map(|_| tcp_from(&t.pod, &format!("{CIP}:80")).unwrap())
        .collect();
    assert!(
        sticky.iter().all(|b| *b == sticky[0]),
        "affinity: {sticky:?}\n{}",
        d.log_text()
    );
    // Without affinity: strict rotation over the three endpoints.
    let rr: Vec<String> = (0..6)
        .map(|_| tcp_from(&t.pod, "172.30.0.11:80").unwrap())
        .collect();
    for i in 0..3 {
        assert_eq!(rr[i], rr[i + 3], "round robin: {rr:?}");
    }
    let mut distinct = rr.clone();
    distinct.sort();
    distinct.dedup();
    assert_eq!(distinct.len(), 3, "round robin: {rr:?}");
}

#[test]
fn udp_sessions_and_idle_timeout() {
    if skip() {
        return;
    }
    let t = Topo::new(2, &[CIP]);
    t.write("svc.yaml", &service("dns", CIP, UDP53, &eps(&[0, 1]), ""));
    let d = start(&t, &["--udp-timeout", "300ms"]);
    let dst = format!("{CIP}:53");
    let (first, same, after) = in_ns(&t.pod, move || {
        let s = std::net::UdpSocket::bind("0.0.0.0:0").unwrap();
        s.connect(&dst).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(1))).unwrap();
        let ask = || {
            s.send(b"q\n").unwrap();
            let mut b = [0u8; 256];
            let n = s.recv(&mut b).expect("an answer");
            backend_of(&String::from_utf8_lossy(&b[..n])).unwrap()
        };
        let first = ask();
        // One session: every datagram within the idle timeout goes to the same endpoint.
        let same: Vec<String> = (0..5)
            .map(|_| {
                std::thread::sleep(Duration::from_millis(50));
                ask()
            })
            .collect();
        // Idle for longer than the timeout: a new session, the next endpoint round robin.
        std::thread::sleep(Duration::from_millis(700));
        (first, same, ask())
    });
    assert!(same.iter().all(|b| *b == first), "{first} then {same:?}");
    assert_ne!(
        after,
        first,
        "a new session after the idle timeout\n{}",
        d.log_text()
    );
}

#[test]
fn listeners_are_stable_and_long_connections_outlive_their_endpoint() {
    if skip() {
        return;
    }
    let t = Topo::new(2, &[CIP, "172.30.0.11"]);
    t.write("a.yaml", &service("web", CIP, TCP80, &eps(&[0]), ""));
    let d = start(&t, &["--min-sync-period", "0s"]);
    let key = format!("{CIP} . tcp . 80");
    let port = listener_port(&t, &key).expect("a listener port in the rules");
    assert!((41000..=41999).contains(&port));
    // A long-lived connection to e0.
    let dst = format!("{CIP}:80");
    let pod = t.pod.clone();
    let mut conn = in_ns(&pod, move || TcpStream::connect(&dst).unwrap());
    conn.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
    let mut r = BufReader::new(conn.try_clone().unwrap());
    let mut line = String::new();
    r.read_line(&mut line).unwrap();
    assert_eq!(backend_of(&line).as_deref(), Some(ep(0, 8080).as_str()));
    // The endpoint is replaced and another service appears: same listener port; new
    // connections go to e1; the open one still talks to e0.
    let mut text = service("web", CIP, TCP80, &eps(&[1]), "");
    text.push_str("---\n");
    text.push_str(&service("other", "172.30.0.11", TCP80, &eps(&[0]), ""));
    t.write("a.yaml", &text);
    let ok = eventually(Duration::from_secs(5), || {
        tcp_from(&t.pod, &format!("{CIP}:80")).as_deref() == Ok(ep(1, 8080).as_str())
    });
    assert!(ok.is_some(), "{}", d.log_text());
    assert_eq!(listener_port(&t, &key), Some(port), "the listener moved");
    conn.write_all(b"still there?\n").unwrap();
    line.clear();
    r.read_line(&mut line).unwrap();
    assert_eq!(backend_of(&line).as_deref(), Some(ep(0, 8080).as_str()));
    // The service goes: its listener closes (nothing listens on the port any more), the
    // ClusterIP is no longer captured, the open connection still works.
    t.write(
        "a.yaml",
        &service("other", "172.30.0.11", TCP80, &eps(&[0]), ""),
    );
    let closed = eventually(Duration::from_secs(5), || {
        !ns_cmd(&t.node, &["ss", "-ltnH"]).contains(&format!(":{port} "))
    });
    assert!(closed.is_some(), "{}", ns_cmd(&t.node, &["ss", "-ltn"]));
    conn.write_all(b"and now?\n").unwrap();
    line.clear();
    r.read_line(&mut line).unwrap();
    assert_eq!(backend_of(&line).as_deref(), Some(ep(0, 8080).as_str()));
}

#[test]
fn thousands_of_short_connections_leak_no_descriptor() {
    if skip() {
        return;
    }
    let t = Topo::new(2, &[CIP]);
    t.write("svc.yaml", &service("web", CIP, TCP80, &eps(&[0, 1]), ""));
    let d = start(&t, &[]);
    let pid = d.pid().expect("running");
    let fds = || {
        std::fs::read_dir(format!("/proc/{pid}/fd"))
            .unwrap()
            .count()
    };
    let before = fds();
    let dst = format!("{CIP}:80");
    let n = 3000;
    let failures = in_ns(&t.pod, move || {
        (0..n)
            .filter(|_| tcp_once(&dst, Duration::from_secs(2)).is_err())
            .count()
    });
    assert_eq!(failures, 0);
    // Every proxied connection's two sockets are closed once both sides are done.
    let settled = eventually(Duration::from_secs(5), || fds() <= before + 2);
    assert!(
        settled.is_some(),
        "fds: {before} before, {} after {n} connections",
        fds()
    );
}

#[test]
fn a_range_too_small_names_the_service_port_and_the_rest_works() {
    if skip() {
        return;
    }
    let t = Topo::new(1, &[CIP, "172.30.0.11"]);
    let mut text = service("a", CIP, TCP80, &eps(&[0]), "");
    text.push_str("---\n");
    text.push_str(&service("b", "172.30.0.11", TCP80, &eps(&[0]), ""));
    t.write("svc.yaml", &text);
    // One port for two listeners; `a` is first in sorted order and gets it.
    let d = Daemon::start(
        &t,
        &["--backend", "userspace", "--proxy-port-range", "41500"],
    );
    assert_eq!(
        tcp_from(&t.pod, &format!("{CIP}:80")).as_deref(),
        Ok(ep(0, 8080).as_str())
    );
    // `b` has no listener: not DNATed, so its ClusterIP is rejected (invalid port of a ClusterIP).
    assert_eq!(
        tcp_from(&t.pod, "172.30.0.11:80"),
        Err("refused".to_string())
    );
    let log = d.log_text();
    assert!(
        log.contains("t/b:http (tcp, ip, internal): no port of --proxy-port-range 41500-41500"),
        "{log}"
    );
}

#[test]
fn a_port_in_use_moves_the_listener_to_the_next_one() {
    if skip() {
        return;
    }
    let t = Topo::new(1, &[CIP]);
    t.write("svc.yaml", &service("web", CIP, TCP80, &eps(&[0]), ""));
    // The port the listener would take on an idle node (what `svcc compile` prints).
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_svcc"))
        .args([
            "compile",
            "--backend",
            "userspace",
            "--proxy-port-range",
            "41700-41701",
            "--node-ip",
            NODE_IP,
            "--hostname-override",
            "node-a",
        ])
        .arg(t.dir.join("svc.yaml"))
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    let preferred: u16 = if text.contains(". 41700") {
        41700
    } else {
        41701
    };
    let other = if preferred == 41700 { 41701 } else { 41700 };
    // Something else holds it in the node namespace.
    let squatter = in_ns(&t.node, move || {
        std::net::TcpListener::bind(("0.0.0.0", preferred)).unwrap()
    });
    let d = start_range(&t, "41700-41701");
    assert_eq!(
        tcp_from(&t.pod, &format!("{CIP}:80")).as_deref(),
        Ok(ep(0, 8080).as_str()),
        "{}",
        d.log_text()
    );
    assert_eq!(listener_port(&t, &format!("{CIP} . tcp . 80")), Some(other));
    drop(squatter);
}

fn start_range(t: &Topo, range: &str) -> Daemon {
    Daemon::start(t, &["--backend", "userspace", "--proxy-port-range", range])
}
