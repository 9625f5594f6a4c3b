//! Health answers, as kube-proxy gives them (pkg/proxy/healthcheck/proxy_health.go and
//! service_health.go), so probes, load balancers and scripts written for kube-proxy work:
//!
//! - `/healthz` and `/livez` on `--healthz-bind-address`: 200 when the last successful sync is
//!   at most 2 × syncPeriod old (svcc verifies the kernel every syncPeriod, so a healthy daemon
//!   refreshes it at least that often), 503 otherwise and before the first sync. Bodies as
//!   kube-proxy's: `{"lastUpdated": "…","currentTime": "…", "nodeEligible": true}` (healthz) and
//!   `{"lastUpdated": "…","currentTime": "…"}` (livez), times printed the way Go prints a
//!   `time.Time` (`2006-01-02 15:04:05.999999999 +0000 UTC m=+1.000000001`); when healthy,
//!   lastUpdated is the current time, as kube-proxy does "to preserve compatibility".
//!   svcc does not watch Node objects, so nodeEligible is always true.
//! - a healthCheckNodePort: 200 when the service has local endpoints and the proxy is healthy,
//!   503 otherwise; header `X-Load-Balancing-Endpoint-Weight: N`; the body lists the service and
//!   its local endpoint count.

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// When the rules were last brought up to date.
#[derive(Debug, Clone)]
pub struct ProxyHealth {
    /// 2 × syncPeriod.
    pub timeout: Duration,
    pub last_updated: Option<(SystemTime, Instant)>,
    /// Process start, for Go's monotonic clock reading (`m=+…`).
    pub start: Instant,
}

/// One health answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Answer {
    pub status: u16,
    pub body: String,
    pub headers: Vec<(&'static str, String)>,
}

impl ProxyHealth {
    pub fn new(sync_period: Duration) -> ProxyHealth {
        ProxyHealth {
            timeout: sync_period * 2,
            last_updated: None,
            start: Instant::now(),
        }
    }

    pub fn updated(&mut self) {
        self.last_updated = Some((SystemTime::now(), Instant::now()));
    }

    pub fn is_healthy(&self, now: Instant) -> bool {
        self.last_updated
            .is_some_and(|(_, at)| now.saturating_duration_since(at) <= self.timeout)
    }

