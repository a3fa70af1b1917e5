//! Invariants of the decoder, written once as `check_*(device)` and run on every backend
//! compiled in: CPU (flex) always, wgpu under the `wgpu` feature.
//!
//! (Long because every invariant is one `check_*` body shared by all backends; splitting it
//! would repeat the per-backend test lists.)

use burn::backend::Flex;
use burn::module::{Module, ModuleVisitor, Param};
use burn::tensor::backend::{AutodiffBackend, Backend};
use burn::tensor::{Int, Tensor, TensorData};
use ember_transformer::{
    generate, Architecture, Decoder, DecoderConfig, GenerateConfig, KvCache, Sampling, TokenBatch,
};

const ARCHITECTURES: [Architecture; 2] = [Architecture::Llama, Architecture::Gpt2];

fn config(architecture: Architecture) -> DecoderConfig {
    // A larger init than GPT-2's makes logits far apart, so greedy choices are not ties.
    DecoderConfig::new(97, 32, 2, 4, 48)
        .with_architecture(architecture)
        .with_init_std(0.3)
}

fn model<B: Backend>(architecture: Architecture, device: &B::Device) -> Decoder<B> {
    B::seed(device, 7);
    config(architecture).init(device).unwrap()
}

fn tokens<B: Backend>(rows: &[Vec<u32>], device: &B::Device) -> Tensor<B, 2, Int> {
    let data = rows
        .iter()
        .flatten()
        .map(|&t| i64::from(t))
        .collect::<Vec<_>>();
    Tensor::from_data(TensorData::new(data, [rows.len(), rows[0].len()]), device)
}

fn values<B: Backend, const D: usize>(t: Tensor<B, D>) -> Vec<f32> {
    t.into_data().convert::<f32>().to_vec::<f32>().unwrap()
}

fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

fn sequence(len: usize) -> Vec<u32> {
    (0..len as u32).map(|i| (i * 31 + 5) % 97).collect()
}

fn check_causality<B: Backend>(device: &B::Device) {
    for architecture in ARCHITECTURES {
        let model = model::<B>(architecture, device);
        let original = sequence(20);
        let mut changed = original.clone();
        changed[10] = (changed[10] + 1) % 97;
        let a = values(model.forward(tokens::<B>(&[original], device)));
        let b = values(model.forward(tokens::<B>(&[changed], device)));
        let before = 10 * 97;
        assert_eq!(
            max_abs_diff(&a[..before], &b[..before]),
            0.0,
            "{architecture:?}: a future token changed the past"
        );
        assert!(
            max_abs_diff(&a[before..], &b[before..]) > 1e-3,
            "{architecture:?}: the change had no effect at all"
        );
    }
}

fn check_cached_equals_full<B: Backend>(device: &B::Device) {
    for architecture in ARCHITECTURES {
        let model = model::<B>(architecture, device);
        let rows = vec![sequence(24), sequence(30)[6..].to_vec()];
        let full = values(model.forward(tokens::<B>(&rows, device)));
        let mut cache = KvCache::new(2);
        // A prefill of 5 tokens, then one token at a time.
        let mut cached = vec![Vec::new(); 2];
        let mut append = |logits: Tensor<B, 3>| {
            let [_, seq, vocab] = logits.dims();
            let v = values(logits);
            for (b, out) in cached.iter_mut().enumerate() {
                out.extend_from_slice(&v[b * seq * vocab..(b + 1) * seq * vocab]);
            }
        };
        let prefix = rows.iter().map(|r| r[..5].to_vec()).collect::<Vec<_>>();
        append(model.forward_cached(tokens::<B>(&prefix, device), &mut cache));
        for t in 5..24 {
            let step = rows.iter().map(|r| vec![r[t]]).collect::<Vec<_>>();
            append(model.forward_cached(tokens::<B>(&step, device), &mut cache));
        }
        let cached = cached.concat();
        let diff = max_abs_diff(&full, &cached);
        assert!(
            diff < 1e-4,
            "{architecture:?}: cached decoding is off by {diff}"
        );
    }
}

