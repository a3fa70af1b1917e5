//! The kernels on burn's flex backend: a tensor of a generic `B` is looked at as a flex tensor
//! when `B` is `Flex` or `Autodiff<Flex>` (a type check at run time, no `unsafe`), its `f32`
//! values are borrowed in place, and the results come back as constant tensors of `B`. On every
//! other backend these functions return `None` and the callers use burn's ops.

use std::any::Any;
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, Weak};

use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::checkpoint::strategy::NoCheckpointing;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops, OpsKind};
use burn::backend::{Autodiff, Flex};
use burn::tensor::backend::{AutodiffBackend, Backend};
use burn::tensor::{DType, Int, Tensor, TensorData, TensorPrimitive};
use burn_flex::FlexTensor;

use super::coded::{self, CodedRows};
use super::matmul::Packed;

type Tracked = Autodiff<Flex>;

thread_local! {
    static ENABLED: std::cell::Cell<bool> = const { std::cell::Cell::new(true) };
}

/// Turns Ember's flex kernels on or off for the calling thread (on by default): off, the
/// model runs burn's own ops on flex too. For comparisons (`ember bench --kernels off`, the
/// tests that check the kernels against burn's ops); the results agree to float rounding.
pub fn set_flex_kernels(enabled: bool) {
    ENABLED.with(|e| e.set(enabled));
}

/// Whether `B` is flex, or autodiff over flex, and the kernels are on.
pub(crate) fn is_flex<B: Backend>() -> bool {
    let id = std::any::TypeId::of::<B>();
    (id == std::any::TypeId::of::<Flex>() || id == std::any::TypeId::of::<Tracked>())
        && ENABLED.with(|e| e.get())
}

/// Whether `B` is flex itself (inference: no autodiff) and the kernels are on.
pub(crate) fn is_plain_flex<B: Backend>() -> bool {
    std::any::TypeId::of::<B>() == std::any::TypeId::of::<Flex>() && ENABLED.with(|e| e.get())
}

/// The values of `tensor` as a contiguous flex tensor of `f32` (a view when they already are).
fn flex<B: Backend, const D: usize>(tensor: &Tensor<B, D>) -> Option<FlexTensor> {
    flex_view(tensor).map(contiguous)
}

/// The flex tensor behind `tensor`, in whatever layout it has, when it holds `f32` values.
fn flex_view<B: Backend, const D: usize>(tensor: &Tensor<B, D>) -> Option<FlexTensor> {
    if tensor.dtype() != DType::F32 || !is_flex::<B>() {
        return None;
    }
    let any: &dyn Any = tensor;
    let inner = if let Some(t) = any.downcast_ref::<Tensor<Flex, D>>() {
        t.clone()
    } else {
        any.downcast_ref::<Tensor<Tracked, D>>()?.clone().inner()
    };
    Some(inner.into_primitive().tensor())
}

/// `tensor` itself when its values are one contiguous run, else a contiguous copy.
pub(super) fn contiguous(tensor: FlexTensor) -> FlexTensor {
    match tensor.as_slice::<f32>() {
        Some(_) => tensor,
        None => tensor.to_contiguous(),
    }
}

/// A constant tensor of `B` (flex or autodiff over flex) holding `values`.
fn constant<B: Backend, const D: usize>(values: Vec<f32>, shape: [usize; D]) -> Tensor<B, D> {
    let inner = Tensor::<Flex, D>::from_data(TensorData::new(values, shape), &Default::default());
    if std::any::TypeId::of::<B>() == std::any::TypeId::of::<Flex>() {
        as_backend(inner)
    } else {
        as_backend(Tensor::<Tracked, D>::from_inner(inner))
    }
}

/// `tensor`, a `Tensor<Flex, D>` or `Tensor<Autodiff<Flex>, D>`, as the `Tensor<B, D>` it is:
/// the callers have matched `B` to its type first.
pub(super) fn as_backend<B: Backend, const D: usize>(tensor: impl Any) -> Tensor<B, D> {
    let boxed: Box<dyn Any> = Box::new(tensor);
    *boxed
        .downcast::<Tensor<B, D>>()
        .expect("B is the tensor's backend")
}

