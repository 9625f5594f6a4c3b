//! `svcc`: the command-line front end. Parses flags, reads files, calls the compiler (and the
//! runtime), renders diagnostics and maps outcomes to exit codes. No logic of its own.

mod cli;
mod inputs;
mod run;
mod trace;

use std::process::ExitCode;

use clap::Parser;

/// The compiler allocates many small objects (YAML events, typed objects, rules); mimalloc
/// cuts the time glibc's allocator spends on them by a fifth at 10k services.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Returns the memory freed so far to the system. mimalloc keeps freed pages for reuse, but
/// pages of the size classes parsing and lowering used serve the model's allocations badly:
/// called between lowering and building, this lowers a 10k-service compile's peak by
/// ≈ 15 MiB for ≈ 10 ms.
pub fn release_free_memory() {
    // SAFETY: mi_collect has no preconditions; it only walks mimalloc's own structures.
    unsafe { libmimalloc_sys::mi_collect(true) }
}

/// mimalloc's `mi_option_purge_delay`: libmimalloc-sys does not name it; in mimalloc.h's
/// option enum it comes just before `mi_option_use_numa_nodes` (the test below checks its
/// default: 1,000 ms in mimalloc v3, which libmimalloc-sys builds, 10 ms in v2).
const MI_OPTION_PURGE_DELAY: libmimalloc_sys::mi_option_t =
    libmimalloc_sys::mi_option_use_numa_nodes - 1;

/// For the long-running `svcc run`: pages freed are returned to the system at once instead of
/// a second later. `svcc run` syncs up to ten times a second under churn, and each sync frees
/// what the next reuses only in part (the delta's objects, a file's parse), so with the delay
/// freed pages are never old enough to go: at 10k/100k under churn ≈ 14 MiB more RSS
/// (docs/PERFORMANCE.md, section 10). A `MIMALLOC_PURGE_DELAY` in the environment wins. Call
/// before any thread starts.
pub fn purge_freed_memory_at_once() {
    if std::env::var_os("MIMALLOC_PURGE_DELAY").is_some() {
        return;
    }
    // SAFETY: mi_option_set only writes mimalloc's option table; no other thread runs yet.
    unsafe { libmimalloc_sys::mi_option_set(MI_OPTION_PURGE_DELAY, 0) }
}

fn main() -> ExitCode {
    let args = cli::Cli::parse();
    match cli::run(args) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("svcc: {e:#}");
            ExitCode::from(1)
        }
    }
}

#[cfg(test)]
mod tests {
    /// The option number is mimalloc's purge delay: it has that option's default (no other
    /// option near it defaults to 1,000 or 10).
    #[test]
    fn purge_delay_option_is_the_one_meant() {
        if std::env::var_os("MIMALLOC_PURGE_DELAY").is_some() {
            return;
        }
        // SAFETY: reads mimalloc's option table.
        let v = unsafe { libmimalloc_sys::mi_option_get(super::MI_OPTION_PURGE_DELAY) };
        assert!(
            v == 1000 || v == 10,
            "option {}: {v}",
            super::MI_OPTION_PURGE_DELAY
        );
    }
}
