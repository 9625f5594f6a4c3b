//! Every `unsafe` line of svcc-runtime lives in this module.
//!
//! # Safety contract
//!
//! 1. **libnftnl objects.** [`Obj`], [`Expr`] and [`Elem`] each own exactly one pointer returned by
//!    the matching `nftnl_*_alloc` (never null: null aborts, as libstd does on OOM). Ownership moves
//!    into libnftnl only through [`Obj::add_expr`] / [`Obj::add_elem`], which consume the Rust
//!    value (`mem::forget`) so it is freed once, by the rule or set that now holds it. Setters copy
//!    their arguments (libnftnl duplicates strings and data), so no Rust borrow outlives a call.
//!    Strings are passed as `CString`; a name with an interior NUL is rejected before it gets here
//!    ([`cstr`] returns an error the caller must handle).
//! 2. **Message building.** libnftnl writes messages with `mnl_attr_put*`, which does not check
//!    the buffer's end. [`Obj::write`] therefore builds into a zeroed scratch buffer of
//!    `SCRATCH` bytes — twice the largest nf_tables message (`nft_nlmsg_maxsize()`, 64 KiB +
//!    one page) — and callers keep every message under [`MAX_MSG`]: names are at most 255 bytes
//!    ([`cstr`]), comments at most 128 (nft's limit, applied by `encode::comment_text`), a rule
//!    has a bounded number of expressions (checked in `encode.rs`), element lists are chunked by
//!    a conservative size estimate. The written length is checked after the fact (an error, not
//!    a truncated message). Only the bytes the header says were written are copied out, and the
//!    scratch is re-zeroed over that length.
//! 3. **Sockets.** [`send_iov`] passes `sendmsg(2)` iovecs that borrow the caller's slices for the
//!    duration of the call only. [`set_int_opt`] passes a pointer to a local `c_int`. The fd
//!    belongs to the `mnl::Socket` the caller holds (it outlives every call).
//!
//! Everything else in the crate is safe Rust over plain byte buffers.

use std::ffi::{c_void, CString};
use std::io;
use std::os::fd::RawFd;
use std::ptr::NonNull;

use nftnl::nftnl_sys as sys;

/// Largest nf_tables message we ever write (the kernel's limit is a 16-bit attribute length).
pub const MAX_MSG: usize = 65_535;
/// Scratch size: generous headroom over [`MAX_MSG`], see the contract above.
const SCRATCH: usize = 2 * (MAX_MSG + 4096);

