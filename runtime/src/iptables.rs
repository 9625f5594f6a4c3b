//! Applies the iptables backend's rulesets with `iptables-restore --noflush` (atomic per
//! table), in the host's flavour (nft-based or legacy), touching only svcc's `SVCC-*` chains and
//! the jump rules into them.
//!
//! Incremental like kube-proxy's partial restore (KEP-3453): an applier remembers what it
//! wrote; the next apply rewrites only the chains whose rules changed (plus deletions), and
//! sends nothing when nothing changed. The first apply of a process rewrites every svcc
//! chain and deletes stale ones it finds in `iptables-save`.

use std::collections::{BTreeMap, BTreeSet};
use std::io::Write;
use std::process::{Command, Stdio};

use svcc_compiler::iptables::build::PREFIX;
use svcc_compiler::iptables::{IptJump, IptRuleset};
use svcc_compiler::nft::model::Family;

#[derive(Debug, thiserror::Error)]
pub enum IptError {
    #[error("cannot run {cmd}: {source}")]
    Spawn { cmd: String, source: std::io::Error },
    #[error("{cmd} failed ({status}): {stderr}")]
    Failed {
        cmd: String,
        status: String,
        stderr: String,
    },
}

/// Which iptables the host uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flavor {
    /// iptables-nft (the xtables API over nf_tables).
    Nft,
    /// iptables-legacy.
    Legacy,
}

impl Flavor {
    /// The binary for a family and a tool suffix (`""`, `-restore`, `-save`).
    fn bin(self, family: Family, tool: &str) -> String {
        let base = match family {
            Family::Ip => "iptables",
            Family::Ip6 => "ip6tables",
        };
        let fl = match self {
            Flavor::Nft => "nft",
            Flavor::Legacy => "legacy",
        };
        format!("{base}-{fl}{tool}")
    }

    /// Like kube-proxy's iptables wrapper: the flavour that already holds rules wins; nft
    /// when neither does.
    pub fn detect() -> Flavor {
        let lines = |f: Flavor| {
            Command::new(f.bin(Family::Ip, "-save"))
                .stderr(Stdio::null())
                .output()
                .map(|o| {
                    String::from_utf8_lossy(&o.stdout)
                        .lines()
                        .filter(|l| l.starts_with('-'))
                        .count()
                })
                .unwrap_or(0)
        };
        if lines(Flavor::Legacy) > lines(Flavor::Nft) {
            Flavor::Legacy
        } else {
            Flavor::Nft
        }
    }
}

/// What one apply did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct IptReport {
    /// Chains written (flushed and refilled, or created).
    pub chains_written: usize,
    pub chains_deleted: usize,
    /// Jump rules inserted into built-in chains.
    pub jumps_inserted: usize,
    /// restore invocations (0 when nothing changed).
    pub restores: usize,
}

