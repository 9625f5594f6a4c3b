//! A compile session for the long-running applier: inputs are kept per file, and only files
//! whose text changed are parsed again. Invalid objects never stop the rest (keep-going is
//! the only mode here): they come back as diagnostics, each located in its file.

use std::collections::BTreeMap;

use crate::config::NodeSettings;
use crate::diag::Diagnostic;
use crate::manifest::{self, Parsed, Source};
use crate::{lower, nft, Output};

struct FileState {
    source: Source,
    parsed: Parsed,
    /// Parse diagnostics, already located.
    diags: Vec<Diagnostic>,
}

pub struct Session {
    settings: NodeSettings,
    files: BTreeMap<String, FileState>,
}

impl Session {
    pub fn new(settings: NodeSettings) -> Session {
        Session {
            settings,
            files: BTreeMap::new(),
        }
    }

    pub fn settings(&self) -> &NodeSettings {
        &self.settings
    }

    /// Adds or replaces a file; returns false (and does nothing) when its text is unchanged.
    pub fn set_file(&mut self, source: Source) -> bool {
        if self
            .files
            .get(&source.name)
            .is_some_and(|f| f.source.text == source.text)
        {
            return false;
        }
        let mut diags = Vec::new();
        let parsed = manifest::parse_sources(std::slice::from_ref(&source), &mut diags);
        manifest::locate(&mut diags, std::slice::from_ref(&source));
        self.files.insert(
            source.name.clone(),
            FileState {
                source,
                parsed,
                diags,
            },
        );
        true
    }

    /// Forgets a file; returns whether it was known.
    pub fn remove_file(&mut self, name: &str) -> bool {
        self.files.remove(name).is_some()
    }

    /// Names of the files in the session.
    pub fn file_names(&self) -> impl Iterator<Item = &str> {
        self.files.keys().map(String::as_str)
    }

    /// Lowers and builds everything the session holds; every diagnostic comes back located.
    pub fn compile(&self) -> Output {
        let mut diags: Vec<Diagnostic> = self
            .files
            .values()
            .flat_map(|f| f.diags.iter().cloned())
            .collect();
        let mut notes = Vec::new();
        let mut lower_diags = Vec::new();
        let ir = lower::lower_objects(
            self.files.values().flat_map(|f| f.parsed.objects.iter()),
            &self.settings,
            &mut lower_diags,
            &mut notes,
        );
        let sources: Vec<Source> = {
            let with_diags: std::collections::BTreeSet<&str> =
                lower_diags.iter().map(|d| d.file.as_str()).collect();
            self.files
                .values()
                .filter(|f| with_diags.contains(f.source.name.as_str()))
                .map(|f| f.source.clone())
                .collect()
        };
        manifest::locate(&mut lower_diags, &sources);
        diags.extend(lower_diags);
        let ruleset = nft::build::build(&ir);
        let skipped = self
            .files
            .values()
            .flat_map(|f| f.parsed.skipped.iter().cloned())
            .collect();
        Output {
            ir,
            ruleset,
            diagnostics: diags,
            notes,
            skipped,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SVC: &str = "apiVersion: v1\nkind: Service\nmetadata: {name: a, namespace: d}\nspec:\n  clusterIP: 10.96.0.1\n  ports: [{port: 80}]\n";
    const BAD: &str = "apiVersion: v1\nkind: Service\nmetadata: {name: b, namespace: d}\nspec:\n  clusterIP: 10.96.0.300\n  ports: [{port: 80}]\n";

    #[test]
    fn bad_files_are_reported_and_the_rest_compiles() {
        let mut s = Session::new(NodeSettings {
            hostname: "n".into(),
            ..Default::default()
        });
        assert!(s.set_file(Source {
            name: "a.yaml".into(),
            text: SVC.into()
        }));
        assert!(
            !s.set_file(Source {
                name: "a.yaml".into(),
                text: SVC.into()
            }),
            "unchanged text is not re-read"
        );
        s.set_file(Source {
            name: "b.yaml".into(),
            text: BAD.into(),
        });
        let out = s.compile();
        assert_eq!(out.ir.families[0].service_ports.len(), 1);
        let e = out
            .diagnostics
            .iter()
            .find(|d| d.is_error())
            .expect("an error for b.yaml");
        assert_eq!((e.file.as_str(), e.line), ("b.yaml", Some(5)));
        s.remove_file("a.yaml");
        assert_eq!(s.compile().ir.families[0].service_ports.len(), 0);
    }
}