pub(super) fn slice(tensor: &FlexTensor) -> &[f32] {
    tensor
        .as_slice::<f32>()
        .expect("flex() returns contiguous f32 tensors")
}

/// Below this many elements, inference keeps burn's ops: a decoding step's activations are a
/// few thousand values, and there the kernel's setup (a copy of the result into a new tensor)
/// costs more than it saves (measured with `ember bench`'s generation).
const INFERENCE_MIN: usize = 1 << 16;

/// `x · w (+ bias)` for a few rows of `x` (`[rows, k]`, `w`: `[k, n]`) without autodiff, on
/// flex: `None` otherwise. `w` may be stored as it is or as the transpose of a stored matrix
/// (a tied embedding's `[n, k]`); neither is copied.
pub(crate) fn matmul_few_rows<B: Backend>(
    x: &Tensor<B, 2>,
    w: &Tensor<B, 2>,
    bias: Option<&Tensor<B, 1>>,
) -> Option<Tensor<B, 2>> {
    let [rows, _] = x.dims();
    if !(1..=super::few_rows_limit()).contains(&rows) || B::ad_enabled(&x.device()) {
        return None;
    }
    let (xv, wv) = (flex(x)?, flex_view(w)?);
    let bias = match bias {
        Some(b) => Some(flex(b)?),
        None => None,
    };
    let n = w.dims()[1];
    let bias = bias.as_ref().map(slice);
    let y = if let Some(w) = wv.as_slice::<f32>() {
        match kept(&wv, w, n, Layout::Panels) {
            Some(Kept::Panels(packed)) => {
                super::matmul::rows_times_packed(slice(&xv), rows, &packed, bias)
            }
            _ => super::matmul::rows_times(slice(&xv), rows, w, n, bias),
        }
    } else {
        // Any other layout than these two: the gemm, which copies it anyway.
        let stored = wv.transpose(0, 1);
        let e = stored.as_slice()?;
        let mut y = match kept(&stored, e, n, Layout::Rows) {
            Some(Kept::Rows(Some(coded))) => {
                super::matmul::rows_times_coded_rows(slice(&xv), rows, &coded, n)
            }
            _ => super::matmul::rows_times_transposed(slice(&xv), rows, e, n),
        };
        if let Some(bias) = bias {
            for row in y.chunks_exact_mut(n) {
                row.iter_mut().zip(bias).for_each(|(y, b)| *y += b);
            }
        }
        y
    };
    Some(constant(y, [rows, n]))
}

/// Bytes of packed weights kept at most, process-wide (see [`set_packed_weights_limit`]).
static PACKED_LIMIT: AtomicUsize = AtomicUsize::new(4 << 30);

/// The weight matrices that few-rows products have met, by the address of their values.
static PACKED: Mutex<Option<HashMap<usize, PackedEntry>>> = Mutex::new(None);

/// A weight matrix met by [`matmul_few_rows`]: the storage it lies in (weakly, so that it
/// can be dropped), and from the second meeting on its packed copy.
struct PackedEntry {
    storage: Weak<dyn Any + Send + Sync>,
    len: usize,
    n: usize,
    layout: Layout,
    packed: Option<Kept>,
}

/// How a few-rows product reads a matrix: `[k, n]` by columns, or a tied embedding's `[n, k]`
/// by rows.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Layout {
    Panels,
    Rows,
}

/// A matrix's packed copy: column panels (floats or codes), or a tied embedding's codes
/// (`None`: its values are no quantised model's, it is multiplied as stored).
#[derive(Clone)]
enum Kept {
    Panels(Arc<Packed>),
    Rows(Option<Arc<CodedRows>>),
}

impl Kept {
    fn bytes(&self) -> usize {
        match self {
            Kept::Panels(packed) => packed.bytes(),
            Kept::Rows(coded) => coded.as_ref().map_or(0, |c| c.bytes()),
        }
    }
}

/// Whether packed weights may keep a quantised model's codes (see [`set_coded_weights`]).
static CODED: AtomicBool = AtomicBool::new(true);

