//! The applier: plans a transaction (full replace or difference), encodes it as one batch,
//! sends it guarded by the generation id it was planned against, retries when the ruleset moved
//! meanwhile, and remembers what the kernel now holds.

use std::borrow::Cow;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::batch::Batch;
use crate::conn::{Conn, Monitor, Outcome};
use crate::encode::{family_code, Enc, UDATA_TABLE_SVCC};
use crate::error::{ApplyError, Refusal};
use crate::model::*;
use crate::nl;
use crate::plan::{self, Changes, Op, Plan, MISSING_CHAIN};
use svcc_compiler::nft::delta::Delta;

/// The only tables svcc creates, changes or deletes.
pub const OWNED: [(Family, &str); 2] = [(Family::Ip, "svcc"), (Family::Ip6, "svcc")];

/// Marker in a table's user data: "svcc" + version + a nonce drawn at each full replace. The
/// applier that made the table knows the nonce; any other writer (a fresh `svcc apply`, `nft
/// -f`) makes a table without it, so a matching nonce proves the table is the one this applier
/// has been keeping up to date.
const MARKER_MAGIC: &[u8; 5] = b"svcc\x01";

/// Called just before a batch is sent, with the attempt number (0 = first): a test hook to
/// change the ruleset behind the applier's back.
pub type BeforeCommit = Arc<dyn Fn(u32) + Send + Sync>;

#[derive(Clone)]
pub struct ApplyOptions {
    /// Plan and encode, send nothing; the report holds the script.
    pub dry_run: bool,
    /// Fill `ApplyReport::script` (always on for `dry_run`).
    pub script: bool,
    /// How many times a batch refused for a stale generation id is recomputed and re-sent.
    pub max_retries: u32,
    /// Replace svcc's tables even if a difference would do.
    pub force_full: bool,
    /// Test hook: add a rule the kernel refuses (a jump to a missing chain) to the batch.
    pub inject_invalid: bool,
    /// Test hook, see [`BeforeCommit`].
    pub before_commit: Option<BeforeCommit>,
}

impl Default for ApplyOptions {
    fn default() -> Self {
        ApplyOptions {
            dry_run: false,
            script: false,
            max_retries: 5,
            force_full: false,
            inject_invalid: false,
            before_commit: None,
        }
    }
}

impl std::fmt::Debug for ApplyOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ApplyOptions")
            .field("dry_run", &self.dry_run)
            .field("script", &self.script)
            .field("max_retries", &self.max_retries)
            .field("force_full", &self.force_full)
            .field("inject_invalid", &self.inject_invalid)
            .field("before_commit", &self.before_commit.is_some())
            .finish()
    }
}

#[derive(Debug, Clone, Default)]
pub struct ApplyReport {
    /// A full replace of svcc's tables (else a difference).
    pub full: bool,
    /// Why a full replace, or "incremental", or "no change".
    pub reason: String,
    /// nf_tables messages in the batch (batch begin/end not counted); 0 = nothing sent.
    pub messages: usize,
    /// Bytes of the batch as sent.
    pub bytes: usize,
    /// The generation id the batch was computed against (the ruleset's is this + 1 after it).
    pub generation: u32,
    /// Batches refused for a stale generation id (or an unreadable answer) and recomputed.
    pub retries: u32,
    /// Whether a batch went to the kernel and was committed.
    pub committed: bool,
    pub changes: Changes,
    /// The transaction as an nft script (with `dry_run` or `script`).
    pub script: String,
    /// Planning + encoding time, and time from sendmsg to the kernel's answer.
    pub encode_time: Duration,
    pub kernel_time: Duration,
}

/// What the kernel holds, as last applied by this applier.
struct Applied {
    ruleset: Ruleset,
    /// Deltas committed since `ruleset` was applied, folded into it when a whole model is
    /// next compared with it.
    pending: Vec<Delta>,
    /// Marker (with nonce) of each table of `ruleset`, in order.
    markers: Vec<Vec<u8>>,
    /// The generation right after our commit.
    genid: u32,
    /// No commit by anyone else can have touched svcc's tables since ours unseen: the event
    /// monitor was listening throughout and the post-commit generation was ours + 1.
    clean: bool,
}

pub struct Applier {
    conn: Conn,
    /// nf_tables events; None if it could not be opened (then only an unchanged generation
    /// proves the kernel still holds what we applied).
    monitor: Option<Monitor>,
    applied: Option<Applied>,
}