/// A cache that grows past its first buffers (on flex: 64 positions, then 128), and a clone of
/// it that then takes other tokens: each gives the logits of a full forward pass over its own
/// sequence (writing into one leaves the other's rows alone).
fn check_cache_grows_and_clones<B: Backend>(device: &B::Device) {
    B::seed(device, 7);
    let model = DecoderConfig::new(97, 32, 2, 4, 150)
        .with_init_std(0.3)
        .init::<B>(device)
        .unwrap();
    let a = sequence(140);
    let mut b = a.clone();
    for (t, token) in b.iter_mut().enumerate().skip(100) {
        *token = (t as u32 * 17 + 3) % 97;
    }
    let step = |cache: &mut KvCache<B>, part: &[u32]| {
        let logits = values(model.forward_cached(tokens::<B>(&[part.to_vec()], device), cache));
        logits[logits.len() - 97..].to_vec()
    };
    let full = |row: &[u32]| {
        let logits = values(model.forward(tokens::<B>(&[row.to_vec()], device)));
        logits[logits.len() - 97..].to_vec()
    };
    let mut cache = KvCache::new(2);
    step(&mut cache, &a[..40]);
    for t in 40..100 {
        step(&mut cache, &a[t..=t]);
    }
    let mut clone = cache.clone();
    let (mut last_a, mut last_b) = (Vec::new(), Vec::new());
    for t in 100..140 {
        last_a = step(&mut cache, &a[t..=t]);
        last_b = step(&mut clone, &b[t..=t]);
    }
    for (what, cached, row) in [("original", &last_a, &a), ("clone", &last_b, &b)] {
        let diff = max_abs_diff(cached, &full(row));
        assert!(diff < 1e-4, "{what}: cached decoding is off by {diff}");
    }
}

fn check_padded_batch_equals_single_prompts<B: Backend>(device: &B::Device) {
    for architecture in ARCHITECTURES {
        let model = model::<B>(architecture, device);
        let prompts = vec![sequence(3), sequence(11), vec![42]];
        let config = GenerateConfig {
            max_new_tokens: 8,
            sampling: Sampling::Greedy,
            ..Default::default()
        };
        let batched = generate(&model, &prompts, &config).unwrap();
        for (prompt, out) in prompts.iter().zip(&batched) {
            let alone = generate(&model, std::slice::from_ref(prompt), &config).unwrap();
            assert_eq!(
                alone[0], *out,
                "{architecture:?}: left padding changed the output"
            );
            assert_eq!(out.tokens.len(), 8);
        }
    }
}

/// Continuous batching: sequences prefilled alone and joined into one left-padded cache
/// (`KvCache::extend`), some leaving it mid-way (`retain_rows`), decode each row as it decodes
/// alone, within `tolerance` (0 on flex: bit for bit).
fn check_joined_rows_decode_as_alone<B: Backend>(device: &B::Device, tolerance: f32) {
    let gqa = config(Architecture::Llama).with_n_kv_heads(Some(2));
    let configs = ARCHITECTURES.map(config).into_iter().chain([gqa]);
    for config in configs {
        B::seed(device, 7);
        let model = config.init::<B>(device).unwrap();
        let layers = model.config().n_layers;
        let prompts = [sequence(5), sequence(13), vec![42, 7], sequence(9)];
        // Feeds row `r` token `(r * 7 + step) % 97` at each step.
        let next = |row: usize, step: usize| ((row * 7 + step * 3) % 97) as u32;
        let steps = 8;
        // Alone: the last-position logits after the prompt and after each step.
        let alone = prompts
            .iter()
            .enumerate()
            .map(|(row, prompt)| {
                let mut cache = KvCache::new(layers);
                let mut out = vec![values(model.forward_cached_last(
                    tokens::<B>(std::slice::from_ref(prompt), device),
                    &mut cache,
                ))];
                for step in 0..steps {
                    let logits = model
                        .forward_cached(tokens::<B>(&[vec![next(row, step)]], device), &mut cache);
                    out.push(values(logits));
                }
                out
            })
            .collect::<Vec<_>>();
        // Joined: rows 0 and 1 start, row 2 joins after 2 steps, row 3 after 4; row 1 leaves
        // after 5 steps.
        let mut cache = KvCache::<B>::new(layers);
        let mut live: Vec<(usize, usize)> = Vec::new(); // (row, its next step)
        let join = |row: usize, cache: &mut KvCache<B>, live: &mut Vec<(usize, usize)>| {
            let mut single = KvCache::new(layers);
            let first = values(model.forward_cached_last(
                tokens::<B>(std::slice::from_ref(&prompts[row]), device),
                &mut single,
            ));
            assert!(max_abs_diff(&first, &alone[row][0]) <= tolerance);
            cache.extend(single).unwrap();
            live.push((row, 0));
        };
        join(0, &mut cache, &mut live);
        join(1, &mut cache, &mut live);
        for step in 0..steps + 4 {
            if step == 2 {
                join(2, &mut cache, &mut live);
            }
            if step == 4 {
                join(3, &mut cache, &mut live);
            }
            if step == 5 {
                let keep = (0..live.len())
                    .filter(|&i| live[i].0 != 1)
                    .collect::<Vec<_>>();
                cache.retain_rows(&keep).unwrap();
                live.retain(|&(row, _)| row != 1);
            }
            // Rows done with their steps leave too.
            let keep = (0..live.len())
                .filter(|&i| live[i].1 < steps)
                .collect::<Vec<_>>();
            cache.retain_rows(&keep).unwrap();
            live.retain(|&(_, at)| at < steps);
            assert_eq!(cache.rows(), live.len());
            if live.is_empty() {
                break;
            }
            let input = live
                .iter()
                .map(|&(row, at)| vec![next(row, at)])
                .collect::<Vec<_>>();
            let logits = values(model.forward_cached(tokens::<B>(&input, device), &mut cache));
            let vocab = logits.len() / live.len();
            for (i, (row, at)) in live.iter_mut().enumerate() {
                let got = &logits[i * vocab..(i + 1) * vocab];
                let diff = max_abs_diff(got, &alone[*row][*at + 1]);
                assert!(
                    diff <= tolerance,
                    "{:?} row {row} step {at}: off by {diff} in a batch of {}",
                    config.architecture,
                    input.len()
                );
                *at += 1;
            }
        }
        assert!(
            live.iter().all(|&(_, at)| at == steps),
            "every row ran its steps"
        );
    }
}