    /// `/healthz` (with nodeEligible) or `/livez`.
    pub fn answer(&self, healthz: bool, now_sys: SystemTime, now: Instant) -> Answer {
        let healthy = self.is_healthy(now);
        let current = go_time(now_sys, Some(now.saturating_duration_since(self.start)));
        let last = if healthy {
            current.clone()
        } else {
            match self.last_updated {
                Some((t, at)) => go_time(t, Some(at.saturating_duration_since(self.start))),
                None => GO_ZERO_TIME.to_string(),
            }
        };
        let body = if healthz {
            format!(
                r#"{{"lastUpdated": "{last}","currentTime": "{current}", "nodeEligible": true}}"#
            )
        } else {
            format!(r#"{{"lastUpdated": "{last}","currentTime": "{current}"}}"#)
        };
        Answer {
            status: if healthy { 200 } else { 503 },
            body,
            headers: vec![
                ("Content-Type", "application/json".into()),
                ("X-Content-Type-Options", "nosniff".into()),
            ],
        }
    }
}

/// A service's healthCheckNodePort answer (kube-proxy's `hcHandler`, same body layout).
pub fn service_answer(namespace: &str, name: &str, local: usize, proxy_healthy: bool) -> Answer {
    let body = format!(
        "{{\n\t\"service\": {{\n\t\t\"namespace\": {},\n\t\t\"name\": {}\n\t}},\n\t\"localEndpoints\": {local},\n\t\"serviceProxyHealthy\": {proxy_healthy}\n}}",
        json_str(namespace),
        json_str(name)
    );
    Answer {
        status: if local > 0 && proxy_healthy { 200 } else { 503 },
        body,
        headers: vec![
            ("Content-Type", "application/json".into()),
            ("X-Content-Type-Options", "nosniff".into()),
            ("X-Load-Balancing-Endpoint-Weight", local.to_string()),
        ],
    }
}

/// A JSON string literal (Kubernetes names need no escaping, but be safe).
fn json_str(s: &str) -> String {
    let mut o = String::with_capacity(s.len() + 2);
    o.push('"');
    for c in s.chars() {
        match c {
            '"' => o.push_str("\\\""),
            '\\' => o.push_str("\\\\"),
            c if (c as u32) < 0x20 => o.push_str(&format!("\\u{:04x}", c as u32)),
            c => o.push(c),
        }
    }
    o.push('"');
    o
}

/// Go's zero `time.Time`, as `String()` prints it.
pub const GO_ZERO_TIME: &str = "0001-01-01 00:00:00 +0000 UTC";

/// A time as Go's `time.Time.String()` prints a UTC time with a monotonic reading:
/// `2006-01-02 15:04:05.999999999 +0000 UTC m=+1.000000001` (fraction without trailing zeros).
pub fn go_time(t: SystemTime, mono: Option<Duration>) -> String {
    let d = t.duration_since(UNIX_EPOCH).unwrap_or_default();
    let secs = d.as_secs() as i64;
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    let (y, m, day) = civil_from_days(days);
    let mut s = format!(
        "{y:04}-{m:02}-{day:02} {:02}:{:02}:{:02}",
        rem / 3600,
        rem / 60 % 60,
        rem % 60
    );
    let ns = d.subsec_nanos();
    if ns != 0 {
        let f = format!("{ns:09}");
        s.push('.');
        s.push_str(f.trim_end_matches('0'));
    }
    s.push_str(" +0000 UTC");
    if let Some(m) = mono {
        s.push_str(&format!(" m=+{}.{:09}", m.as_secs(), m.subsec_nanos()));
    }
    s
}

/// Days since 1970-01-01 -> (year, month, day) (H. Hinnant's algorithm).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (if m <= 2 { y + 1 } else { y }, m, d)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn go_time_format() {
        let t = UNIX_EPOCH + Duration::new(1_623_923_474, 781_355_400);
        assert_eq!(
            go_time(t, Some(Duration::new(1002, 35_853_024))),
            "2021-06-17 09:51:14.7813554 +0000 UTC m=+1002.035853024"
        );
        assert_eq!(go_time(UNIX_EPOCH, None), "1970-01-01 00:00:00 +0000 UTC");
        let leap = UNIX_EPOCH + Duration::from_secs(951_782_400); // 2000-02-29
        assert!(go_time(leap, None).starts_with("2000-02-29 00:00:00"));
    }

    #[test]
    fn healthy_within_two_sync_periods() {
        let mut h = ProxyHealth::new(Duration::from_secs(30));
        let now = Instant::now();
        let a = h.answer(true, SystemTime::now(), now);
        assert_eq!(a.status, 503, "not healthy before the first sync");
        assert!(a.body.contains(GO_ZERO_TIME), "{}", a.body);
        h.updated();
        let a = h.answer(true, SystemTime::now(), Instant::now());
        assert_eq!(a.status, 200);
        assert!(a.body.ends_with(r#", "nodeEligible": true}"#), "{}", a.body);
        let later = Instant::now() + Duration::from_secs(61);
        assert_eq!(h.answer(false, SystemTime::now(), later).status, 503);
        let b = h.answer(false, SystemTime::now(), Instant::now()).body;
        assert!(!b.contains("nodeEligible"));
        assert!(b.starts_with(r#"{"lastUpdated": "#) && b.contains(r#","currentTime": "#));
    }

    #[test]
    fn service_answers() {
        let a = service_answer("ns", "svc", 2, true);
        assert_eq!(a.status, 200);
        assert!(a.body.contains("\"localEndpoints\": 2"));
        assert!(a
            .headers
            .contains(&("X-Load-Balancing-Endpoint-Weight", "2".into())));
        assert_eq!(service_answer("ns", "svc", 0, true).status, 503);
        assert_eq!(service_answer("ns", "svc", 3, false).status, 503);
    }
}