/// Deltas kept aside before they are folded into the applied model (bounds their memory; a
/// fold costs one pass over the model).
const MAX_PENDING: usize = 256;

/// A table svcc owns, and the marker the kernel's copy carries (if any).
type TableName = (Family, &'static str);
type KernelMarker = (TableName, Option<Vec<u8>>);

fn new_marker() -> Vec<u8> {
    use std::hash::{BuildHasher, Hasher};
    // RandomState is seeded from the OS's random source; two of them give 128 random bits.
    let mut m = MARKER_MAGIC.to_vec();
    for _ in 0..2 {
        let mut h = std::collections::hash_map::RandomState::new().build_hasher();
        h.write_u128(Instant::now().elapsed().as_nanos());
        m.extend_from_slice(&h.finish().to_be_bytes());
    }
    m
}

/// svcc's marker in a table's user data, if any.
fn marker_of(udata: &[u8]) -> Option<Vec<u8>> {
    nl::udata(udata)
        .find(|(t, _)| *t == UDATA_TABLE_SVCC)
        .map(|(_, v)| v.to_vec())
}

impl Applier {
    /// Opens a netfilter netlink socket in the caller's current network namespace.
    pub fn new() -> Result<Self, ApplyError> {
        Ok(Applier {
            conn: Conn::open().map_err(ApplyError::io("open socket"))?,
            monitor: Monitor::open().ok(),
            applied: None,
        })
    }

    /// Forgets what this applier applied: the next apply is a full replace.
    pub fn forget(&mut self) {
        self.applied = None;
    }

    /// Makes the kernel hold `desired` in svcc's tables (and no other svcc table), in one
    /// transaction: the difference from what this applier last applied when the kernel provably
    /// still holds it, else a full replace.
    pub fn apply(
        &mut self,
        desired: &Ruleset,
        opts: &ApplyOptions,
    ) -> Result<ApplyReport, ApplyError> {
        self.apply_cow(Cow::Borrowed(desired), opts)
    }

    /// [`apply`](Self::apply) taking the model by value: the applier keeps it as the state it
    /// diffs against next time, without copying it (a one-shot `svcc apply` or `svcc run`).
    pub fn apply_owned(
        &mut self,
        desired: Ruleset,
        opts: &ApplyOptions,
    ) -> Result<ApplyReport, ApplyError> {
        self.apply_cow(Cow::Owned(desired), opts)
    }

    fn apply_cow(
        &mut self,
        desired: Cow<'_, Ruleset>,
        opts: &ApplyOptions,
    ) -> Result<ApplyReport, ApplyError> {
        self.fold_pending();
        for t in &desired.tables {
            if !OWNED.contains(&(t.family, t.name.as_str())) {
                return Err(ApplyError::NotOwned(format!(
                    "{} {}",
                    t.family.keyword(),
                    t.name
                )));
            }
        }
        let mut redo: Option<&str> = None;
        let mut retries = 0;
        loop {
            let t0 = Instant::now();
            let (genid, present, trusted) = self.survey(opts)?;
            let markers: Vec<Vec<u8>>;
            let plan = match (&self.applied, trusted) {
                (Some(a), true) => match plan::incremental(&a.ruleset, &desired) {
                    Ok(p) => {
                        markers = a.markers.clone();
                        p
                    }
                    Err(why) => {
                        markers = desired.tables.iter().map(|_| new_marker()).collect();
                        plan::full(&desired, &markers, &present, format!("full replace: {why}"))
                    }
                },
                (applied, _) => {
                    markers = desired.tables.iter().map(|_| new_marker()).collect();
                    let why = match (applied, opts.force_full) {
                        (_, true) => "full replace: forced",
                        (None, _) if redo.is_some() => redo.unwrap_or_default(),
                        (None, _) => "full replace: first apply of this applier",
                        (Some(a), _) if !a.clean && a.genid != genid => {
                            "full replace: svcc's tables may have been changed by another program"
                        }
                        (Some(_), _) => "full replace: the kernel's svcc tables are not the ones this applier made",
                    };
                    plan::full(&desired, &markers, &present, why.into())
                }
            };
            let mut plan = plan;
            if opts.inject_invalid {
                inject(&mut plan, &desired);
            }
            let mut report = planned_report(&plan, genid, retries, opts);
            if plan.ops.is_empty() {
                report.encode_time = t0.elapsed();
                return Ok(report);
            }
            let mut batch = Batch::new(self.conn.next_seq(1 << 24), genid);
            encode(&mut batch, &plan, &desired)?;
            let sent = send(
                &mut self.conn,
                &mut self.monitor,
                &mut batch,
                &mut report,
                t0,
                opts,
                retries,
            )?;
            let Some((outcome, after)) = sent else {
                return Ok(report);
            };
            let plan_full = plan.full;
            match outcome {
                Outcome::Committed => {
                    report.committed = true;
                    // Events queued up to now: commits before ours (our diff assumed they left
                    // svcc's tables alone) or after it. Either way the next apply must not trust
                    // a difference; if ours was one, redo it as a full replace right away.
                    let late = touched(&mut self.monitor)?;
                    if late && !plan_full {
                        self.applied = None;
                        redo = Some("full replace: svcc's tables were changed by another program during the commit");
                    } else {
                        let clean =
                            self.monitor.is_some() && !late && after == Some(genid.wrapping_add(1));
                        drop(plan);
                        self.applied = Some(Applied {
                            ruleset: desired.into_owned(),
                            pending: Vec::new(),
                            markers,
                            genid: after.unwrap_or(genid.wrapping_add(1)),
                            clean,
                        });
                        return Ok(report);
                    }
                }
                Outcome::Stale => {}
                Outcome::Unknown => {
                    // Committed or not, we cannot tell: reopen (drop the unread answer) and
                    // make the next attempt a full replace, which is right either way.
                    self.applied = None;
                    self.conn = Conn::open().map_err(ApplyError::io("reopen socket"))?;
                }
                Outcome::Refused(acks) => {
                    return Err(ApplyError::Refused(
                        acks.iter().map(|a| refusal(&batch, &plan, a)).collect(),
                    ));
                }
            }
            retries += 1;
            if retries > opts.max_retries {
                return Err(ApplyError::TooManyRetries(retries - 1));
            }
        }
    }

    /// Sends a delta made by the compile session
    /// ([`Session::compile_delta`](svcc_compiler::session::Session::compile_delta)) against the
    /// model this applier last applied, in one guarded transaction. `Ok(None)`: not possible
    /// now (nothing applied yet, a full replace forced, svcc's tables may have been changed by
    /// another program, or the delta does not fit): apply a whole model instead.
    pub fn apply_delta(
        &mut self,
        delta: &Delta,
        opts: &ApplyOptions,
    ) -> Result<Option<ApplyReport>, ApplyError> {
        let mut retries = 0;
        loop {
            let t0 = Instant::now();
            if self.applied.is_none() || opts.force_full || opts.inject_invalid {
                return Ok(None);
            }
            let (genid, _, trusted) = self.survey(opts)?;
            if !trusted {
                return Ok(None);
            }
            let a = self.applied.as_ref().expect("applied");
            let Ok(plan) = plan::from_delta(&a.ruleset, delta) else {
                return Ok(None);
            };
            let mut report = planned_report(&plan, genid, retries, opts);
            if plan.ops.is_empty() {
                report.encode_time = t0.elapsed();
                return Ok(Some(report));
            }
            let mut batch = Batch::new(self.conn.next_seq(1 << 24), genid);
            encode(&mut batch, &plan, &a.ruleset)?;
            let sent = send(
                &mut self.conn,
                &mut self.monitor,
                &mut batch,
                &mut report,
                t0,
                opts,
                retries,
            )?;
            let Some((outcome, after)) = sent else {
                return Ok(Some(report));
            };
            match outcome {
                Outcome::Committed => {
                    report.committed = true;
                    let late = touched(&mut self.monitor)?;
                    drop(plan);
                    if late {
                        // Someone else changed svcc's tables around our commit: only a full
                        // replace is right now.
                        self.applied = None;
                        return Ok(None);
                    }
                    let clean = self.monitor.is_some() && after == Some(genid.wrapping_add(1));
                    let a = self.applied.as_mut().expect("applied");
                    a.pending.push(delta.clone());
                    a.genid = after.unwrap_or(genid.wrapping_add(1));
                    a.clean = clean;
                    if a.pending.len() >= MAX_PENDING {
                        self.fold_pending();
                    }
                    return Ok(Some(report));
                }
                Outcome::Stale => {}
                Outcome::Unknown => {
                    self.applied = None;
                    self.conn = Conn::open().map_err(ApplyError::io("reopen socket"))?;
                    return Ok(None);
                }
                Outcome::Refused(acks) => {
                    return Err(ApplyError::Refused(
                        acks.iter().map(|a| refusal(&batch, &plan, a)).collect(),
                    ));
                }
            }
            retries += 1;
            if retries > opts.max_retries {
                return Err(ApplyError::TooManyRetries(retries - 1));
            }
        }
    }

    /// Folds the deltas applied since the last whole model into it (the next whole-model
    /// difference needs it); a delta that does not fit forgets the model (full replace next).
    fn fold_pending(&mut self) {
        let Some(a) = self.applied.as_mut() else {
            return;
        };
        for d in std::mem::take(&mut a.pending) {
            if let Err(e) = a.ruleset.apply_delta(&d) {
                tracing::warn!(target: "svcc::apply", error = %e.0, "applied model out of step; next apply replaces the tables");
                self.applied = None;
                return;
            }
        }
    }

    /// Before a transaction: the generation it is planned against, which owned tables exist,
    /// and whether the kernel provably holds what this applier last applied (commits by others
    /// since ours touching svcc's tables, seen by the monitor, make it forget the difference).
    fn survey(&mut self, opts: &ApplyOptions) -> Result<(u32, Vec<TableName>, bool), ApplyError> {
        let genid = self
            .conn
            .genid()
            .map_err(ApplyError::io("get generation id"))?;
        if touched(&mut self.monitor)? {
            if let Some(a) = self.applied.as_mut() {
                a.clean = false;
            }
        }
        let mut present = Vec::new();
        let mut kernel_markers = Vec::new();
        for (fam, name) in OWNED {
            if let Some(ud) = self
                .conn
                .table_udata(family_code(fam), name)
                .map_err(ApplyError::io("get table"))?
            {
                present.push((fam, name));
                kernel_markers.push(((fam, name), marker_of(&ud)));
            }
        }
        let trusted = self.trusted(genid, &kernel_markers, opts);
        Ok((genid, present, trusted))
    }

    /// Whether the kernel provably holds what this applier last applied.
    fn trusted(&self, genid: u32, kernel_markers: &[KernelMarker], opts: &ApplyOptions) -> bool {
        match &self.applied {
            // With the monitor: no unseen change since our commit; without: no commit at all.
            Some(a)
                if !opts.force_full
                    && (a.clean || (self.monitor.is_none() && a.genid == genid)) =>
            {
                let ours: Vec<_> = a
                    .ruleset
                    .tables
                    .iter()
                    .zip(&a.markers)
                    .map(|(t, m)| ((t.family, t.name.as_str()), Some(m.clone())))
                    .collect();
                // Same tables, each with the nonce we gave it (checked even when the
                // generation is unchanged: it costs two small round trips).
                ours == kernel_markers
            }
            _ => false,
        }
    }

    /// Deletes the tables `ip svcc` and `ip6 svcc` if present, in one guarded transaction;
    /// touches nothing else.
    pub fn cleanup(&mut self) -> Result<ApplyReport, ApplyError> {
        let mut retries = 0;
        loop {
            let t0 = Instant::now();
            let genid = self
                .conn
                .genid()
                .map_err(ApplyError::io("get generation id"))?;
            let mut ops = Vec::new();
            for (fam, name) in OWNED {
                if self
                    .conn
                    .table_udata(family_code(fam), name)
                    .map_err(ApplyError::io("get table"))?
                    .is_some()
                {
                    ops.push(Op::DelTable { fam, name });
                }
            }
            let plan = Plan {
                ops,
                full: true,
                reason: "cleanup".into(),
            };
            let mut report = ApplyReport {
                full: true,
                reason: "cleanup".into(),
                generation: genid,
                retries,
                changes: plan.changes(),
                script: plan.script(),
                ..Default::default()
            };
            if plan.ops.is_empty() {
                self.applied = None;
                return Ok(report);
            }
            let mut batch = Batch::new(self.conn.next_seq(1 << 24), genid);
            encode(&mut batch, &plan, &Ruleset::default())?;
            report.messages = batch.messages;
            report.encode_time = t0.elapsed();
            let t1 = Instant::now();
            let (outcome, _) = commit(&mut self.conn, &mut self.monitor, &mut batch)?;
            report.kernel_time = t1.elapsed();
            report.bytes = batch.bytes();
            self.applied = None;
            match outcome {
                Outcome::Committed => {
                    report.committed = true;
                    return Ok(report);
                }
                Outcome::Stale => {}
                Outcome::Unknown => {
                    self.conn = Conn::open().map_err(ApplyError::io("reopen socket"))?
                }
                Outcome::Refused(acks) => {
                    return Err(ApplyError::Refused(
                        acks.iter().map(|a| refusal(&batch, &plan, a)).collect(),
                    ));
                }
            }
            retries += 1;
            if retries > 5 {
                return Err(ApplyError::TooManyRetries(retries - 1));
            }
        }
    }
}

/// Sends an encoded batch (unless a dry run: then None) and fills the report's counts and
/// times; `t0` is when planning began.
fn send(
    conn: &mut Conn,
    monitor: &mut Option<Monitor>,
    batch: &mut Batch,
    report: &mut ApplyReport,
    t0: Instant,
    opts: &ApplyOptions,
    retries: u32,
) -> Result<Option<(Outcome, Option<u32>)>, ApplyError> {
    report.messages = batch.messages;
    report.bytes = batch.bytes();
    report.encode_time = t0.elapsed();
    if opts.dry_run {
        return Ok(None);
    }
    if let Some(h) = &opts.before_commit {
        h(retries);
    }
    let t1 = Instant::now();
    let sent = commit(conn, monitor, batch)?;
    report.kernel_time = t1.elapsed();
    report.bytes = batch.bytes();
    Ok(Some(sent))
}

/// The report of a planned transaction, before it is encoded and sent.
fn planned_report(plan: &Plan, genid: u32, retries: u32, opts: &ApplyOptions) -> ApplyReport {
    ApplyReport {
        full: plan.full,
        reason: if plan.ops.is_empty() {
            "no change".into()
        } else {
            plan.reason.clone()
        },
        generation: genid,
        retries,
        changes: plan.changes(),
        script: if opts.dry_run || opts.script {
            plan.script()
        } else {
            String::new()
        },
        ..Default::default()
    }
}

/// Whether events of others' commits touching svcc's tables were seen (or could have been
/// missed) since the last drain.
fn touched(monitor: &mut Option<Monitor>) -> Result<bool, ApplyError> {
    let watched: Vec<(u8, &str)> = OWNED
        .iter()
        .map(|(f, n)| (family_code(*f) as u8, *n))
        .collect();
    match monitor.as_mut() {
        Some(m) => m
            .drain(&watched)
            .map_err(ApplyError::io("read nf_tables events")),
        None => Ok(true),
    }
}

/// Sends the batch with the monitor deaf to our own commit's events.
fn commit(
    conn: &mut Conn,
    monitor: &mut Option<Monitor>,
    batch: &mut Batch,
) -> Result<(Outcome, Option<u32>), ApplyError> {
    let mut rejoin_failed = false;
    if let Some(m) = monitor.as_mut() {
        m.leave().map_err(ApplyError::io("leave event group"))?;
    }
    let r = conn.commit(batch, || {
        if let Some(m) = monitor.as_mut() {
            rejoin_failed = m.join().is_err();
        }
    });
    if rejoin_failed {
        *monitor = None;
    }
    r.map_err(ApplyError::io("send batch"))
}

/// Test hook: a rule jumping to a chain that does not exist, in the first chain of the first table.
fn inject<'m>(plan: &mut Plan<'m>, desired: &'m Ruleset) {
    let Some(t) = desired.tables.first() else {
        return;
    };
    let Some(c) = t.chains.first() else { return };
    let rule = Rule::new()
        .v(Verdict::Jump(MISSING_CHAIN.into()))
        .comment("svcc test hook: invalid object");
    plan.ops.push(Op::Invalid {
        fam: t.family,
        table: &t.name,
        chain: &c.name,
        rule: Box::new(rule),
    });
}

