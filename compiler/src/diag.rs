//! Diagnostics: every problem with the input names the file, line (and column), object and field.
//!
//! Diagnostics are created where the problem is found, with a structured field path; line and
//! column are filled in afterwards by [`crate::manifest::locate`] (one pass per file), so the
//! fast path never pays for source positions.

use std::fmt;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Severity {
    Warning,
    Error,
}

/// One step of a path into a document.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum PathSeg {
    Key(String),
    Index(usize),
}

/// Renders `spec.ports[0].port`.
pub fn path_string(path: &[PathSeg]) -> String {
    let mut s = String::new();
    for seg in path {
        match seg {
            PathSeg::Key(k) => {
                if !s.is_empty() {
                    s.push('.');
                }
                s.push_str(k);
            }
            PathSeg::Index(i) => s.push_str(&format!("[{i}]")),
        }
    }
    s
}

/// Where an object sits in its input: file, YAML document, and the path to it inside the
/// document (non-empty for items of a `List`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Origin {
    pub file: std::sync::Arc<str>,
    pub doc: usize,
    pub base: Vec<PathSeg>,
}

impl Origin {
    pub fn object_path(&self) -> String {
        let p = path_string(&self.base);
        if p.is_empty() {
            format!("document {}", self.doc + 1)
        } else {
            format!("document {} {p}", self.doc + 1)
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Diagnostic {
    pub severity: Severity,
    pub file: String,
    /// 1-based.
    pub line: Option<usize>,
    /// 1-based.
    pub column: Option<usize>,
    /// `Service default/web`
    pub object: Option<String>,
    /// `spec.ports[0].port`
    pub field: Option<String>,
    pub message: String,
    /// For locating: the document and full path of the field.
    pub(crate) at: Option<(usize, Vec<PathSeg>)>,
}

impl Diagnostic {
    pub fn error(file: &str, message: impl Into<String>) -> Self {
        Diagnostic {
            severity: Severity::Error,
            file: file.to_string(),
            line: None,
            column: None,
            object: None,
            field: None,
            message: message.into(),
            at: None,
        }
    }

    /// A problem with one field of an object (located later).
    pub fn at_field(
        severity: Severity,
        origin: &Origin,
        object: Option<String>,
        field: &[PathSeg],
        message: impl Into<String>,
    ) -> Self {
        let mut full = origin.base.clone();
        full.extend_from_slice(field);
        Diagnostic {
            severity,
            file: origin.file.to_string(),
            line: None,
            column: None,
            object,
            field: if field.is_empty() {
                None
            } else {
                Some(path_string(field))
            },
            message: message.into(),
            at: Some((origin.doc, full)),
        }
    }

    pub fn is_error(&self) -> bool {
        self.severity == Severity::Error
    }
}

impl fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let sev = match self.severity {
            Severity::Error => "error",
            Severity::Warning => "warning",
        };
        write!(f, "{sev}: {}", self.file)?;
        if let Some(l) = self.line {
            write!(f, ":{l}")?;
            if let Some(c) = self.column {
                write!(f, ":{c}")?;
            }
        }
        write!(f, ":")?;
        if let Some(o) = &self.object {
            write!(f, " {o}:")?;
        }
        if let Some(fl) = &self.field {
            write!(f, " {fl}:")?;
        }
        write!(f, " {}", self.message)
    }
}

/// The error of a failed compile: every diagnostic, errors and warnings.
#[derive(Debug, thiserror::Error)]
#[error("{} error(s) in the input", .0.iter().filter(|d| d.is_error()).count())]
pub struct InputErrors(pub Vec<Diagnostic>);