/// Keeps what was last written, per (family, table): chain → rule lines.
#[derive(Debug)]
pub struct IptApplier {
    flavor: Flavor,
    last: BTreeMap<(Family, &'static str), BTreeMap<String, Vec<String>>>,
}

fn run(cmd: &str, args: &[String], input: Option<&str>) -> Result<String, IptError> {
    let mut c = Command::new(cmd);
    c.args(args).stdout(Stdio::piped()).stderr(Stdio::piped());
    if input.is_some() {
        c.stdin(Stdio::piped());
    }
    let full = format!("{cmd} {}", args.join(" "));
    let mut child = c.spawn().map_err(|source| IptError::Spawn {
        cmd: full.clone(),
        source,
    })?;
    if let Some(text) = input {
        let mut stdin = child.stdin.take().expect("piped stdin");
        stdin
            .write_all(text.as_bytes())
            .map_err(|source| IptError::Spawn {
                cmd: full.clone(),
                source,
            })?;
    }
    let out = child.wait_with_output().map_err(|source| IptError::Spawn {
        cmd: full.clone(),
        source,
    })?;
    if !out.status.success() {
        return Err(IptError::Failed {
            cmd: full,
            status: out.status.to_string(),
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        });
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// svcc's chains present in one table now (from `iptables-save -t TABLE`).
fn existing_chains(
    flavor: Flavor,
    family: Family,
    table: &str,
) -> Result<BTreeSet<String>, IptError> {
    let out = run(
        &flavor.bin(family, "-save"),
        &["-t".into(), table.into()],
        None,
    )?;
    Ok(out
        .lines()
        .filter_map(|l| l.strip_prefix(':'))
        .filter_map(|l| l.split_whitespace().next())
        .filter(|c| c.starts_with(PREFIX))
        .map(String::from)
        .collect())
}

/// Splits restore text into (table → chain → rule lines).
fn by_chain(rs: &IptRuleset) -> BTreeMap<&'static str, BTreeMap<String, Vec<String>>> {
    let text = rs.restore_text();
    let mut out: BTreeMap<&'static str, BTreeMap<String, Vec<String>>> = BTreeMap::new();
    let mut table: Option<&'static str> = None;
    for line in text.lines() {
        if let Some(t) = line.strip_prefix('*') {
            table = rs.tables.iter().map(|x| x.name).find(|n| *n == t);
        } else if let (Some(t), Some(c)) = (table, line.strip_prefix(':')) {
            let name = c.split_whitespace().next().unwrap_or_default().to_string();
            out.entry(t).or_default().entry(name).or_default();
        } else if let (Some(t), Some(r)) = (table, line.strip_prefix("-A ")) {
            let chain = r.split_whitespace().next().unwrap_or_default().to_string();
            out.entry(t)
                .or_default()
                .entry(chain)
                .or_default()
                .push(line.to_string());
        }
    }
    out
}

impl IptApplier {
    pub fn new(flavor: Flavor) -> IptApplier {
        IptApplier {
            flavor,
            last: BTreeMap::new(),
        }
    }

    pub fn flavor(&self) -> Flavor {
        self.flavor
    }

    /// Brings the kernel to `rulesets`: one restore per (family, table) that changed, then the
    /// jump rules (checked with `-C`, inserted with `-I` when missing).
    pub fn apply(&mut self, rulesets: &[IptRuleset]) -> Result<IptReport, IptError> {
        let mut rep = IptReport::default();
        for rs in rulesets {
            let wanted = by_chain(rs);
            for (table, chains) in &wanted {
                let key = (rs.family, *table);
                let (changed, stale): (Vec<&String>, Vec<String>) = match self.last.get(&key) {
                    Some(prev) => (
                        chains
                            .iter()
                            .filter(|(c, r)| prev.get(*c) != Some(*r))
                            .map(|(c, _)| c)
                            .collect(),
                        prev.keys()
                            .filter(|c| !chains.contains_key(*c))
                            .cloned()
                            .collect(),
                    ),
                    None => (
                        chains.keys().collect(),
                        existing_chains(self.flavor, rs.family, table)?
                            .into_iter()
                            .filter(|c| !chains.contains_key(c))
                            .collect(),
                    ),
                };
                if changed.is_empty() && stale.is_empty() {
                    continue;
                }
                let mut input = format!("*{table}\n");
                for c in changed
                    .iter()
                    .map(|c| c.as_str())
                    .chain(stale.iter().map(|c| c.as_str()))
                {
                    input.push_str(&format!(":{c} - [0:0]\n"));
                }
                for c in &stale {
                    input.push_str(&format!("-X {c}\n"));
                }
                for c in &changed {
                    for r in &chains[*c] {
                        input.push_str(r);
                        input.push('\n');
                    }
                }
                input.push_str("COMMIT\n");
                run(
                    &self.flavor.bin(rs.family, "-restore"),
                    &["--noflush".into()],
                    Some(&input),
                )?;
                rep.restores += 1;
                rep.chains_written += changed.len();
                rep.chains_deleted += stale.len();
                self.last.insert(key, chains.clone());
            }
            rep.jumps_inserted += self.ensure_jumps(rs)?;
        }
        Ok(rep)
    }

    fn ensure_jumps(&self, rs: &IptRuleset) -> Result<usize, IptError> {
        let mut n = 0;
        // Inserted at the top in reverse, so they end up in the declared order.
        for j in rs.jumps.iter().rev() {
            if self.jump(rs, j, "-C").is_ok() {
                continue;
            }
            self.jump(rs, j, "-I")?;
            n += 1;
        }
        Ok(n)
    }

    /// `iptables -w -t TABLE <op> CHAIN <jump rule>` (op: -C check, -I insert, -D delete).
    fn jump(&self, rs: &IptRuleset, j: &IptJump, op: &str) -> Result<String, IptError> {
        let mut args = vec![
            "-w".to_string(),
            "-t".into(),
            j.table.into(),
            op.into(),
            j.chain.into(),
        ];
        args.extend(rs.jump_args(j));
        run(&self.flavor.bin(rs.family, ""), &args, None)
    }

    /// Removes svcc's jump rules and chains, and nothing else.
    pub fn cleanup(&mut self, rulesets_for_jumps: &[IptRuleset]) -> Result<IptReport, IptError> {
        let mut rep = IptReport::default();
        for rs in rulesets_for_jumps {
            for j in &rs.jumps {
                // Delete every copy (someone may have inserted one twice).
                while self.jump(rs, j, "-D").is_ok() {}
            }
            for t in ["nat", "filter"] {
                let chains = existing_chains(self.flavor, rs.family, t)?;
                if chains.is_empty() {
                    continue;
                }
                let mut input = format!("*{t}\n");
                for c in &chains {
                    input.push_str(&format!(":{c} - [0:0]\n"));
                }
                for c in &chains {
                    input.push_str(&format!("-X {c}\n"));
                }
                input.push_str("COMMIT\n");
                run(
                    &self.flavor.bin(rs.family, "-restore"),
                    &["--noflush".into()],
                    Some(&input),
                )?;
                rep.restores += 1;
                rep.chains_deleted += chains.len();
            }
        }
        self.last.clear();
        Ok(rep)
    }
}
