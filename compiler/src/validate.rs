//! The API server's format rules for the values svcc reads, so that a manifest the API
//! server would refuse is refused here too, with the API server's reason.
//!
//! Written by hand: no maintained Rust crate carries Kubernetes' validation (k8s-openapi has
//! the types only, kube-rs validates nothing of this), and the rules are a few regular
//! languages and length limits. Each function cites the upstream function it follows:
//! - `k8s.io/apimachinery/pkg/util/validation/validation.go` (`IsDNS1123Label`,
//!   `IsDNS1123Subdomain`, `IsDNS1035Label`, `IsValidLabelValue`, `IsValidPortNum`);
//! - `k8s.io/apimachinery/pkg/api/validation/generic.go` (`NameIsDNSSubdomain`,
//!   `NameIsDNS1035Label`, `ValidateNamespaceName`);
//! - `pkg/apis/core/validation/validation.go` (`ValidateNonSpecialIP`, `ValidateEndpointIP`,
//!   `ValidateService`, `validateEndpointSubsets`, `ValidateNodeName`);
//! - `pkg/apis/discovery/validation/validation.go` (EndpointSlice limits);
//! - `pkg/apis/networking/validation/validation.go` (`ValidateServiceCIDR`).
//!
//! Messages are upstream's, shortened where upstream appends a regex.

use std::net::IpAddr;

/// `validation.DNS1123LabelMaxLength`, `DNS1035LabelMaxLength`, `LabelValueMaxLength`.
pub const LABEL_MAX: usize = 63;
/// `validation.DNS1123SubdomainMaxLength`.
pub const SUBDOMAIN_MAX: usize = 253;

/// discovery/validation: `maxEndpoints`.
pub const SLICE_MAX_ENDPOINTS: usize = 1000;
/// discovery/validation: `maxAddresses` per endpoint.
pub const SLICE_MAX_ADDRESSES: usize = 100;
/// discovery/validation: `maxPorts`. The API reference says "a maximum of 100 ports", but
/// the API server has enforced 20,000 since the v1 API (validation.go); parity is with what
/// the server accepts.
pub const SLICE_MAX_PORTS: usize = 20000;
/// discovery/validation: `maxZoneHints` (and the v1.33 node hints, also 8).
pub const SLICE_MAX_HINTS: usize = 8;

fn is_lower_alnum(c: u8) -> bool {
    c.is_ascii_lowercase() || c.is_ascii_digit()
}

fn too_long(max: usize) -> String {
    format!("must be no more than {max} characters")
}

/// `IsDNS1123Label`: `[a-z0-9]([-a-z0-9]*[a-z0-9])?`, at most 63 characters.
pub fn dns1123_label(s: &str) -> Result<(), String> {
    let b = s.as_bytes();
    let ok = !b.is_empty()
        && is_lower_alnum(b[0])
        && is_lower_alnum(b[b.len() - 1])
        && b.iter().all(|&c| is_lower_alnum(c) || c == b'-');
    if !ok {
        return Err("a lowercase RFC 1123 label must consist of lower case alphanumeric characters or '-', and must start and end with an alphanumeric character (e.g. 'my-name', or '123-abc')".into());
    }
    if b.len() > LABEL_MAX {
        return Err(too_long(LABEL_MAX));
    }
    Ok(())
}

/// `IsDNS1123Subdomain`: dot-separated RFC 1123 labels, at most 253 characters.
pub fn dns1123_subdomain(s: &str) -> Result<(), String> {
    if s.len() > SUBDOMAIN_MAX {
        return Err(too_long(SUBDOMAIN_MAX));
    }
    // Each label as in IsDNS1123Label, without its 63-character bound (upstream's regex has
    // none per label).
    let ok = !s.is_empty()
        && s.split('.').all(|l| {
            let b = l.as_bytes();
            !b.is_empty()
                && is_lower_alnum(b[0])
                && is_lower_alnum(b[b.len() - 1])
                && b.iter().all(|&c| is_lower_alnum(c) || c == b'-')
        });
    if !ok {
        return Err("a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or '.', and must start and end with an alphanumeric character (e.g. 'example.com')".into());
    }
    Ok(())
}