/// Every parameter's gradient, flattened, in the module's order.
struct Grads<'a, B: AutodiffBackend> {
    grads: &'a <B as AutodiffBackend>::Gradients,
    out: Vec<Vec<f32>>,
}

impl<B: AutodiffBackend> ModuleVisitor<B> for Grads<'_, B> {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
        let grad = param
            .val()
            .grad(self.grads)
            .expect("every parameter has a gradient");
        self.out.push(values(grad));
    }
}

fn param_grads<B: AutodiffBackend>(model: &Decoder<B>, loss: Tensor<B, 1>) -> (f32, Vec<Vec<f32>>) {
    let grads = loss.backward();
    let mut visitor = Grads::<B> {
        grads: &grads,
        out: Vec::new(),
    };
    model.visit(&mut visitor);
    (values(loss)[0], visitor.out)
}

/// Which parameters got a gradient, in the module's order.
struct HasGrad<'a, B: AutodiffBackend> {
    grads: &'a <B as AutodiffBackend>::Gradients,
    out: Vec<bool>,
}

impl<B: AutodiffBackend> ModuleVisitor<B> for HasGrad<'_, B> {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
        self.out.push(param.val().grad(self.grads).is_some());
    }
}

/// `train_top_blocks(n)` leaves gradients to the top `n` blocks and the final norm only, and
/// changes no output.
fn check_train_top_blocks<B: AutodiffBackend>(device: &B::Device) {
    for architecture in ARCHITECTURES {
        let rows = vec![sequence(21)];
        let batch = TokenBatch::<B>::from_rows(&rows, device).unwrap();
        // One initialisation, cloned: the backend's seeded generator is global, and tests on
        // other threads draw from it between a seed and an init.
        let base = model::<B>(architecture, device);
        let trained = |n: Option<usize>| {
            let model = base.clone();
            let model = match n {
                Some(n) => model.train_top_blocks(n),
                None => model,
            };
            let loss = model.loss(&batch).unwrap();
            let value = values(loss.clone())[0];
            let grads = loss.backward();
            let mut visitor = HasGrad::<B> {
                grads: &grads,
                out: Vec::new(),
            };
            model.visit(&mut visitor);
            (
                value,
                visitor.out.iter().filter(|&&g| g).count(),
                visitor.out.len(),
            )
        };
        let (loss, all, params) = trained(None);
        assert_eq!(
            all, params,
            "{architecture:?}: every parameter trains by default"
        );
        // Llama: token embedding, RMSNorm's weight; GPT-2: token and position embeddings,
        // LayerNorm's weight and bias.
        let (embeddings, final_norm) = match architecture {
            Architecture::Llama => (1, 1),
            Architecture::Gpt2 => (2, 2),
        };
        let (norm_loss, norm, _) = trained(Some(0));
        assert_eq!(
            norm_loss, loss,
            "{architecture:?}: freezing changes no output"
        );
        assert_eq!(
            norm, final_norm,
            "{architecture:?}: the final norm alone trains"
        );
        let block = (params - embeddings - norm) / 2;
        assert_eq!(trained(Some(1)).1, norm + block, "{architecture:?}");
        assert_eq!(trained(Some(2)).1, params - embeddings, "{architecture:?}");
        assert_eq!(trained(Some(9)).1, params - embeddings, "{architecture:?}");
    }
}

