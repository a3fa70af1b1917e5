//! Cross-entropy on every backend compiled in (flex by default; `wgpu` and `cuda` with their
//! features):
//! - `cross_entropy/{backend}`: log-softmax + pick + mean on `[rows, vocab]` logits, forward and
//!   forward + backward, and `ember_transformer::fused_cross_entropy` (one softmax, the gradient
//!   computed in the forward pass) forward + backward; throughput in logits per second
//!   (criterion's `elem/s`);
//! - `linear_cross_entropy/{backend}`: the language-model head and the loss together, from
//!   hidden states `[rows, 128]` and a `[vocab, 128]` weight, forward + backward: the naive
//!   version (the whole logits tensor, then the loss) against
//!   `ember_transformer::fused_linear_cross_entropy` (1024 rows at a time, never the whole
//!   logits), in GFLOP/s of the three matmuls (criterion's `elem/s`).
//!
//! Before the timings, a table of the peak host memory of each on the CPU backend (this binary
//! counts every allocation).
//!
//!     cargo bench --bench loss
//!     cargo bench --bench loss -- 'linear_cross_entropy/flex'

// criterion_group! defines an undocumented public function.
#![allow(missing_docs)]

mod common;

use burn::backend::{Autodiff, Flex};
use burn::tensor::activation::log_softmax;
use burn::tensor::backend::{AutodiffBackend, Backend};
use burn::tensor::{Distribution, Int, Tensor};
use common::{for_each_backend, mib, new_group, peak_bytes_during, sync, PeakAlloc};
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use ember::transformer::{fused_cross_entropy, fused_linear_cross_entropy};

#[global_allocator]
static ALLOCATOR: PeakAlloc = PeakAlloc;

const SHAPES: [(usize, usize); 2] = [(2048, 8192), (8192, 32768)];
const HIDDEN: usize = 128;
const CHUNK_ROWS: usize = 1024;

fn cross_entropy<B: Backend>(logits: Tensor<B, 2>, targets: Tensor<B, 1, Int>) -> Tensor<B, 1> {
    log_softmax(logits, 1)
        .gather(1, targets.unsqueeze_dim::<2>(1))
        .mean()
        .neg()
}

fn targets<B: Backend>(rows: usize, vocab: usize, device: &B::Device) -> Tensor<B, 1, Int> {
    Tensor::random([rows], Distribution::Uniform(0.0, vocab as f64), device)
}

/// Hidden states, head weight and targets of one linear + cross-entropy problem.
struct Problem<B: AutodiffBackend> {
    hidden: Tensor<B::InnerBackend, 2>,
    weight: Tensor<B::InnerBackend, 2>,
    targets: Tensor<B, 1, Int>,
    rows: usize,
}

impl<B: AutodiffBackend> Problem<B> {
    fn new(rows: usize, vocab: usize, device: &B::Device) -> Self {
        let normal = Distribution::Normal(0.0, 1.0);
        Self {
            hidden: Tensor::random([rows, HIDDEN], normal, device),
            weight: Tensor::random([vocab, HIDDEN], Distribution::Normal(0.0, 0.1), device),
            targets: targets(rows, vocab, device),
            rows,
        }
    }

    fn leaves(&self) -> (Tensor<B, 2>, Tensor<B, 2>) {
        (
            Tensor::from_inner(self.hidden.clone()).require_grad(),
            Tensor::from_inner(self.weight.clone()).require_grad(),
        )
    }

    /// Forward + backward of the naive head and loss; returns the loss.
    fn naive(&self) -> f32 {
        let (hidden, weight) = self.leaves();
        let logits = hidden.clone().matmul(weight.clone().transpose());
        let loss = cross_entropy(logits, self.targets.clone());
        let grads = loss.backward();
        let _ = (hidden.grad(&grads), weight.grad(&grads));
        loss.into_scalar().elem()
    }

    /// Forward + backward of the fused, chunked head and loss; returns the loss.
    fn fused(&self) -> f32 {
        let (hidden, weight) = self.leaves();
        let mask = Tensor::ones([self.rows], &hidden.device());
        let loss = fused_linear_cross_entropy(
            hidden.clone(),
            weight.clone(),
            self.targets.clone(),
            mask,
            self.rows,
            CHUNK_ROWS,
        )
        .expect("a valid problem");
        let grads = loss.backward();
        let _ = (hidden.grad(&grads), weight.grad(&grads));
        loss.into_scalar().elem()
    }
}