/// `IsDNS1035Label`: `[a-z]([-a-z0-9]*[a-z0-9])?`, at most 63 characters.
pub fn dns1035_label(s: &str) -> Result<(), String> {
    let b = s.as_bytes();
    let ok = !b.is_empty()
        && b[0].is_ascii_lowercase()
        && is_lower_alnum(b[b.len() - 1])
        && b.iter().all(|&c| is_lower_alnum(c) || c == b'-');
    if !ok {
        return Err("a DNS-1035 label must consist of lower case alphanumeric characters or '-', start with an alphabetic character, and end with an alphanumeric character (e.g. 'my-name', or 'abc-123')".into());
    }
    if b.len() > LABEL_MAX {
        return Err(too_long(LABEL_MAX));
    }
    Ok(())
}

/// `IsValidLabelValue`: empty, or `[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?`, at most 63.
pub fn label_value(s: &str) -> Result<(), String> {
    if s.len() > LABEL_MAX {
        return Err(too_long(LABEL_MAX));
    }
    let b = s.as_bytes();
    let ok = b.is_empty()
        || (b[0].is_ascii_alphanumeric()
            && b[b.len() - 1].is_ascii_alphanumeric()
            && b.iter()
                .all(|&c| c.is_ascii_alphanumeric() || matches!(c, b'-' | b'_' | b'.')));
    if !ok {
        return Err("a valid label must be an empty string or consist of alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric character (e.g. 'MyValue', or 'my_value', or '12345')".into());
    }
    Ok(())
}

/// Service names (`ValidateServiceName` = `NameIsDNS1035Label`).
pub fn service_name(s: &str) -> Result<(), String> {
    dns1035_label(s)
}

/// Namespace names (`ValidateNamespaceName` = `NameIsDNSLabel`).
pub fn namespace(s: &str) -> Result<(), String> {
    dns1123_label(s)
}

/// EndpointSlice, Endpoints, Node and ServiceCIDR names (`NameIsDNSSubdomain`).
pub fn object_name(s: &str) -> Result<(), String> {
    dns1123_subdomain(s)
}

/// Port names of Services, EndpointSlices and Endpoints (`ValidateDNS1123Label`).
pub fn port_name(s: &str) -> Result<(), String> {
    dns1123_label(s)
}

/// `ValidateNonSpecialIP` (externalIPs) and `ValidateEndpointIP` (endpoint addresses): the
/// same four ranges.
pub fn non_special_ip(a: &IpAddr) -> Result<(), String> {
    let (unspecified, loopback, link_local, ll_multicast) = match a {
        IpAddr::V4(v) => (
            v.is_unspecified(),
            v.is_loopback(),
            v.is_link_local(),
            v.octets()[..3] == [224, 0, 0],
        ),
        IpAddr::V6(v) => {
            let s = v.segments();
            (
                v.is_unspecified(),
                v.is_loopback(),
                s[0] & 0xffc0 == 0xfe80,
                // Go's IsLinkLocalMulticast: ff02::/16.
                s[0] & 0xff0f == 0xff02,
            )
        }
    };
    if unspecified {
        Err(format!("may not be unspecified ({a})"))
    } else if loopback {
        Err("may not be in the loopback range (127.0.0.0/8, ::1/128)".into())
    } else if link_local {
        Err("may not be in the link-local range (169.254.0.0/16, fe80::/10)".into())
    } else if ll_multicast {
        Err("may not be in the link-local multicast range (224.0.0.0/24, ff02::/10)".into())
    } else {
        Ok(())
    }
}