/// The fused training loss is the plain loss: same value, same gradient for every parameter.
fn check_train_loss_equals_loss<B: AutodiffBackend>(device: &B::Device) {
    for architecture in ARCHITECTURES {
        let model = model::<B>(architecture, device);
        let rows = vec![sequence(21), sequence(30)[9..].to_vec()];
        let masks = vec![
            (0..20).map(|i| i % 3 != 0).collect::<Vec<_>>(),
            (0..20).map(|i| i >= 5).collect(),
        ];
        let batch = TokenBatch::<B>::from_rows_masked(&rows, &masks, device).unwrap();
        let (plain, plain_grads) = param_grads(&model, model.loss(&batch).unwrap());
        let (fused, fused_grads) = param_grads(&model, model.train_loss(&batch).unwrap());
        assert!(
            (plain - fused).abs() < 1e-5,
            "{architecture:?}: {plain} vs {fused}"
        );
        assert_eq!(plain_grads.len(), fused_grads.len());
        for (i, (a, b)) in plain_grads.iter().zip(&fused_grads).enumerate() {
            let diff = max_abs_diff(a, b);
            let scale = a.iter().fold(0.0f32, |m, x| m.max(x.abs()));
            assert!(
                diff <= 1e-4 * scale.max(1e-3),
                "{architecture:?}: parameter {i} gradient differs by {diff} (max {scale})"
            );
        }
    }
}

mod cpu {
    use super::*;
    type B = Flex;

    #[test]
    fn train_loss_equals_loss() {
        check_train_loss_equals_loss::<burn::backend::Autodiff<B>>(&Default::default());
    }

    #[test]
    fn train_top_blocks() {
        check_train_top_blocks::<burn::backend::Autodiff<B>>(&Default::default());
    }

    #[test]
    fn causality() {
        check_causality::<B>(&Default::default());
    }

    #[test]
    fn cached_equals_full() {
        check_cached_equals_full::<B>(&Default::default());
    }

    #[test]
    fn cache_grows_and_clones() {
        check_cache_grows_and_clones::<B>(&Default::default());
    }

    #[test]
    fn padded_batch_equals_single_prompts() {
        check_padded_batch_equals_single_prompts::<B>(&Default::default());
    }

    #[test]
    fn joined_rows_decode_as_alone() {
        check_joined_rows_decode_as_alone::<B>(&Default::default(), 1e-5);
    }

    #[test]
    fn generation_stops_at_a_stop_token_and_is_seeded() {
        let device = Default::default();
        let model = model::<B>(Architecture::Llama, &device);
        let sampling = Sampling::TopP {
            p: 0.9,
            temperature: 1.0,
        };
        let config = GenerateConfig {
            max_new_tokens: 20,
            sampling,
            seed: 3,
            ..Default::default()
        };
        let a = generate(&model, &[vec![1, 2, 3]], &config).unwrap();
        assert_eq!(a, generate(&model, &[vec![1, 2, 3]], &config).unwrap());
        // Make the third drawn token a stop token: generation ends right there.
        let stop = a[0].tokens[2];
        let first = a[0].tokens.iter().position(|&t| t == stop).unwrap();
        let config = GenerateConfig {
            stop_tokens: vec![stop],
            ..config
        };
        let b = generate(&model, &[vec![1, 2, 3]], &config).unwrap();
        assert_eq!(b[0].tokens, a[0].tokens[..=first]);
        assert_eq!(b[0].finish, ember_transformer::FinishReason::Stop);
    }