/// A name for libnftnl, or an error: NUL bytes, or longer than the kernel's 255 (which also
/// bounds every message that carries names, contract 2).
pub fn cstr(s: &str) -> Result<CString, String> {
    if s.len() > 255 {
        return Err(format!(
            "name of {} bytes (the kernel takes at most 255)",
            s.len()
        ));
    }
    CString::new(s).map_err(|_| format!("{s:?} contains a NUL byte"))
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Kind {
    Table,
    Chain,
    Rule,
    Set,
}

/// The netlink header fields of a message.
#[derive(Clone, Copy)]
pub struct Header {
    pub msg_type: u16,
    pub family: u16,
    pub flags: u16,
    pub seq: u32,
}

/// One libnftnl table, chain, rule or set.
pub struct Obj {
    kind: Kind,
    ptr: NonNull<c_void>,
}

fn nonnull<T>(p: *mut T) -> NonNull<c_void> {
    match NonNull::new(p as *mut c_void) {
        Some(p) => p,
        None => std::process::abort(),
    }
}

impl Obj {
    pub fn new(kind: Kind) -> Obj {
        // SAFETY: plain allocators, no arguments; null aborts (contract 1).
        let ptr = unsafe {
            match kind {
                Kind::Table => nonnull(sys::nftnl_table_alloc()),
                Kind::Chain => nonnull(sys::nftnl_chain_alloc()),
                Kind::Rule => nonnull(sys::nftnl_rule_alloc()),
                Kind::Set => nonnull(sys::nftnl_set_alloc()),
            }
        };
        Obj { kind, ptr }
    }

    pub fn str(&mut self, attr: u32, s: &CString) {
        let p = self.ptr.as_ptr();
        let a = attr as u16;
        // SAFETY: p is a live object of `kind` (contract 1); libnftnl copies the string.
        unsafe {
            match self.kind {
                Kind::Table => {
                    sys::nftnl_table_set_str(p as _, a, s.as_ptr());
                }
                Kind::Chain => {
                    sys::nftnl_chain_set_str(p as _, a, s.as_ptr());
                }
                Kind::Rule => {
                    sys::nftnl_rule_set_str(p as _, a, s.as_ptr());
                }
                Kind::Set => {
                    sys::nftnl_set_set_str(p as _, a, s.as_ptr());
                }
            }
        }
    }

    pub fn u32(&mut self, attr: u32, v: u32) {
        let p = self.ptr.as_ptr();
        let a = attr as u16;
        // SAFETY: as in `str`; integers are passed by value.
        unsafe {
            match self.kind {
                Kind::Table => sys::nftnl_table_set_u32(p as _, a, v),
                Kind::Chain => sys::nftnl_chain_set_u32(p as _, a, v),
                Kind::Rule => sys::nftnl_rule_set_u32(p as _, a, v),
                Kind::Set => sys::nftnl_set_set_u32(p as _, a, v),
            }
        }
    }

    pub fn i32(&mut self, attr: u32, v: i32) {
        assert_eq!(
            self.kind,
            Kind::Chain,
            "only chains take a signed attribute (priority)"
        );
        // SAFETY: as in `str`.
        unsafe { sys::nftnl_chain_set_s32(self.ptr.as_ptr() as _, attr as u16, v) }
    }

    pub fn u64(&mut self, attr: u32, v: u64) {
        let p = self.ptr.as_ptr();
        let a = attr as u16;
        // SAFETY: as in `str`.
        unsafe {
            match self.kind {
                Kind::Table => sys::nftnl_table_set_u64(p as _, a, v),
                Kind::Chain => sys::nftnl_chain_set_u64(p as _, a, v),
                Kind::Rule => sys::nftnl_rule_set_u64(p as _, a, v),
                Kind::Set => sys::nftnl_set_set_u64(p as _, a, v),
            }
        }
    }

    pub fn bytes(&mut self, attr: u32, d: &[u8]) {
        let p = self.ptr.as_ptr();
        let a = attr as u16;
        let (dp, dl) = (d.as_ptr() as *const c_void, d.len() as u32);
        // SAFETY: as in `str`; libnftnl copies `dl` bytes from `dp`, which borrow `d`.
        unsafe {
            match self.kind {
                Kind::Table => {
                    sys::nftnl_table_set_data(p as _, a, dp, dl);
                }
                Kind::Chain => {
                    sys::nftnl_chain_set_data(p as _, a, dp, dl);
                }
                Kind::Rule => {
                    sys::nftnl_rule_set_data(p as _, a, dp, dl);
                }
                Kind::Set => {
                    sys::nftnl_set_set_data(p as _, a, dp, dl);
                }
            }
        }
    }

    /// Moves `e` into this rule.
    pub fn add_expr(&mut self, e: Expr) {
        assert_eq!(self.kind, Kind::Rule);
        let ep = e.0.as_ptr();
        std::mem::forget(e);
        // SAFETY: the rule takes ownership of ep and frees it with itself (contract 1).
        unsafe { sys::nftnl_rule_add_expr(self.ptr.as_ptr() as _, ep) }
    }

    /// Moves `e` into this set.
    pub fn add_elem(&mut self, e: Elem) {
        assert_eq!(self.kind, Kind::Set);
        let ep = e.0.as_ptr();
        std::mem::forget(e);
        // SAFETY: the set takes ownership of ep and frees it with itself (contract 1).
        unsafe { sys::nftnl_set_elem_add(self.ptr.as_ptr() as _, ep) }
    }

    /// Appends one netlink message to `out`: `nlmsghdr` + `nfgenmsg` + this object's attributes
    /// (its elements instead, for `elems` on a set). Returns the message length.
    pub fn write(
        &self,
        scratch: &mut Scratch,
        out: &mut Vec<u8>,
        h: Header,
        elems: bool,
    ) -> Result<usize, usize> {
        let buf = scratch.0.as_mut_ptr();
        let p = self.ptr.as_ptr();
        // SAFETY: buf has SCRATCH zeroed bytes and every message stays under MAX_MSG (contract 2).
        let len = unsafe {
            let nlh = sys::nftnl_nlmsg_build_hdr(
                buf as *mut std::os::raw::c_char,
                h.msg_type,
                h.family,
                h.flags,
                h.seq,
            );
            match (self.kind, elems) {
                (Kind::Table, _) => sys::nftnl_table_nlmsg_build_payload(nlh, p as _),
                (Kind::Chain, _) => sys::nftnl_chain_nlmsg_build_payload(nlh, p as _),
                (Kind::Rule, _) => sys::nftnl_rule_nlmsg_build_payload(nlh, p as _),
                (Kind::Set, false) => sys::nftnl_set_nlmsg_build_payload(nlh, p as _),
                (Kind::Set, true) => sys::nftnl_set_elems_nlmsg_build_payload(nlh, p as _),
            }
            (*nlh).nlmsg_len as usize
        };
        scratch.take(len, out)
    }
}

impl Drop for Obj {
    fn drop(&mut self) {
        let p = self.ptr.as_ptr();
        // SAFETY: we own p (contract 1) and free it exactly once.
        unsafe {
            match self.kind {
                Kind::Table => sys::nftnl_table_free(p as _),
                Kind::Chain => sys::nftnl_chain_free(p as _),
                Kind::Rule => sys::nftnl_rule_free(p as _),
                Kind::Set => sys::nftnl_set_free(p as _),
            }
        }
    }
}

/// A zeroed buffer big enough for any message we build (contract 2).
pub struct Scratch(Vec<u8>);

impl Default for Scratch {
    fn default() -> Self {
        Scratch(vec![0; SCRATCH])
    }
}

impl Scratch {
    fn take(&mut self, len: usize, out: &mut Vec<u8>) -> Result<usize, usize> {
        let aligned = (len + 3) & !3;
        if aligned > SCRATCH {
            // Unreachable while callers keep to MAX_MSG (contract 2); never read past the buffer.
            self.0.fill(0);
            return Err(len);
        }
        let r = if len > MAX_MSG {
            Err(len)
        } else {
            out.extend_from_slice(&self.0[..aligned]);
            Ok(aligned)
        };
        self.0[..aligned].fill(0);
        r
    }
}

/// One libnftnl expression (`payload`, `cmp`, `lookup`, ...).
pub struct Expr(NonNull<sys::nftnl_expr>);

impl Expr {
    pub fn new(name: &'static std::ffi::CStr) -> Expr {
        // SAFETY: name is a valid C string; null aborts (contract 1).
        let p = unsafe { sys::nftnl_expr_alloc(name.as_ptr()) };
        match NonNull::new(p) {
            Some(p) => Expr(p),
            None => std::process::abort(),
        }
    }
    pub fn u8(mut self, attr: u32, v: u8) -> Expr {
        // SAFETY: live expression we own; value by copy.
        unsafe { sys::nftnl_expr_set_u8(self.0.as_mut(), attr as u16, v) };
        self
    }
    pub fn u32(mut self, attr: u32, v: u32) -> Expr {
        // SAFETY: as above.
        unsafe { sys::nftnl_expr_set_u32(self.0.as_mut(), attr as u16, v) };
        self
    }
    pub fn u64(mut self, attr: u32, v: u64) -> Expr {
        // SAFETY: as above.
        unsafe { sys::nftnl_expr_set_u64(self.0.as_mut(), attr as u16, v) };
        self
    }
    pub fn str(mut self, attr: u32, s: &CString) -> Expr {
        // SAFETY: as above; libnftnl copies the string.
        unsafe { sys::nftnl_expr_set_str(self.0.as_mut(), attr as u16, s.as_ptr()) };
        self
    }
    pub fn bytes(mut self, attr: u32, d: &[u8]) -> Expr {
        // SAFETY: as above; libnftnl copies d.len() bytes (at most 16 here: one register).
        unsafe {
            sys::nftnl_expr_set(
                self.0.as_mut(),
                attr as u16,
                d.as_ptr() as *const c_void,
                d.len() as u32,
            )
        };
        self
    }
}

impl Drop for Expr {
    fn drop(&mut self) {
        // SAFETY: still ours (add_expr forgets the value it hands over).
        unsafe { sys::nftnl_expr_free(self.0.as_ptr()) }
    }
}

/// One libnftnl set element.
pub struct Elem(NonNull<sys::nftnl_set_elem>);

impl Default for Elem {
    fn default() -> Self {
        // SAFETY: plain allocator; null aborts.
        let p = unsafe { sys::nftnl_set_elem_alloc() };
        match NonNull::new(p) {
            Some(p) => Elem(p),
            None => std::process::abort(),
        }
    }
}

impl Elem {
    pub fn u32(&mut self, attr: u32, v: u32) {
        // SAFETY: live element we own.
        unsafe { sys::nftnl_set_elem_set_u32(self.0.as_ptr(), attr as u16, v) }
    }
    pub fn str(&mut self, attr: u32, s: &CString) {
        // SAFETY: as above; libnftnl copies the string.
        unsafe { sys::nftnl_set_elem_set_str(self.0.as_ptr(), attr as u16, s.as_ptr()) };
    }
    pub fn bytes(&mut self, attr: u32, d: &[u8]) {
        // SAFETY: as above; key/data are at most 64 bytes (16 registers), userdata ≤ 255.
        unsafe {
            sys::nftnl_set_elem_set(
                self.0.as_ptr(),
                attr as u16,
                d.as_ptr() as *const c_void,
                d.len() as u32,
            )
        };
    }
}

impl Drop for Elem {
    fn drop(&mut self) {
        // SAFETY: still ours (add_elem forgets the value it hands over).
        unsafe { sys::nftnl_set_elem_free(self.0.as_ptr()) }
    }
}

/// `setsockopt(fd, level, name, &int)`.
pub fn set_int_opt(fd: RawFd, level: i32, name: i32, v: i32) -> io::Result<()> {
    // SAFETY: pointer to a local c_int with its exact size (contract 3).
    let r = unsafe {
        libc::setsockopt(
            fd,
            level,
            name,
            &v as *const i32 as *const c_void,
            std::mem::size_of::<i32>() as libc::socklen_t,
        )
    };
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

/// `getsockopt(fd, level, name)` for an int option.
pub fn get_int_opt(fd: RawFd, level: i32, name: i32) -> io::Result<i32> {
    let mut v: i32 = 0;
    let mut len = std::mem::size_of::<i32>() as libc::socklen_t;
    // SAFETY: pointers to locals of the right size (contract 3).
    let r =
        unsafe { libc::getsockopt(fd, level, name, &mut v as *mut i32 as *mut c_void, &mut len) };
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(v)
    }
}

/// The file descriptor of an mnl socket (owned by it; valid while it lives).
pub fn fd_of(sock: &mnl::Socket) -> RawFd {
    // SAFETY: as_raw_socket is the live mnl_socket owned by `sock` (contract 3).
    unsafe { mnl::mnl_sys::mnl_socket_get_fd(sock.as_raw_socket()) }
}

/// `recv(2)` into `buf`; `MSG_TRUNC` tells the real length of a datagram larger than `buf`.
/// `nonblock`: `MSG_DONTWAIT` (an empty queue gives `WouldBlock`).
pub fn recv(fd: RawFd, buf: &mut [u8], nonblock: bool) -> io::Result<usize> {
    let flags = libc::MSG_TRUNC | if nonblock { libc::MSG_DONTWAIT } else { 0 };
    loop {
        // SAFETY: buf is a live, writable slice of buf.len() bytes (contract 3).
        let r = unsafe { libc::recv(fd, buf.as_mut_ptr() as *mut c_void, buf.len(), flags) };
        if r >= 0 {
            return Ok(r as usize);
        }
        let e = io::Error::last_os_error();
        if e.kind() != io::ErrorKind::Interrupted {
            return Err(e);
        }
    }
}

/// Sends `pages` to the kernel (netlink pid 0) in ONE `sendmsg(2)`: the kernel sees one batch.
pub fn send_iov(fd: RawFd, pages: &[&[u8]]) -> io::Result<usize> {
    let mut iov: Vec<libc::iovec> = pages
        .iter()
        .map(|p| libc::iovec {
            iov_base: p.as_ptr() as *mut c_void,
            iov_len: p.len(),
        })
        .collect();
    // SAFETY: sockaddr_nl is plain old data; zero is a valid value (pid 0 = the kernel).
    let mut addr: libc::sockaddr_nl = unsafe { std::mem::zeroed() };
    addr.nl_family = libc::AF_NETLINK as libc::sa_family_t;
    // SAFETY: as above, msghdr is plain old data.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_name = &mut addr as *mut libc::sockaddr_nl as *mut c_void;
    msg.msg_namelen = std::mem::size_of::<libc::sockaddr_nl>() as u32;
    msg.msg_iov = iov.as_mut_ptr();
    msg.msg_iovlen = iov.len() as _;
    loop {
        // SAFETY: msg points at locals and at `pages`, all alive for the call (contract 3).
        let r = unsafe { libc::sendmsg(fd, &msg, 0) };
        if r >= 0 {
            return Ok(r as usize);
        }
        let e = io::Error::last_os_error();
        if e.kind() != io::ErrorKind::Interrupted {
            return Err(e);
        }
    }
}
