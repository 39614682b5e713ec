//! How the agent asks glibc's allocator to hand memory back: a fixed mmap threshold and at
//! most two arenas, set once at start (before any thread) by the `fleetwatch-agent` binary.
//!
//! glibc raises its mmap threshold each time a mapped block is freed (up to 32 MiB), after
//! which the log path's large transient buffers (a batch being encoded, its compressed frame,
//! a frame read back for sending: hundreds of KiB to a few MiB, several per batch) come from
//! the arenas, where they fragment and are kept: the agent's resident memory climbed to about
//! 55 MiB while shipping 300,000 lines/s although it had under 25 MiB live. With the threshold
//! fixed, such buffers are mapped and unmapped whole (about 29 MiB resident in the same run,
//! `log_pipeline` in benches/). Each thread pool adds arenas (8 per core by default) that keep
//! their free memory too; two are enough for the agent's few busy threads.

/// Blocks of this size and larger are mapped on their own and returned to the system when
/// freed (glibc's initial value, kept fixed instead of rising).
pub const MMAP_THRESHOLD_BYTES: i32 = 256 * 1024;

/// glibc malloc arenas at most.
pub const ARENA_MAX: i32 = 2;

/// Sets [`MMAP_THRESHOLD_BYTES`] and [`ARENA_MAX`] unless the environment sets them
/// (`MALLOC_MMAP_THRESHOLD_`, `MALLOC_ARENA_MAX`: glibc's own tunables win, for experiments);
/// returns the settings it could not apply. Call before starting threads.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
pub fn limit_allocator_retention() -> Vec<&'static str> {
    let mut failed = Vec::new();
    for (env, param, value, name) in [
        (
            "MALLOC_MMAP_THRESHOLD_",
            libc::M_MMAP_THRESHOLD,
            MMAP_THRESHOLD_BYTES,
            "M_MMAP_THRESHOLD",
        ),
        (
            "MALLOC_ARENA_MAX",
            libc::M_ARENA_MAX,
            ARENA_MAX,
            "M_ARENA_MAX",
        ),
    ] {
        if std::env::var_os(env).is_some() {
            continue;
        }
        // SAFETY: mallopt only changes allocator parameters; it has no memory-safety
        // preconditions and returns 0 when it refuses a value.
        if unsafe { libc::mallopt(param, value) } == 0 {
            failed.push(name);
        }
    }
    failed
}

/// Other allocators are left as they are.
#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
pub fn limit_allocator_retention() -> Vec<&'static str> {
    Vec::new()
}

#[cfg(all(test, target_os = "linux", target_env = "gnu"))]
mod tests {
    use super::*;

    #[test]
    fn glibc_accepts_the_settings() {
        // The test process may have the variables set; only then is nothing applied.
        if std::env::var_os("MALLOC_MMAP_THRESHOLD_").is_none()
            && std::env::var_os("MALLOC_ARENA_MAX").is_none()
        {
            assert_eq!(limit_allocator_retention(), Vec::<&str>::new());
        }
    }
}