/// Whether packed weight matrices whose values are exactly a quantised model's — llama.cpp's
/// Q4_0, Q4_1 or Q8_0 blocks dequantised, as `ember import` leaves a GGUF file's — keep the
/// small integers and block scales instead of the floats (default `true`; takes effect for
/// matrices packed from now on). They are found and checked value by value when a matrix is
/// packed, rebuilt in registers with the same roundings, and give the same values bit for bit
/// from a quarter of the bytes (SmolLM2-135M-Instruct, imported from its Q4_1 file, 2 cores:
/// greedy decoding at batch 1 a third faster than with float panels, at 8 rows a seventh,
/// even at 32). The tied head of such a model is kept as its codes too. Only on x86-64 CPUs
/// with AVX2 and FMA; elsewhere, and for any matrix whose values are not such codes
/// (anything trained), the panels hold floats.
pub fn set_coded_weights(enabled: bool) {
    if CODED.swap(enabled, Ordering::Relaxed) != enabled {
        // Repack from now on: what is kept was packed the other way.
        let mut kept = PACKED.lock().unwrap_or_else(|e| e.into_inner());
        *kept = None;
    }
}

/// What the few-rows products keep packed now (see [`set_packed_weights_limit`] and
/// [`set_coded_weights`]): the matrices whose values are still alive.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PackedWeights {
    /// Matrices packed.
    pub matrices: usize,
    /// Of them, kept as a quantised model's codes.
    pub coded: usize,
    /// Of those, tied embeddings (heads: `[vocab, width]`, coded row by row).
    pub coded_heads: usize,
    /// Bytes the packed copies take.
    pub bytes: usize,
}

/// The packed weight matrices kept now.
pub fn packed_weights() -> PackedWeights {
    let kept = PACKED.lock().unwrap_or_else(|e| e.into_inner());
    let mut stats = PackedWeights::default();
    let alive = kept.iter().flat_map(|kept| kept.values());
    for entry in alive.filter(|e| e.storage.strong_count() > 0) {
        let (coded, head) = match &entry.packed {
            Some(Kept::Panels(packed)) => (packed.is_coded(), false),
            Some(Kept::Rows(Some(_))) => (true, true),
            _ => continue,
        };
        stats.matrices += 1;
        stats.coded += usize::from(coded);
        stats.coded_heads += usize::from(head);
        stats.bytes += entry.packed.as_ref().map_or(0, Kept::bytes);
    }
    stats
}

/// Sets how many bytes of packed weight matrices the few-rows products may keep, process-wide
/// (default 4 GiB; 0 turns packing off and drops what is kept).
///
/// A decoding step multiplies a few rows by every weight matrix. Laid out as they are stored,
/// the weights are read once per group of four rows; packed into column panels
/// (`kernels::matmul::Packed`), once per step for all rows (SmolLM2-135M's 30 layers at 16
/// rows: 76 → 36 ms; at 1 row 26 → 18 ms). A matrix is packed the second time a few-rows
/// product meets it (a model that decodes meets each matrix once per step), and its copy is
/// dropped once the matrix is: after an optimizer step, the next decoding packs the new
/// weights. The copy costs as much memory as the matrix (a quarter of it for a quantised
/// model's codes, [`set_coded_weights`]); matrices past the limit are multiplied as they lie.
/// The values are the same bit for bit either way.
pub fn set_packed_weights_limit(bytes: usize) {
    PACKED_LIMIT.store(bytes, Ordering::Relaxed);
    if bytes == 0 {
        let mut kept = PACKED.lock().unwrap_or_else(|e| e.into_inner());
        *kept = None;
    }
}