/// `IsValidPortNum`: 1-65535.
pub fn port_num(p: i32) -> Result<u16, String> {
    match u16::try_from(p) {
        Ok(v) if v > 0 => Ok(v),
        _ => Err(format!("port {p} out of range 1-65535")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels() {
        for ok in ["a", "web", "my-name", "123-abc", "0", &"a".repeat(63)] {
            assert!(dns1123_label(ok).is_ok(), "{ok}");
        }
        for bad in ["", "-a", "a-", "A", "a_b", "a.b", &"a".repeat(64)] {
            assert!(dns1123_label(bad).is_err(), "{bad}");
        }
        assert!(dns1035_label("web-1").is_ok());
        for bad in ["1web", "", "web-", "Web", &"a".repeat(64)] {
            assert!(dns1035_label(bad).is_err(), "{bad}");
        }
        assert_eq!(dns1035_label(&"a".repeat(300)), Err(too_long(63)));
    }

    #[test]
    fn subdomains() {
        for ok in ["a", "web-abc12", "example.com", "node-a.zone-1.example"] {
            assert!(dns1123_subdomain(ok).is_ok(), "{ok}");
        }
        for bad in ["", ".a", "a.", "a..b", "A.b", "a_b", &"a".repeat(254)] {
            assert!(dns1123_subdomain(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn label_values() {
        for ok in ["", "a", "Zone_A.1", "us-east-1a"] {
            assert!(label_value(ok).is_ok(), "{ok}");
        }
        for bad in ["-a", "a-", "a b", "a/b", &"a".repeat(64)] {
            assert!(label_value(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn special_ips() {
        for bad in [
            "0.0.0.0",
            "127.0.0.1",
            "169.254.1.1",
            "224.0.0.5",
            "::",
            "::1",
            "fe80::1",
            "ff02::1",
        ] {
            assert!(non_special_ip(&bad.parse().unwrap()).is_err(), "{bad}");
        }
        for ok in ["10.0.0.1", "224.0.1.1", "2001:db8::1", "ff05::1"] {
            assert!(non_special_ip(&ok.parse().unwrap()).is_ok(), "{ok}");
        }
    }

    /// A nodePort outside `--service-node-port-range` is served, with a warning naming it.
    #[test]
    fn node_port_range_is_a_warning() {
        use crate::config::NodeSettings;
        use crate::{compile, CompileOptions, Source};
        let src = Source {
            name: "np.yaml".into(),
            text: "apiVersion: v1\nkind: Service\nmetadata: {name: web, namespace: default}\nspec:\n  type: NodePort\n  clusterIP: 10.96.0.10\n  ports: [{name: http, port: 80, nodePort: 8080}]\n".into(),
        };
        let run = |range| {
            let settings = NodeSettings {
                node_ips: vec!["192.168.0.2".parse().unwrap()],
                service_node_port_range: range,
                ..NodeSettings::default()
            };
            compile(
                std::slice::from_ref(&src),
                &settings,
                CompileOptions::default(),
            )
            .unwrap()
        };
        let out = run(crate::config::DEFAULT_NODE_PORT_RANGE);
        assert_eq!(out.diagnostics.len(), 1, "{:?}", out.diagnostics);
        let d = &out.diagnostics[0];
        assert!(!d.is_error());
        assert_eq!(
            (d.line, d.field.as_deref()),
            (Some(7), Some("spec.ports[0].nodePort"))
        );
        assert!(d
            .message
            .contains("outside the service-node-port-range 30000-32767"));
        let np = |o: &crate::Output| o.ir.families[0].service_ports[0].frontends.len();
        assert_eq!(np(&out), 2, "ClusterIP and the NodePort are both served");
        let out = run((8000, 9000));
        assert!(out.diagnostics.is_empty(), "{:?}", out.diagnostics);
        assert_eq!(np(&out), 2);
    }

    #[test]
    fn ports() {
        assert_eq!(port_num(1), Ok(1));
        assert_eq!(port_num(65535), Ok(65535));
        assert!(port_num(0).is_err() && port_num(65536).is_err() && port_num(-1).is_err());
    }
}