/// Encodes the plan's steps, in order, into the batch.
/// Sets created in the batch so far (name -> id) and the next id, per table.
/// Also the table's interval sets (see `Enc::interval`).
struct SetIds(HashMap<String, u32>, u32, std::collections::HashSet<String>);

fn encode(batch: &mut Batch, plan: &Plan, desired: &Ruleset) -> Result<(), ApplyError> {
    // Per table: the sets created in this batch (name -> id), and the next id.
    let mut ids: HashMap<(Family, &str), SetIds> = HashMap::new();
    // Only rules look up sets (an endpoint change has none: no walk over thousands of sets).
    let has_rules = plan
        .ops
        .iter()
        .any(|o| matches!(o, Op::AddRule { .. } | Op::Invalid { .. }));
    for (i, op) in plan.ops.iter().enumerate() {
        let (fam, table) = op_table(op);
        let st = ids.entry((fam, table)).or_insert_with(|| {
            if !has_rules {
                return SetIds(HashMap::new(), 1, Default::default());
            }
            let interval = desired
                .tables
                .iter()
                .filter(|t| t.family == fam && t.name == table)
                .flat_map(|t| &t.sets)
                .filter(|s| s.flags.interval)
                .map(|s| s.name.clone())
                .collect();
            SetIds(HashMap::new(), 1, interval)
        });
        let mut enc = Enc::new(batch, fam, table).map_err(|r| invalid(op, r))?;
        enc.new_sets = std::mem::take(&mut st.0);
        enc.next_set_id = st.1;
        enc.interval = std::mem::take(&mut st.2);
        let r = match op {
            Op::EnsureTable { .. } => enc.ensure_table(i),
            Op::DelTable { .. } => {
                enc.new_sets.clear();
                enc.del_table(i)
            }
            Op::AddTable { table, marker } => enc.add_table(table, marker, i),
            Op::AddChain { chain, .. } => enc.add_chain(chain, i),
            Op::FlushChain { chain, .. } => enc.flush_chain(&chain.name, i),
            Op::DelChain { chain, .. } => enc.del_chain(&chain.name, i),
            Op::AddSet { set, .. } => enc.add_set(set, i),
            Op::AddElems { set, elems, .. } => enc.elements(set, elems, false, i),
            Op::DelElems { set, elems, .. } => enc.elements(set, elems, true, i),
            Op::AddRule { chain, rule, .. } => enc.add_rule(chain, rule, i),
            Op::Invalid { chain, rule, .. } => enc.add_rule(chain, rule, i),
        };
        st.0 = std::mem::take(&mut enc.new_sets);
        st.1 = enc.next_set_id;
        st.2 = std::mem::take(&mut enc.interval);
        r.map_err(|r| invalid(op, r))?;
    }
    Ok(())
}