/// The packed copy of `w` (the values of `tensor`, `[k, n]` for panels, `[n, k]` for rows)
/// when it has one or gets one now.
///
/// Sound because flex's storage is copy-on-write through its `Arc`: a storage that a weak
/// reference still reaches has the values it had when it was packed (a write either finds
/// the weak reference and copies, or moves the values to a new allocation, which ends it).
fn kept(tensor: &FlexTensor, w: &[f32], n: usize, layout: Layout) -> Option<Kept> {
    let limit = PACKED_LIMIT.load(Ordering::Relaxed);
    let codes = CODED.load(Ordering::Relaxed);
    if limit == 0 || (layout == Layout::Rows && !(codes && coded::available())) {
        return None;
    }
    let storage = tensor.data_arc();
    let address = Arc::as_ptr(&storage);
    let key = w.as_ptr() as usize;
    let same = |entry: &PackedEntry| {
        entry.len == w.len()
            && entry.n == n
            && entry.layout == layout
            && entry
                .storage
                .upgrade()
                .is_some_and(|s| std::ptr::addr_eq(Arc::as_ptr(&s), address))
    };
    {
        let mut kept = PACKED.lock().unwrap_or_else(|e| e.into_inner());
        let kept = kept.get_or_insert_with(HashMap::new);
        match kept.get(&key) {
            Some(entry) if same(entry) => {
                if let Some(packed) = &entry.packed {
                    return Some(packed.clone());
                }
            }
            _ => {
                // A matrix not met before: forget the ones dropped since, and meet it.
                kept.retain(|_, entry| entry.storage.strong_count() > 0);
                let storage: Arc<dyn Any + Send + Sync> = storage;
                kept.insert(
                    key,
                    PackedEntry {
                        storage: Arc::downgrade(&storage),
                        len: w.len(),
                        n,
                        layout,
                        packed: None,
                    },
                );
                return None;
            }
        }
        let used: usize = kept
            .values()
            .filter_map(|e| e.packed.as_ref().map(Kept::bytes))
            .sum();
        if used + 4 * w.len() > limit {
            return None;
        }
    }
    // Second meeting: pack it (outside the lock; the values cannot change meanwhile, the
    // caller holds them).
    let packed = match layout {
        Layout::Panels => Kept::Panels(Arc::new(Packed::new(w, n, codes))),
        Layout::Rows => Kept::Rows(coded::code_rows(w, n).map(Arc::new)),
    };
    let mut kept = PACKED.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(entry) = kept.get_or_insert_with(HashMap::new).get_mut(&key) {
        if same(entry) {
            entry.packed = Some(packed.clone());
        }
    }
    Some(packed)
}

/// Rotary embeddings for inference on flex: `x · [cos, cos] + rotate_half(x) · [sin, sin]` in
/// one pass over `x` (`[batch, seq, heads, head_dim]`), the tables `[positions, head_dim / 2]`
/// read at `position(item, token)`. The same roundings as `RotaryEmbedding::apply`'s ops (its
/// rotation, a product with a signed permutation, is exact: `0 − x` and `x + 0`; then each
/// product rounded, then their sum), so the same values bit for bit, without its matmul,
/// concatenations and broadcasts. `None` unless `B` is flex itself (no autodiff) and the
/// kernels are on.
pub(crate) fn rope_rows<B: Backend>(
    x: &Tensor<B, 4>,
    cos: &Tensor<B, 2>,
    sin: &Tensor<B, 2>,
    position: impl Fn(usize, usize) -> usize,
) -> Option<Tensor<B, 4>> {
    if !is_plain_flex::<B>() {
        return None;
    }
    let [batch, seq, heads, dim] = x.dims();
    let half = dim / 2;
    let (xv, cv, sv) = (flex(x)?, flex(cos)?, flex(sin)?);
    let (xs, cs, ss) = (slice(&xv), slice(&cv), slice(&sv));
    let mut out = vec![0.0f32; xs.len()];
    for item in 0..batch {
        for token in 0..seq {
            let at = position(item, token) * half;
            let (c, s) = (cs.get(at..at + half)?, ss.get(at..at + half)?);
            let start = (item * seq + token) * heads * dim;
            for (o, x) in out[start..start + heads * dim]
                .chunks_exact_mut(dim)
                .zip(xs[start..start + heads * dim].chunks_exact(dim))
            {
                let (x1, x2) = x.split_at(half);
                let (o1, o2) = o.split_at_mut(half);
                for j in 0..half {
                    o1[j] = x1[j] * c[j] + (0.0 - x2[j]) * s[j];
                    o2[j] = x2[j] * c[j] + (x1[j] + 0.0) * s[j];
                }
            }
        }
    }
    Some(constant(out, [batch, seq, heads, dim]))
}