    #[test]
    fn generation_rejects_bad_prompts() {
        let device = Default::default();
        let model = model::<B>(Architecture::Llama, &device);
        let config = GenerateConfig::default();
        assert!(matches!(
            generate(&model, &[vec![500]], &config),
            Err(ember_transformer::Error::TokenOutOfRange { id: 500, .. })
        ));
        assert!(generate(&model, &[vec![]], &config).is_err());
        assert!(matches!(
            generate(&model, &[sequence(48)], &config),
            Err(ember_transformer::Error::TooLong { .. })
        ));
    }
}

#[cfg(feature = "wgpu")]
mod wgpu {
    use super::*;
    use burn::backend::Wgpu;
    use burn::record::{BinBytesRecorder, FullPrecisionSettings, Recorder};

    type B = Wgpu;

    #[test]
    fn train_loss_equals_loss() {
        check_train_loss_equals_loss::<burn::backend::Autodiff<B>>(&Default::default());
    }

    #[test]
    fn causality() {
        check_causality::<B>(&Default::default());
    }

    #[test]
    fn cached_equals_full() {
        check_cached_equals_full::<B>(&Default::default());
    }

    #[test]
    fn cache_grows_and_clones() {
        check_cache_grows_and_clones::<B>(&Default::default());
    }

    #[test]
    fn same_logits_as_cpu() {
        let recorder = BinBytesRecorder::<FullPrecisionSettings>::new();
        for architecture in ARCHITECTURES {
            let cpu_device = Default::default();
            let cpu = model::<Flex>(architecture, &cpu_device);
            let bytes = Recorder::<Flex>::record(&recorder, cpu.clone().into_record(), ()).unwrap();
            let device = Default::default();
            let record = Recorder::<B>::load(&recorder, bytes, &device).unwrap();
            let gpu = config(architecture)
                .init::<B>(&device)
                .unwrap()
                .load_record(record);
            let rows = vec![sequence(24)];
            let expected = values(cpu.forward(tokens::<Flex>(&rows, &cpu_device)));
            let actual = values(gpu.forward(tokens::<B>(&rows, &device)));
            let diff = max_abs_diff(&expected, &actual);
            assert!(
                diff < 1e-3,
                "{architecture:?}: wgpu differs from the CPU by {diff}"
            );
        }
    }
}

/// Ember's flex kernels (activations, the attention softmax, the loss) against burn's own ops
/// on the same backend: the same logits, losses and gradients, with and without an attention
/// mask on top of the causal one, for both architectures.
#[cfg(feature = "flex")]
mod flex_kernels {
    use super::*;
    use burn::backend::Autodiff;
    use burn::module::{AutodiffModule, ModuleMapper};
    use burn::tensor::Bool;
    use ember_transformer::{causal_attention, set_flex_kernels, DecoderInput, Positions};

    type A = Autodiff<Flex>;

    fn both<T>(f: impl Fn() -> T) -> (T, T) {
        set_flex_kernels(false);
        let reference = f();
        set_flex_kernels(true);
        (reference, f())
    }

    fn close(a: &[f32], b: &[f32], what: &str) {
        assert_eq!(a.len(), b.len());
        let scale = a.iter().fold(0.0f32, |m, x| m.max(x.abs())).max(1e-3);
        let diff = max_abs_diff(a, b);
        assert!(
            diff <= 2e-5 * scale,
            "{what}: differs by {diff} (max {scale})"
        );
    }

    /// Flex's decode kernel starts a left-padded row at its first key and the few-rows
    /// matmul computes each row on its own: a row's logits do not depend on its batch.
    #[test]
    fn joined_rows_decode_bit_for_bit_as_alone() {
        check_joined_rows_decode_as_alone::<Flex>(&Default::default(), 0.0);
    }

    /// Rounds every weight matrix (`[in, out]`) to Q4_1's form, `q · d + m` with `q` in
    /// 0..=15 and one `(d, m)` per block of 32 inputs of each output, and the token embedding
    /// (`[vocab, width]`, the tied head) in blocks along its rows, as a model imported from a
    /// quantised GGUF file holds them.
    #[derive(Default)]
    struct Quantise {
        path: Vec<String>,
    }

    impl ModuleMapper<Flex> for Quantise {
        fn enter_module(&mut self, name: &str, _: &str) {
            self.path.push(name.to_string());
        }

        fn exit_module(&mut self, _: &str, _: &str) {
            self.path.pop();
        }