fn op_table<'a>(op: &'a Op) -> (Family, &'a str) {
    match op {
        Op::EnsureTable { fam, name } | Op::DelTable { fam, name } => (*fam, name),
        Op::AddTable { table, .. } => (table.family, &table.name),
        Op::AddChain { fam, table, .. }
        | Op::FlushChain { fam, table, .. }
        | Op::DelChain { fam, table, .. }
        | Op::AddSet { fam, table, .. }
        | Op::AddElems { fam, table, .. }
        | Op::DelElems { fam, table, .. }
        | Op::AddRule { fam, table, .. }
        | Op::Invalid { fam, table, .. } => (*fam, table),
    }
}

fn invalid(op: &Op, reason: String) -> ApplyError {
    ApplyError::Invalid {
        object: op.describe(),
        reason,
    }
}

/// Maps a kernel error back to the plan step (and element) that caused it.
fn refusal(batch: &Batch, plan: &Plan, ack: &nl::Ack) -> Refusal {
    let mut reason = std::io::Error::from_raw_os_error(ack.errno).to_string();
    if let Some(m) = &ack.msg {
        reason.push_str(&format!(" ({m})"));
    }
    if ack.seq == batch.begin_seq {
        return Refusal {
            object: "the transaction as a whole (at commit)".into(),
            comment: None,
            element: None,
            errno: ack.errno,
            reason,
        };
    }
    match batch
        .sent(ack.seq)
        .and_then(|s| plan.ops.get(s.op).map(|op| (s, op)))
    {
        Some((sent, op)) => {
            let element = ack.offset.and_then(|off| {
                // The element whose attribute starts at or before the offset, closest to it.
                sent.elems
                    .iter()
                    .rev()
                    .find(|(o, _)| *o <= off)
                    .and_then(|(_, i)| op.element(*i))
            });
            Refusal {
                object: op.describe(),
                comment: op.comment().map(str::to_string),
                element,
                errno: ack.errno,
                reason,
            }
        }
        None => Refusal {
            object: format!("message seq {} (unknown)", ack.seq),
            comment: None,
            element: None,
            errno: ack.errno,
            reason,
        },
    }
}