/// Positions a KV-cache buffer holds at least; it doubles when full.
const CACHE_MIN_CAPACITY: usize = 64;

/// Appends a step's keys and values (`[batch, heads, seq, dim]` each) to a layer's KV-cache
/// buffers after their first `len` positions, and returns `false` (doing nothing) unless `B`
/// is flex itself (inference) with `f32` values and the kernels are on. The buffers
/// (`[batch, heads, capacity, dim]`) are written where they lie while the cache alone holds
/// them (a cloned cache copies first: flex's copy-on-write), and grow by doubling: a decoding
/// step copies its own rows, not the whole cache as `cat` would.
pub(crate) fn append_kv<B: Backend>(
    layer: &mut Option<(Tensor<B, 4>, Tensor<B, 4>)>,
    len: usize,
    keys: &Tensor<B, 4>,
    values: &Tensor<B, 4>,
) -> bool {
    if std::any::TypeId::of::<B>() != std::any::TypeId::of::<Flex>() {
        return false;
    }
    let (Some(keys), Some(values)) = (flex(keys), flex(values)) else {
        return false;
    };
    let (key_buffer, value_buffer) = match layer.take() {
        Some((k, v)) => (Some(k), Some(v)),
        None => (None, None),
    };
    let key_buffer = append_rows(key_buffer, len, &keys);
    let value_buffer = append_rows(value_buffer, len, &values);
    *layer = Some((as_backend(key_buffer), as_backend(value_buffer)));
    true
}

/// [`append_kv`] for one buffer: `new`'s rows at positions `len..` of each item and head.
fn append_rows<B: Backend>(
    buffer: Option<Tensor<B, 4>>,
    len: usize,
    new: &FlexTensor,
) -> Tensor<Flex, 4> {
    let shape = new.layout().shape();
    let [batch, heads, seq, dim] = [shape[0], shape[1], shape[2], shape[3]];
    let end = len + seq;
    // The buffer's own handle is dropped here, so the one returned is its only owner.
    let old = buffer.and_then(|b| flex_view(&b));
    if let Some(old) = &old {
        let shape = old.layout().shape();
        assert!(
            shape[0] == batch && shape[1] == heads && shape[3] == dim,
            "a KV cache continues the batch it started with"
        );
    }
    let mut buffer = match old {
        Some(old)
            if old.layout().shape()[2] >= end
                && old.is_contiguous()
                && old.layout().start_offset() == 0 =>
        {
            old
        }
        old => {
            let capacity = end.next_power_of_two().max(CACHE_MIN_CAPACITY);
            let mut grown = vec![0.0f32; batch * heads * capacity * dim];
            if let Some(old) = old.map(contiguous) {
                let old_capacity = old.layout().shape()[2];
                for (to, from) in grown
                    .chunks_exact_mut(capacity * dim)
                    .zip(slice(&old).chunks_exact(old_capacity * dim))
                {
                    to[..len * dim].copy_from_slice(&from[..len * dim]);
                }
            }
            FlexTensor::from_data(TensorData::new(grown, [batch, heads, capacity, dim]))
        }
    };
    let capacity = buffer.layout().shape()[2];
    let stored = buffer.storage_mut::<f32>();
    for (to, rows) in stored
        .chunks_exact_mut(capacity * dim)
        .zip(slice(new).chunks_exact(seq * dim))
    {
        to[len * dim..end * dim].copy_from_slice(rows);
    }
    Tensor::from_primitive(TensorPrimitive::Float(buffer))
}

/// `gelu_tanh(x)`, as a value (no autodiff) or linearised (autodiff): `None` off flex.
pub(crate) fn gelu<B: Backend, const D: usize>(x: &Tensor<B, D>) -> Option<Tensor<B, D>> {
    let n = x.shape().num_elements();
    if n < INFERENCE_MIN && !B::ad_enabled(&x.device()) {
        return None;
    }
    let values = flex(x)?;
    let shape = x.dims();
    if B::ad_enabled(&x.device()) {
        let (mut d, mut c) = (vec![0.0; n], vec![0.0; n]);
        super::gelu_local(slice(&values), &mut d, &mut c);
        Some(x.clone() * constant(d, shape) + constant(c, shape))
    } else {
        let mut y = vec![0.0; n];
        super::gelu(slice(&values), &mut y);
        Some(constant(y, shape))
    }
}