        fn map_float<const D: usize>(
            &mut self,
            param: Param<Tensor<Flex, D>>,
        ) -> Param<Tensor<Flex, D>> {
            let embedding = self.path.iter().any(|p| p.contains("embedding"));
            param.map(|t| {
                if D != 2 {
                    return t;
                }
                let dims = t.dims();
                let (rows, cols) = (dims[0], dims[1]);
                // Where value `i` of block `(c, j)` lies: blocks down the columns of `[in,
                // out]`, along the rows of the embedding.
                let at = |c: usize, i: usize| {
                    if embedding {
                        c * cols + i
                    } else {
                        i * cols + c
                    }
                };
                let (lines, len) = if embedding {
                    (rows, cols)
                } else {
                    (cols, rows)
                };
                let mut v = values(t.clone());
                for c in 0..lines {
                    for start in (0..len).step_by(32) {
                        let block = start..(start + 32).min(len);
                        let m = block
                            .clone()
                            .map(|i| v[at(c, i)])
                            .fold(f32::INFINITY, f32::min);
                        let top = block.clone().map(|i| v[at(c, i)]).fold(m, f32::max);
                        let d = (top - m) / 15.0;
                        for i in block {
                            let q = ((v[at(c, i)] - m) / d).round().clamp(0.0, 15.0) as i8;
                            v[at(c, i)] = f32::from(q) * d + m;
                        }
                    }
                }
                Tensor::from_data(TensorData::new(v, dims), &t.device())
            })
        }
    }

