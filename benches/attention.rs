//! Causal attention: Ember's `causal_attention` (its own kernel on flex, burn's op elsewhere),
//! burn's fused `attention` op and the naive matmul–mask–softmax–matmul, forward and
//! forward + backward, on every backend compiled in (flex by default; `wgpu` and
//! `cuda` with their features). Groups are named `attention/{backend}`; throughput is in
//! GFLOP/s by FlashAttention's convention (shown by criterion as `Gelem/s`).
//!
//!     cargo bench --bench attention                        # everything
//!     cargo bench --bench attention -- 'attention/flex/forward-fused/s256'   # a filter
//!
//! Batch 8, heads 8, sequence 128 to 1024, head dim 32, 64 and 128.

// criterion_group! defines an undocumented public function.
#![allow(missing_docs)]

mod common;

use burn::backend::Autodiff;
use burn::tensor::backend::Backend;
use burn::tensor::module::attention;
use burn::tensor::ops::AttentionModuleOptions;
use burn::tensor::{activation::softmax, Bool, Distribution, ElementConversion, Tensor};
use common::{attention_flops, for_each_backend, new_group, sync};
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use ember::transformer::causal_attention;

const BATCH: usize = 8;
const HEADS: usize = 8;
const SEQS: [usize; 4] = [128, 256, 512, 1024];
const HEAD_DIMS: [usize; 3] = [32, 64, 128];

/// Ember's causal attention: on flex its block-causal kernel with a fused backward pass.
fn ember<B: Backend>(q: Tensor<B, 4>, k: Tensor<B, 4>, v: Tensor<B, 4>) -> Tensor<B, 4> {
    causal_attention(q, k, v, None)
}

/// burn's fused op, causal.
fn fused<B: Backend>(q: Tensor<B, 4>, k: Tensor<B, 4>, v: Tensor<B, 4>) -> Tensor<B, 4> {
    let options = AttentionModuleOptions {
        scale: None,
        softcap: None,
        is_causal: true,
    };
    attention(q, k, v, None, None, options)
}

/// softmax(q kᵀ / √d + causal mask) v, one op at a time.
fn naive<B: Backend>(q: Tensor<B, 4>, k: Tensor<B, 4>, v: Tensor<B, 4>) -> Tensor<B, 4> {
    let [_, _, seq, head_dim] = q.dims();
    let scores = q.matmul(k.swap_dims(2, 3)) / (head_dim as f64).sqrt();
    let [batch, heads, _, _] = scores.dims();
    // `true` above the diagonal: the future, masked out.
    let future = Tensor::<B, 2, Bool>::tril_mask([seq, seq], 0, &scores.device())
        .unsqueeze::<4>()
        .expand([batch, heads, seq, seq]);
    let scores = scores.mask_fill(future, f32::NEG_INFINITY);
    softmax(scores, 3).matmul(v)
}

type Attend<B> = fn(Tensor<B, 4>, Tensor<B, 4>, Tensor<B, 4>) -> Tensor<B, 4>;

/// An implementation's name, its inference form and its autodiff form.
type Implementation<B> = (&'static str, Attend<B>, Attend<Autodiff<B>>);

fn inputs<B: Backend>(seq: usize, head_dim: usize, device: &B::Device) -> [Tensor<B, 4>; 3] {
    let shape = [BATCH, HEADS, seq, head_dim];
    [0, 1, 2].map(|_| Tensor::random(shape, Distribution::Normal(0.0, 1.0), device))
}

/// The implementations agree (at a length of several of Ember's query blocks), or the
/// comparison is meaningless.
fn check<B: Backend>(device: &B::Device) {
    let [q, k, v] = inputs::<B>(300, 16, device);
    let reference = naive(q.clone(), k.clone(), v.clone());
    for (name, attend) in [("ember", ember::<B> as Attend<B>), ("fused", fused::<B>)] {
        let out = attend(q.clone(), k.clone(), v.clone());
        let diff = (out - reference.clone())
            .abs()
            .max()
            .into_scalar()
            .elem::<f32>();
        assert!(diff < 1e-4, "{name} and naive attention differ by {diff}");
    }
}

fn bench_backend<B: Backend>(c: &mut Criterion, backend: &str, device: &B::Device) {
    check::<B>(device);
    let mut group = new_group(c, format!("attention/{backend}"), 2);
    let impls: [Implementation<B>; 3] = [
        ("ember", ember::<B>, ember::<Autodiff<B>>),
        ("fused", fused::<B>, fused::<Autodiff<B>>),
        ("naive", naive::<B>, naive::<Autodiff<B>>),
    ];
    for seq in SEQS {
        for head_dim in HEAD_DIMS {
            let size = format!("s{seq}-d{head_dim}");
            let [q, k, v] = inputs::<B>(seq, head_dim, device);
            for (name, forward, _) in &impls {
                group.throughput(Throughput::Elements(attention_flops(
                    BATCH, HEADS, seq, head_dim, false,
                )));
                group.bench_function(BenchmarkId::new(format!("forward-{name}"), &size), |b| {
                    b.iter(|| {
                        let out = forward(q.clone(), k.clone(), v.clone());
                        sync::<B>(device);
                        out
                    })
                });
            }
            for (name, _, backward) in &impls {
                group.throughput(Throughput::Elements(attention_flops(
                    BATCH, HEADS, seq, head_dim, true,
                )));
                group.bench_function(
                    BenchmarkId::new(format!("forward+backward-{name}"), &size),
                    |b| {
                        b.iter(|| {
                            let [q, k, v] = [&q, &k, &v].map(|t| {
                                Tensor::<Autodiff<B>, 4>::from_inner(t.clone()).require_grad()
                            });
                            let grads = backward(q.clone(), k, v).sum().backward();
                            let dq = q.grad(&grads);
                            sync::<B>(device);
                            dq
                        })
                    },
                );
            }
        }
    }
    group.finish();
}

fn benches(c: &mut Criterion) {
    for_each_backend!(|B, name, device| {
        bench_backend::<B>(c, name, &device);
    });
}

criterion_group!(attention_benches, benches);
criterion_main!(attention_benches);
