//! Errors of the applier.

use std::io;

/// One object the kernel refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    /// The object, e.g. "rule #3 of chain ip svcc svc-x `...`" or "12 element(s) added to ip svcc service-ips".
    pub object: String,
    /// Its comment (provenance: which Service), when it has one.
    pub comment: Option<String>,
    /// For element messages: the element the kernel pointed at (extended ACK offset).
    pub element: Option<String>,
    pub errno: i32,
    /// The kernel's errno text, plus its extended-ACK message when it gave one.
    pub reason: String,
}

impl std::fmt::Display for Refusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.object)?;
        if let Some(e) = &self.element {
            write!(f, ", element {e}")?;
        }
        if let Some(c) = &self.comment {
            if !self.object.contains("(comment") {
                write!(f, " (comment {c:?})")?;
            }
        }
        write!(f, ": {}", self.reason)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ApplyError {
    #[error("netlink: {context}: {source}")]
    Netlink {
        context: &'static str,
        #[source]
        source: io::Error,
    },
    #[error("svcc manages only the tables `ip svcc` and `ip6 svcc`, not `{0}`")]
    NotOwned(String),
    #[error("cannot encode {object}: {reason}")]
    Invalid { object: String, reason: String },
    /// Nothing was applied: the kernel refused the batch (first refusal shown, all in the list).
    #[error("the kernel refused the transaction (nothing applied): {}{}", .0[0], if .0.len() > 1 { format!(" (and {} more)", .0.len() - 1) } else { String::new() })]
    Refused(Vec<Refusal>),
    #[error("the ruleset changed under us {0} times in a row; gave up (nothing applied)")]
    TooManyRetries(u32),
    /// IPVS mode (its own error type; boxed: it holds an `ApplyError` for the glue table).
    #[error("{0}")]
    Ipvs(Box<crate::ipvs::IpvsError>),
}

impl ApplyError {
    pub(crate) fn io(context: &'static str) -> impl FnOnce(io::Error) -> ApplyError {
        move |source| ApplyError::Netlink { context, source }
    }
}
