//! What the benches share: the backends compiled in, a device sync before each clock stops,
//! FLOP counts, and an allocator that records the peak of host memory.

#![allow(dead_code, unsafe_code)]

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use burn::tensor::backend::Backend;
use criterion::measurement::WallTime;
use criterion::{BenchmarkGroup, Criterion};

/// Runs `$body` once per backend compiled in, with `B` the backend type, `$name` its name
/// (`flex`, `wgpu`, `cuda`) and `$device` its default device. First it sets glibc's allocator
/// to keep freed memory, as the `ember` binary does (`ember::train::keep_freed_memory`):
/// otherwise every large buffer is mapped and unmapped again, and the CPU figures measure
/// page faults (attention forward + backward at sequence 256: 48 against 88 ms).
macro_rules! for_each_backend {
    (|$b:ident, $name:ident, $device:ident| $body:block) => {{
        ember::train::keep_freed_memory();
        {
            type $b = burn::backend::Flex;
            let $name = "flex";
            let $device: burn::tensor::ops::Device<$b> = Default::default();
            $body
        }
        #[cfg(feature = "wgpu")]
        {
            type $b = burn::backend::Wgpu;
            let $name = "wgpu";
            let $device: burn::tensor::ops::Device<$b> = Default::default();
            $body
        }
        #[cfg(feature = "cuda")]
        {
            type $b = burn::backend::Cuda;
            let $name = "cuda";
            let $device: burn::tensor::ops::Device<$b> = Default::default();
            $body
        }
    }};
}
pub(crate) use for_each_backend;

/// Waits until every queued operation on `device` has run, so the clock measures the work and
/// not its submission (a no-op on the CPU backend, which runs eagerly).
pub fn sync<B: Backend>(device: &B::Device) {
    B::sync(device).expect("the device runs the benchmark");
}

/// A benchmark group named `name` with the settings every bench here uses: 10 samples, half
/// a second of warm-up, `seconds` of measurement.
pub fn new_group<'a>(
    c: &'a mut Criterion,
    name: String,
    seconds: u64,
) -> BenchmarkGroup<'a, WallTime> {
    let mut group = c.benchmark_group(name);
    group
        .sample_size(10)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(seconds));
    group
}

/// Causal attention FLOPs by FlashAttention's convention: `4 · batch · heads · seq² · head_dim`
/// halved by the causal mask, and 2.5 times that for the backward pass.
pub fn attention_flops(
    batch: usize,
    heads: usize,
    seq: usize,
    head_dim: usize,
    backward: bool,
) -> u64 {
    let forward = 4 * batch * heads * seq * seq * head_dim / 2;
    (if backward { forward * 7 / 2 } else { forward }) as u64
}

/// The system allocator, counting the bytes live now and their peak since the last reset.
pub struct PeakAlloc;

static LIVE: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);

// SAFETY: every call is forwarded to `System` unchanged; only counters are updated besides.
unsafe impl GlobalAlloc for PeakAlloc {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: the caller's contract is `System`'s.
        let ptr = unsafe { System.alloc(layout) };
        if !ptr.is_null() {
            let live = LIVE.fetch_add(layout.size(), Ordering::Relaxed) + layout.size();
            PEAK.fetch_max(live, Ordering::Relaxed);
        }
        ptr
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: as above.
        unsafe { System.dealloc(ptr, layout) };
        LIVE.fetch_sub(layout.size(), Ordering::Relaxed);
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: as above.
        let new = unsafe { System.realloc(ptr, layout, new_size) };
        if !new.is_null() {
            if new_size >= layout.size() {
                let live = LIVE.fetch_add(new_size - layout.size(), Ordering::Relaxed)
                    + (new_size - layout.size());
                PEAK.fetch_max(live, Ordering::Relaxed);
            } else {
                LIVE.fetch_sub(layout.size() - new_size, Ordering::Relaxed);
            }
        }
        new
    }
}

/// The peak of live host bytes while `f` runs, above what was live when it started.
pub fn peak_bytes_during<T>(f: impl FnOnce() -> T) -> (T, usize) {
    let start = LIVE.load(Ordering::Relaxed);
    PEAK.store(start, Ordering::Relaxed);
    let out = f();
    (out, PEAK.load(Ordering::Relaxed).saturating_sub(start))
}

/// Bytes as MiB, for tables.
pub fn mib(bytes: usize) -> f64 {
    bytes as f64 / (1024.0 * 1024.0)
}