    /// A quantised model's weights are packed as their codes and decode to the same logits
    /// bit for bit as with float panels, at one row and at several (grouped-query attention,
    /// Llama's shape).
    #[test]
    fn coded_weights_decode_bit_for_bit() {
        let device = Default::default();
        Flex::seed(&device, 12);
        let model = DecoderConfig::new(97, 64, 2, 4, 48)
            .with_architecture(Architecture::Llama)
            .with_n_kv_heads(Some(2))
            .with_init_std(0.3)
            .init::<Flex>(&device)
            .unwrap()
            .map(&mut Quantise::default());
        let layers = model.config().n_layers;
        let decode = |rows: usize| {
            let prompts = (0..rows)
                .map(|row| (0..5).map(|i| ((row * 13 + i * 7) % 97) as u32).collect())
                .collect::<Vec<_>>();
            let mut cache = KvCache::new(layers);
            model.forward_cached_last(tokens::<Flex>(&prompts, &device), &mut cache);
            (0..4)
                .map(|step| {
                    let input = (0..rows)
                        .map(|row| vec![((row * 5 + step * 11) % 97) as u32])
                        .collect::<Vec<_>>();
                    values(model.forward_cached(tokens::<Flex>(&input, &device), &mut cache))
                })
                .collect::<Vec<_>>()
        };
        for rows in [1, 3, 8] {
            ember_transformer::set_coded_weights(true);
            let coded = decode(rows);
            let kept = ember_transformer::packed_weights();
            // Every block's query-key-value, output, gate-up and down matrices.
            #[cfg(target_arch = "x86_64")]
            if std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma") {
                assert!(kept.coded > 4 * layers && kept.coded_heads >= 1, "{kept:?}");
            }
            ember_transformer::set_coded_weights(false);
            let floats = decode(rows);
            ember_transformer::set_coded_weights(true);
            for (step, (a, b)) in coded.iter().zip(&floats).enumerate() {
                assert!(
                    a.iter().zip(b).all(|(a, b)| a.to_bits() == b.to_bits()),
                    "{rows} rows, step {step}: off by {}",
                    max_abs_diff(a, b)
                );
            }
        }
    }

    /// With the few-rows limit raised past the batch, a wide batch (24 rows, more than the
    /// default 16) still decodes each row bit for bit as alone: the few-rows kernels take
    /// every product (packed weights from the second step on) instead of the gemm.
    #[test]
    fn a_raised_few_rows_limit_keeps_a_wide_batch_bit_for_bit() {
        let device = Default::default();
        Flex::seed(&device, 11);
        let model = DecoderConfig::new(97, 96, 2, 4, 48)
            .with_init_std(0.3)
            .init::<Flex>(&device)
            .unwrap();
        let layers = model.config().n_layers;
        let rows = 24;
        let prompt = |row: usize| (0..6).map(|i| ((row * 13 + i * 7) % 97) as u32).collect();
        let next = |row: usize, step: usize| ((row * 5 + step * 11) % 97) as u32;
        let steps = 3;
        ember_transformer::set_few_rows_limit(rows);
        let alone = (0..rows)
            .map(|row| {
                let mut cache = KvCache::new(layers);
                model.forward_cached_last(tokens::<Flex>(&[prompt(row)], &device), &mut cache);
                (0..steps)
                    .map(|step| {
                        values(model.forward_cached(
                            tokens::<Flex>(&[vec![next(row, step)]], &device),
                            &mut cache,
                        ))
                    })
                    .collect::<Vec<_>>()
            })
            .collect::<Vec<_>>();
        let mut cache = KvCache::<Flex>::new(layers);
        for row in 0..rows {
            let mut single = KvCache::new(layers);
            model.forward_cached_last(tokens::<Flex>(&[prompt(row)], &device), &mut single);
            cache.extend(single).unwrap();
        }
        for step in 0..steps {
            let input = (0..rows)
                .map(|row| vec![next(row, step)])
                .collect::<Vec<_>>();
            let logits = values(model.forward_cached(tokens::<Flex>(&input, &device), &mut cache));
            let vocab = logits.len() / rows;
            for (row, alone) in alone.iter().enumerate() {
                let got = &logits[row * vocab..(row + 1) * vocab];
                assert!(
                    got.iter()
                        .zip(&alone[step])
                        .all(|(a, b)| a.to_bits() == b.to_bits()),
                    "row {row} step {step}: off by {} in a batch of {rows}",
                    max_abs_diff(got, &alone[step])
                );
            }
        }
        ember_transformer::set_few_rows_limit(16);
    }

    #[test]
    fn kernels_give_burns_values_and_gradients() {
        let device = Default::default();
        for architecture in ARCHITECTURES {
            let model = model::<A>(architecture, &device);
            let rows = vec![sequence(21), sequence(30)[9..].to_vec()];
            let masks = vec![
                (0..20).map(|i| i % 3 != 0).collect::<Vec<_>>(),
                (0..20).map(|i| i >= 5).collect(),
            ];
            let batch = TokenBatch::<A>::from_rows_masked(&rows, &masks, &device).unwrap();
            for fused in [false, true] {
                let (reference, kernels) = both(|| {
                    let loss = if fused {
                        model.train_loss(&batch).unwrap()
                    } else {
                        model.loss(&batch).unwrap()
                    };
                    param_grads(&model, loss)
                });
                assert!((reference.0 - kernels.0).abs() < 1e-5, "{architecture:?}");
                for (i, (a, b)) in reference.1.iter().zip(&kernels.1).enumerate() {
                    close(
                        a,
                        b,
                        &format!("{architecture:?}, fused {fused}: parameter {i}"),
                    );
                }
            }

            // Two packed documents per row: the second half sees only itself.
            let seq = 20;
            let hidden = Tensor::<A, 2, Bool>::from_data(
                TensorData::new(
                    (0..seq * seq)
                        .map(|i| (i / seq >= 8) && (i % seq < 8))
                        .collect::<Vec<_>>(),
                    [seq, seq],
                ),
                &device,
            )
            .unsqueeze::<4>()
            .expand([2, 4, seq, seq]);
            let (reference, kernels) = both(|| {
                let input = DecoderInput {
                    tokens: batch.inputs.clone(),
                    positions: Positions::Contiguous { start: 0 },
                    mask: Some(hidden.clone()),
                };
                let out = model.forward_hidden(input);
                let logits = values(out.clone());
                let (_, grads) = param_grads(&model, model.head_loss(out, &batch).unwrap());
                (logits, grads)
            });
            close(
                &reference.0,
                &kernels.0,
                &format!("{architecture:?}: masked hidden states"),
            );
            for (i, (a, b)) in reference.1.iter().zip(&kernels.1).enumerate() {
                close(a, b, &format!("{architecture:?}, masked: parameter {i}"));
            }

            // Inference on flex itself.
            let inner = model.valid();
            let (reference, kernels) =
                both(|| values(inner.forward(tokens::<Flex>(&rows[..1], &device))));
            close(&reference, &kernels, &format!("{architecture:?}: logits"));
        }
    }

    /// Decoding steps of 2 and 5 rows take Ember's few-rows matmuls (the tied head read in
    /// place as the embedding's transpose, GPT-2's biases added): the same logits as burn's
    /// matmuls, for the prefill (10 and 25 rows) and three steps after it.
    #[test]
    fn decoding_steps_give_burns_logits() {
        let device = Default::default();
        // Biases start at zero: shift every vector parameter so that they count.
        struct Shift;
        impl ModuleMapper<Flex> for Shift {
            fn map_float<const D: usize>(
                &mut self,
                param: Param<Tensor<Flex, D>>,
            ) -> Param<Tensor<Flex, D>> {
                if D == 1 {
                    param.map(|t| t.clone() + t.ones_like().cumsum(0) * 0.01)
                } else {
                    param
                }
            }
        }
        for architecture in ARCHITECTURES {
            let model = model::<Flex>(architecture, &device).map(&mut Shift);
            for batch in [2, 5] {
                let prompts = (0..batch)
                    .map(|b| sequence(5 + b)[b..].to_vec())
                    .collect::<Vec<_>>();
                let (reference, kernels) = both(|| {
                    let mut cache = KvCache::new(model.config().n_layers);
                    let mut logits =
                        values(model.forward_cached(tokens(&prompts, &device), &mut cache));
                    for step in 0..3 {
                        let next = (0..batch)
                            .map(|b| vec![((step * 13 + b * 7) % 97) as u32])
                            .collect::<Vec<_>>();
                        logits.extend(values(
                            model.forward_cached(tokens(&next, &device), &mut cache),
                        ));
                    }
                    logits
                });
                assert_eq!(reference.len(), batch * (5 + 3) * 97);
                close(
                    &reference,
                    &kernels,
                    &format!("{architecture:?}, batch {batch}: decoding logits"),
                );
            }
        }
    }

    /// Ember's attention against burn's op alone, at a length that spans three query blocks
    /// (128, 128 and 44 rows) and with a mask broadcast over the heads: outputs and the gradients
    /// of the queries, keys and values, with and without autodiff.
    #[test]
    fn attention_matches_burns_op_across_blocks() {
        let device = Default::default();
        let [batch, heads, seq, dim] = [2, 3, 300, 16];
        let input = |salt: usize| {
            let values = (0..batch * heads * seq * dim)
                .map(|i| (((i * 7919 + salt * 104_729) % 2003) as f32 / 1001.0 - 1.0) * 1.5)
                .collect::<Vec<_>>();
            TensorData::new(values, [batch, heads, seq, dim])
        };
        // Item 1 holds two packed documents: rows from 200 on see only keys from 200 on.
        let mask = (0..batch * seq * seq)
            .map(|i| i / (seq * seq) == 1 && (i / seq) % seq >= 200 && i % seq < 200)
            .collect::<Vec<_>>();
        let hidden = TensorData::new(mask, [batch, 1, seq, seq]);
        for masked in [false, true] {
            let (reference, kernels) = both(|| {
                let [q, k, v] = [0, 1, 2]
                    .map(|salt| Tensor::<A, 4>::from_data(input(salt), &device).require_grad());
                let mask = masked.then(|| Tensor::<A, 4, Bool>::from_data(hidden.clone(), &device));
                let out = causal_attention(q.clone(), k.clone(), v.clone(), mask);
                let weights = Tensor::<A, 4>::from_data(input(3), &device);
                let grads = (out.clone() * weights).sum().backward();
                let grad = |t: &Tensor<A, 4>| values(t.grad(&grads).unwrap());
                let inner = causal_attention(
                    q.clone().inner(),
                    k.clone().inner(),
                    v.clone().inner(),
                    masked.then(|| Tensor::<Flex, 4, Bool>::from_data(hidden.clone(), &device)),
                );
                [values(out), grad(&q), grad(&k), grad(&v), values(inner)]
            });
            for (what, (a, b)) in ["output", "dq", "dk", "dv", "output without autodiff"]
                .iter()
                .zip(reference.iter().zip(&kernels))
            {
                close(a, b, &format!("masked {masked}: {what}"));
            }
            // The masked rows of item 1 attend to the second document alone: its first
            // query there equals that key's value row.
            if masked {
                let v = input(2).to_vec::<f32>().unwrap();
                let row = (heads * seq + 200) * dim;
                close(
                    &kernels[0][row..row + dim],
                    &v[row..row + dim],
                    "the first query of a packed document sees only itself",
                );
            }
        }
    }
}
