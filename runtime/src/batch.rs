//! A transaction as the kernel receives it: `BATCH_BEGIN` (carrying the generation id it was
//! computed against), the nf_tables messages, `BATCH_END`; laid out in pages that go out as the
//! iovecs of a single `sendmsg`. Each message's seq maps back to the plan step that produced it,
//! so a refusal can name the object.

use crate::nl;
use crate::sys::{Header, Obj, Scratch};

/// Pages are filled up to this size; the kernel sees one contiguous datagram anyway.
const PAGE: usize = 1 << 20;

/// What one message carries, for error reports.
#[derive(Debug, Clone)]
pub struct Sent {
    /// Index of the plan step.
    pub op: usize,
    /// For element messages: (offset of the element's attribute in the message, element index in
    /// the step), so the kernel's extended-ACK offset names the element.
    pub elems: Vec<(u32, usize)>,
}

pub struct Batch {
    pages: Vec<Vec<u8>>,
    scratch: Scratch,
    pub begin_seq: u32,
    next_seq: u32,
    sent: Vec<Sent>,
    /// nf_tables messages (begin/end excluded).
    pub messages: usize,
    finished: bool,
}

impl Batch {
    pub fn new(first_seq: u32, genid: u32) -> Batch {
        let mut page = Vec::with_capacity(PAGE);
        let s = nl::begin(
            &mut page,
            nl::NFNL_MSG_BATCH_BEGIN,
            nl::NLM_F_REQUEST,
            first_seq,
            0,
            nl::NFNL_SUBSYS_NFTABLES,
        );
        // The kernel refuses the whole batch with ERESTART if the ruleset moved past `genid`.
        nl::attr(&mut page, nl::NFNL_BATCH_GENID, &genid.to_be_bytes());
        nl::end(&mut page, s);
        Batch {
            pages: vec![page],
            scratch: Scratch::default(),
            begin_seq: first_seq,
            next_seq: first_seq.wrapping_add(1),
            sent: Vec::new(),
            messages: 0,
            finished: false,
        }
    }

    fn page(&mut self, need: usize) -> &mut Vec<u8> {
        let last = self
            .pages
            .last()
            .map(|p| p.len() + need > PAGE)
            .unwrap_or(true);
        if last {
            self.pages.push(Vec::with_capacity(PAGE.max(need)));
        }
        self.pages.last_mut().unwrap()
    }

    /// Appends `obj` as a message of nf_tables type `msg`; returns its offset-less length.
    pub fn push(
        &mut self,
        obj: &Obj,
        msg: u16,
        family: u16,
        flags: u16,
        op: usize,
        elems: bool,
    ) -> Result<usize, usize> {
        let seq = self.next_seq;
        let mut tmp = std::mem::take(self.page(crate::sys::MAX_MSG + 8));
        let h = Header {
            msg_type: nl::nft_type(msg),
            family,
            flags: flags | nl::NLM_F_REQUEST,
            seq,
        };
        let r = obj.write(&mut self.scratch, &mut tmp, h, elems);
        *self.pages.last_mut().unwrap() = tmp;
        let len = r?;
        self.next_seq = seq.wrapping_add(1);
        self.sent.push(Sent {
            op,
            elems: Vec::new(),
        });
        self.messages += 1;
        Ok(len)
    }

    /// The bytes of the last message pushed (to index its elements).
    pub fn last_msg(&self, len: usize) -> &[u8] {
        let p = self.pages.last().unwrap();
        &p[p.len() - len..]
    }

    pub fn set_last_elems(&mut self, elems: Vec<(u32, usize)>) {
        if let Some(s) = self.sent.last_mut() {
            s.elems = elems;
        }
    }

    /// Closes the batch (BATCH_END asks for an ACK: Linux >= 6.10 sends it after a commit).
    /// Returns the seq of BATCH_END.
    pub fn finish(&mut self, ack_end: bool) -> u32 {
        assert!(!self.finished);
        self.finished = true;
        let end_seq = self.next_seq;
        let page = self.page(32);
        let flags = nl::NLM_F_REQUEST | if ack_end { nl::NLM_F_ACK } else { 0 };
        let s = nl::begin(
            page,
            nl::NFNL_MSG_BATCH_END,
            flags,
            end_seq,
            0,
            nl::NFNL_SUBSYS_NFTABLES,
        );
        nl::end(page, s);
        end_seq
    }

    pub fn pages(&self) -> Vec<&[u8]> {
        self.pages
            .iter()
            .filter(|p| !p.is_empty())
            .map(|p| p.as_slice())
            .collect()
    }

    pub fn bytes(&self) -> usize {
        self.pages.iter().map(|p| p.len()).sum()
    }

    /// The plan step behind the message with sequence number `seq`.
    pub fn sent(&self, seq: u32) -> Option<&Sent> {
        let i = seq.wrapping_sub(self.begin_seq).wrapping_sub(1) as usize;
        self.sent.get(i)
    }
}