/// `silu(g) · u`, as a value or linearised: `None` off flex.
pub(crate) fn swiglu<B: Backend, const D: usize>(
    g: &Tensor<B, D>,
    u: &Tensor<B, D>,
) -> Option<Tensor<B, D>> {
    let n = g.shape().num_elements();
    if n < INFERENCE_MIN && !B::ad_enabled(&g.device()) {
        return None;
    }
    let (gv, uv) = (flex(g)?, flex(u)?);
    let shape = g.dims();
    if B::ad_enabled(&g.device()) {
        let (mut dg, mut du, mut c) = (vec![0.0; n], vec![0.0; n], vec![0.0; n]);
        super::swiglu_local(slice(&gv), slice(&uv), &mut dg, &mut du, &mut c);
        Some(g.clone() * constant(dg, shape) + u.clone() * constant(du, shape) + constant(c, shape))
    } else {
        let mut y = vec![0.0; n];
        super::swiglu(slice(&gv), slice(&uv), &mut y);
        Some(constant(y, shape))
    }
}

/// The masked cross-entropy sum and its gradient times `scale` (see `loss::loss_and_grad`):
/// `None` off flex or when a target is out of range.
pub(crate) fn loss_and_grad<B: Backend>(
    logits: &Tensor<B, 2>,
    targets: &Tensor<B, 2, Int>,
    mask: &Tensor<B, 2>,
    scale: f64,
) -> Option<(Tensor<B, 1>, Tensor<B, 2>)> {
    let values = flex(logits)?;
    let [rows, vocab] = logits.dims();
    let targets = targets
        .clone()
        .into_data()
        .convert::<i64>()
        .to_vec::<i64>()
        .ok()?
        .into_iter()
        .map(|t| usize::try_from(t).ok().filter(|&t| t < vocab))
        .collect::<Option<Vec<_>>>()?;
    let mask = mask
        .clone()
        .into_data()
        .convert::<f32>()
        .to_vec::<f32>()
        .ok()?;
    if targets.len() != rows || mask.len() != rows {
        return None;
    }
    let mut grad = vec![0.0; rows * vocab];
    let loss = super::softmax_cross_entropy(
        slice(&values),
        vocab,
        &targets,
        &mask,
        scale as f32,
        &mut grad,
    );
    Some((
        constant(vec![loss as f32], [1]),
        constant(grad, [rows, vocab]),
    ))
}

/// The backward pass of a value whose gradients were computed in the forward pass: the
/// upstream gradient (a scalar) times each stored gradient, or the stored gradient itself when
/// the upstream one is 1 (a loss's usual case: no pass over memory at all).
#[derive(Debug)]
struct Precomputed;

impl<const N: usize> Backward<Flex, N> for Precomputed {
    type State = Vec<FlexTensor>;

    fn backward(self, ops: Ops<Self::State, N>, grads: &mut Gradients, _: &mut Checkpointer) {
        let upstream = grads.consume::<Flex>(&ops.node);
        let upstream =
            Tensor::<Flex, 1>::from_primitive(TensorPrimitive::Float(upstream)).into_scalar();
        for (parent, grad) in ops.parents.into_iter().zip(ops.state) {
            let Some(parent) = parent else { continue };
            let grad = if upstream == 1.0 {
                grad
            } else {
                (Tensor::<Flex, 2>::from_primitive(TensorPrimitive::Float(grad)) * upstream)
                    .into_primitive()
                    .tensor()
            };
            grads.register::<Flex>(parent.id, grad);
        }
    }
}