use burn::tensor::ElementConversion as _;

/// Peak host memory of the naive and the fused head + loss on the CPU backend.
fn memory_table() {
    println!(
        "linear + cross-entropy, forward + backward, peak host memory (flex, hidden {HIDDEN}):"
    );
    println!(
        "{:<14} {:>14} {:>14} {:>14} {:>10}",
        "rows × vocab", "logits (MiB)", "naive (MiB)", "fused (MiB)", "loss diff"
    );
    let device = Default::default();
    for (rows, vocab) in SHAPES {
        let problem = Problem::<Autodiff<Flex>>::new(rows, vocab, &device);
        let (naive, naive_peak) = peak_bytes_during(|| problem.naive());
        let (fused, fused_peak) = peak_bytes_during(|| problem.fused());
        println!(
            "{:<14} {:>14.0} {:>14.0} {:>14.0} {:>10.1e}",
            format!("{rows} × {vocab}"),
            mib(rows * vocab * 4),
            mib(naive_peak),
            mib(fused_peak),
            (naive - fused).abs()
        );
    }
}

fn bench_backend<B: Backend>(c: &mut Criterion, backend: &str, device: &B::Device) {
    let mut group = new_group(c, format!("cross_entropy/{backend}"), 3);
    for (rows, vocab) in SHAPES {
        let size = format!("{rows}x{vocab}");
        let logits = Tensor::<B, 2>::random([rows, vocab], Distribution::Normal(0.0, 1.0), device);
        let target = targets::<B>(rows, vocab, device);
        group.throughput(Throughput::Elements((rows * vocab) as u64));
        group.bench_function(BenchmarkId::new("forward", &size), |b| {
            b.iter(|| {
                let loss = cross_entropy(logits.clone(), target.clone());
                sync::<B>(device);
                loss
            })
        });
        let target = Tensor::<Autodiff<B>, 1, Int>::from_inner(target);
        group.bench_function(BenchmarkId::new("forward+backward", &size), |b| {
            b.iter(|| {
                let leaf = Tensor::<Autodiff<B>, 2>::from_inner(logits.clone()).require_grad();
                let grads = cross_entropy(leaf.clone(), target.clone()).backward();
                let grad = leaf.grad(&grads);
                sync::<B>(device);
                grad
            })
        });
        let mask = Tensor::<Autodiff<B>, 1>::ones([rows], device);
        group.bench_function(BenchmarkId::new("forward+backward-fused", &size), |b| {
            b.iter(|| {
                let leaf = Tensor::<Autodiff<B>, 2>::from_inner(logits.clone()).require_grad();
                let loss = fused_cross_entropy(leaf.clone(), target.clone(), mask.clone(), rows)
                    .expect("a valid problem");
                let grad = leaf.grad(&loss.backward());
                sync::<B>(device);
                grad
            })
        });
    }
    group.finish();

    let mut group = new_group(c, format!("linear_cross_entropy/{backend}"), 3);
    for (rows, vocab) in SHAPES {
        let size = format!("{rows}x{vocab}");
        let problem = Problem::<Autodiff<B>>::new(rows, vocab, device);
        // Three matmuls of 2 · rows · hidden · vocab FLOPs each (forward, and two backward).
        group.throughput(Throughput::Elements((6 * rows * HIDDEN * vocab) as u64));
        group.bench_function(BenchmarkId::new("forward+backward-naive", &size), |b| {
            b.iter(|| {
                let loss = problem.naive();
                sync::<B>(device);
                loss
            })
        });
        group.bench_function(BenchmarkId::new("forward+backward-fused", &size), |b| {
            b.iter(|| {
                let loss = problem.fused();
                sync::<B>(device);
                loss
            })
        });
    }
    group.finish();
}

fn benches(c: &mut Criterion) {
    memory_table();
    for_each_backend!(|B, name, device| {
        bench_backend::<B>(c, name, &device);
    });
}

criterion_group!(loss_benches, benches);
criterion_main!(loss_benches);