/// `value` (shape `[1]`) as a node of autodiff over flex whose gradient with respect to each
/// `input` is the matching precomputed `gradient`: one node and no surrogate products (see
/// `loss::with_gradients`). `None` unless `B` is autodiff over flex and the kernels are on.
pub(crate) fn with_gradients<B: AutodiffBackend, const N: usize>(
    value: &Tensor<B::InnerBackend, 1>,
    inputs: [&Tensor<B, 2>; N],
    gradients: [&Tensor<B::InnerBackend, 2>; N],
) -> Option<Tensor<B, 1>> {
    if std::any::TypeId::of::<B>() != std::any::TypeId::of::<Tracked>() || !is_flex::<B>() {
        return None;
    }
    let inner = |t: &dyn Any| {
        let t = t
            .downcast_ref::<Tensor<Flex, 2>>()
            .expect("B is autodiff over flex");
        t.clone().into_primitive().tensor()
    };
    let nodes = inputs.map(|t| {
        let t: &dyn Any = t;
        let t = t
            .downcast_ref::<Tensor<Tracked, 2>>()
            .expect("B is autodiff over flex");
        t.clone().into_primitive().tensor().node
    });
    let value: &dyn Any = value;
    let value = value
        .downcast_ref::<Tensor<Flex, 1>>()
        .expect("B is autodiff over flex")
        .clone()
        .into_primitive()
        .tensor();
    let output = match Precomputed
        .prepare::<NoCheckpointing>(nodes)
        .compute_bound()
        .stateful()
    {
        OpsKind::Tracked(prep) => {
            let state = gradients.iter().map(|g| inner(*g)).collect();
            prep.finish(state, value)
        }
        OpsKind::UnTracked(prep) => prep.finish(value),
    };
    Some(as_backend(Tensor::<Tracked, 1>::from_primitive(
        TensorPrimitive::Float(output),
    )))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn values(len: usize, scale: f32) -> Vec<f32> {
        (0..len)
            .map(|i| ((i * 7919 % 1000) as f32 / 500.0 - 1.0) * scale)
            .collect()
    }

    fn address(w: &Tensor<Flex, 2>) -> usize {
        let w = flex_view(w).expect("flex f32");
        slice(&w).as_ptr() as usize
    }

    fn is_packed(w: &Tensor<Flex, 2>) -> bool {
        let kept = PACKED.lock().unwrap_or_else(|e| e.into_inner());
        kept.as_ref()
            .and_then(|kept| kept.get(&address(w)))
            .is_some_and(|e| e.packed.is_some() && e.storage.strong_count() > 0)
    }

    /// The product with the packed copy, checked bit for bit against the row-major kernel on
    /// the tensor's values as they are now.
    fn check(x: &Tensor<Flex, 2>, w: &Tensor<Flex, 2>) {
        let [rows, _] = x.dims();
        let n = w.dims()[1];
        let got = matmul_few_rows(x, w, None).expect("a few rows on flex");
        let got = got.into_data().to_vec::<f32>().unwrap();
        let (xv, wv) = (flex(x).unwrap(), flex(w).unwrap());
        let want = super::super::matmul::rows_times(slice(&xv), rows, slice(&wv), n, None);
        assert_eq!(
            got.iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
            want.iter().map(|v| v.to_bits()).collect::<Vec<_>>()
        );
    }

    /// A weight is packed the second time it is met, and a packed copy never outlives the
    /// values it was made from: written in place (same address, flex's copy-on-write) or
    /// replaced, the matrix is met anew and multiplied with its new values.
    #[test]
    fn a_packed_weight_follows_its_values() {
        let device = Default::default();
        let (rows, k, n) = (3, 40, 48);
        let x = Tensor::<Flex, 2>::from_data(
            TensorData::new(values(rows * k, 1.0), [rows, k]),
            &device,
        );
        let mut w =
            Tensor::<Flex, 2>::from_data(TensorData::new(values(k * n, 0.5), [k, n]), &device);
        check(&x, &w);
        assert!(!is_packed(&w), "packed at the first meeting");
        check(&x, &w);
        assert!(is_packed(&w), "not packed at the second meeting");
        let before = address(&w);
        w = w.mul_scalar(3.0).add_scalar(0.25);
        eprintln!(
            "same address after an in-place write: {}",
            address(&w) == before
        );
        assert!(!is_packed(&w), "a packed copy outlived its values");
        for _ in 0..3 {
            check(&x, &w);
        }
        assert!(is_packed(&w));
        let other = w.clone().sub_scalar(1.0);
        check(&x, &other);
        check(&x, &other);
        assert!(is_packed(&other) && is_packed(&w));
    }
}
