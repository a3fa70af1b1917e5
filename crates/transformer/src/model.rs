//! The decoder: embeddings, blocks, final norm and the tied language-model head.

use burn::module::{Module, Param};
use burn::nn::{Embedding, EmbeddingConfig};
use burn::tensor::backend::{AutodiffBackend, Backend};
use burn::tensor::{Bool, Int, Tensor};

use crate::attention::AttentionContext;
use crate::block::Block;
use crate::loss::{fused_linear_cross_entropy, masked_cross_entropy, TokenBatch};
use crate::norm::Norm;
use crate::rope::{Positions, RotaryEmbedding};
use crate::{Architecture, DecoderConfig, KvCache, Result};

/// The general input of a forward pass: tokens with explicit positions and an optional
/// attention mask (packed rows, left padding).
#[derive(Debug, Clone)]
pub struct DecoderInput<B: Backend> {
    /// `[batch, seq]` token ids.
    pub tokens: Tensor<B, 2, Int>,
    /// Positions of the tokens.
    pub positions: Positions<B>,
    /// `[batch, heads, seq, seq]`, `true` where a query may not see a key; applied on top of
    /// the causal mask.
    pub mask: Option<Tensor<B, 4, Bool>>,
}

/// A decoder-only transformer of either [`Architecture`].
#[derive(Module, Debug)]
pub struct Decoder<B: Backend> {
    token_embedding: Embedding<B>,
    position_embedding: Option<Embedding<B>>,
    rope: Option<RotaryEmbedding<B>>,
    blocks: Vec<Block<B>>,
    final_norm: Norm<B>,
    /// `[vocab_size, d_model]`, the language-model head when it is not tied to the token
    /// embedding (`tie_embeddings = false`), in the embedding's layout.
    lm_head: Option<Param<Tensor<B, 2>>>,
    #[module(skip)]
    config: DecoderConfig,
}

impl DecoderConfig {
    /// Builds the model on `device`, with GPT-2's initialisation.
    ///
    /// # Errors
    /// An invalid config ([`DecoderConfig::validate`]).
    pub fn init<B: Backend>(&self, device: &B::Device) -> Result<Decoder<B>> {
        self.validate()?;
        let embedding = |rows| {
            EmbeddingConfig::new(rows, self.d_model)
                .with_initializer(crate::init::normal(self.init_std))
                .init(device)
        };
        let (position_embedding, rope) = match self.architecture {
            Architecture::Gpt2 => (Some(embedding(self.max_seq_len)), None),
            Architecture::Llama => (
                None,
                Some(RotaryEmbedding::new(
                    self.max_seq_len,
                    self.head_dim(),
                    self.rope_theta,
                    device,
                )),
            ),
        };
        Ok(crate::init::materialize(Decoder {
            token_embedding: embedding(self.vocab_size),
            position_embedding,
            rope,
            blocks: (0..self.n_layers)
                .map(|_| Block::init(self, device))
                .collect(),
            final_norm: Norm::init(self, device),
            lm_head: (!self.tied()).then(|| {
                crate::init::normal(self.init_std).init([self.vocab_size, self.d_model], device)
            }),
            config: self.clone(),
        }))
    }
}

impl DecoderConfig {
    /// Builds the model with every weight zero, to be overwritten at once (by loading a
    /// file): the same structure as [`DecoderConfig::init`] and the same config, without
    /// drawing 100M random numbers first.
    ///
    /// # Errors
    /// An invalid config ([`DecoderConfig::validate`]).
    pub fn init_zeroed<B: Backend>(&self, device: &B::Device) -> Result<Decoder<B>> {
        let mut model = self.clone().with_init_std(0.0).init::<B>(device)?;
        model.config = self.clone();
        Ok(model)
    }
}

impl<B: Backend> Decoder<B> {
    /// The model's config.
    pub fn config(&self) -> &DecoderConfig {
        &self.config
    }

    fn embed(&self, tokens: Tensor<B, 2, Int>, positions: &Positions<B>) -> Tensor<B, 3> {
        let [batch, seq] = tokens.dims();
        let x = self.token_embedding.forward(tokens);
        match &self.position_embedding {
            None => x,
            Some(table) => {
                let ids = match positions {
                    Positions::Contiguous { start } => {
                        let range = *start as i64..(*start + seq) as i64;
                        Tensor::<B, 1, Int>::arange(range, &x.device())
                            .reshape([1, seq])
                            .expand([batch, seq])
                    }
                    Positions::PerToken(ids) => ids.clone(),
                };
                x + table.forward(ids)
            }
        }
    }

    fn check_length(&self, end: usize) {
        assert!(
            end <= self.config.max_seq_len,
            "{end} positions do not fit the context of {}",
            self.config.max_seq_len
        );
    }

    /// Final hidden states (after the last norm), for heads other than the language model's
    /// (a reward or value head).
    ///
    /// # Shapes
    /// - `input.tokens`: `[batch, seq]` → `[batch, seq, d_model]`
    ///
    /// # Panics
    /// If a position reaches past `max_seq_len`.
    pub fn forward_hidden(&self, input: DecoderInput<B>) -> Tensor<B, 3> {
        if let Positions::Contiguous { start } = input.positions {
            self.check_length(start + input.tokens.dims()[1]);
        }
        let mut x = self.embed(input.tokens, &input.positions);
        for block in &self.blocks {
            let context = AttentionContext {
                rope: self.rope.as_ref(),
                positions: &input.positions,
                mask: input.mask.clone(),
            };
            x = block.forward(x, context);
        }
        self.final_norm.forward(x)
    }

    /// The same model with only its top `n` blocks and the final norm left to train: the
    /// embeddings (and with them the tied language-model head) and the lower blocks no longer
    /// require gradients, so no optimiser moves them. `n` ≥ the number of blocks freezes only
    /// the embeddings. An untied head, on top of the blocks, stays trainable.
    pub fn train_top_blocks(mut self, n: usize) -> Self {
        let frozen = self.blocks.len().saturating_sub(n);
        self.token_embedding = self.token_embedding.no_grad();
        self.position_embedding = self.position_embedding.map(Module::no_grad);
        self.blocks = self
            .blocks
            .into_iter()
            .enumerate()
            .map(|(i, block)| if i < frozen { block.no_grad() } else { block })
            .collect();
        self
    }

    /// The language-model head's weight, `[vocab_size, d_model]`: the token embedding when
    /// tied, else the head's own matrix.
    pub fn head_weight(&self) -> Tensor<B, 2> {
        match &self.lm_head {
            Some(head) => head.val(),
            None => self.token_embedding.weight.val(),
        }
    }

    /// The language-model head: hidden states times the head weight's transpose (the token
    /// embedding's, when tied).
    ///
    /// # Shapes
    /// - `hidden`: `[batch, seq, d_model]` → `[batch, seq, vocab_size]`
    pub fn logits(&self, hidden: Tensor<B, 3>) -> Tensor<B, 3> {
        // As one 2-D matmul against the transposed view: giving the view a batch dimension
        // (`unsqueeze`) makes flex copy the whole `[vocab, d]` embedding on every call, a third
        // of the time of a decoding step.
        let [batch, seq, d] = hidden.dims();
        let weight = self.head_weight().transpose();
        let hidden = hidden.reshape([batch * seq, d]);
        #[cfg(feature = "flex")]
        if let Some(logits) = crate::kernels::flex::matmul_few_rows(&hidden, &weight, None) {
            return logits.reshape([batch, seq, self.config.vocab_size]);
        }
        hidden
            .matmul(weight)
            .reshape([batch, seq, self.config.vocab_size])
    }

    /// Next-token logits of unpadded rows starting at position 0.
    ///
    /// # Shapes
    /// - `tokens`: `[batch, seq]` → `[batch, seq, vocab_size]`
    ///
    /// # Panics
    /// If `seq > max_seq_len`.
    pub fn forward(&self, tokens: Tensor<B, 2, Int>) -> Tensor<B, 3> {
        let input = DecoderInput {
            tokens,
            positions: Positions::Contiguous { start: 0 },
            mask: None,
        };
        self.logits(self.forward_hidden(input))
    }

    /// Incremental decoding: logits of `tokens`, which follow the tokens already in `cache`;
    /// their keys and values are appended to it.
    ///
    /// # Shapes
    /// - `tokens`: `[batch, seq]` → `[batch, seq, vocab_size]`
    ///
    /// # Panics
    /// If the cache would grow past `max_seq_len`.
    pub fn forward_cached(
        &self,
        tokens: Tensor<B, 2, Int>,
        cache: &mut KvCache<B>,
    ) -> Tensor<B, 3> {
        let x = self.cached_blocks(tokens, cache);
        self.logits(self.final_norm.forward(x))
    }

    /// [`Decoder::forward_cached`] returning the logits of the last position only, `[batch,
    /// vocab_size]`: what a prompt's prefill needs to draw the first token, without the
    /// language-model head on every other position.
    ///
    /// # Panics
    /// If the cache would grow past `max_seq_len`, or `tokens` has no position.
    pub fn forward_cached_last(
        &self,
        tokens: Tensor<B, 2, Int>,
        cache: &mut KvCache<B>,
    ) -> Tensor<B, 2> {
        let [batch, seq] = tokens.dims();
        let last = self.cached_blocks(tokens, cache).narrow(1, seq - 1, 1);
        self.logits(self.final_norm.forward(last))
            .reshape([batch, self.config.vocab_size])
    }

    /// Appends the keys and values of `tokens` (`[batch, seq]`) to `cache`, after those it
    /// holds, without the language-model head: for a prompt's start that no token is drawn
    /// from (a server's shared preamble).
    ///
    /// # Panics
    /// If the cache would grow past `max_seq_len`.
    pub fn prefill(&self, tokens: Tensor<B, 2, Int>, cache: &mut KvCache<B>) {
        let _ = self.cached_blocks(tokens, cache);
    }

    /// The blocks' output for `tokens` after those in `cache` (before the final norm), their
    /// keys and values appended to it.
    fn cached_blocks(&self, tokens: Tensor<B, 2, Int>, cache: &mut KvCache<B>) -> Tensor<B, 3> {
        let [batch, seq] = tokens.dims();
        self.check_length(cache.len() + seq);
        let device = tokens.device();
        let positions = cache.positions(batch, seq, &device);
        let mask = cache.mask(batch, self.config.n_heads, seq, &device);
        let mut x = self.embed(tokens, &positions);
        for (layer, block) in self.blocks.iter().enumerate() {
            let context = AttentionContext {
                rope: self.rope.as_ref(),
                positions: &positions,
                mask: mask.clone(),
            };
            x = block.forward_cached(x, context, layer, cache);
        }
        cache.advance(seq);
        x
    }

    /// Mean next-token cross-entropy over the batch's unmasked targets.
    ///
    /// # Errors
    /// [`crate::Error::AllMasked`] if no target counts.
    pub fn loss(&self, batch: &TokenBatch<B>) -> Result<Tensor<B, 1>> {
        let logits = self.forward(batch.inputs.clone());
        masked_cross_entropy(logits, batch)
    }
}

/// Logits a chunk of [`Decoder::train_loss`] holds at once (16 MiB of `f32`).
const LOGITS_PER_CHUNK: usize = 1 << 22;

impl<B: AutodiffBackend> Decoder<B> {
    /// [`Decoder::loss`] for training: the same value and gradients, with the head and the loss
    /// fused ([`fused_linear_cross_entropy`]), so the `[batch, seq, vocab]` logits are never
    /// held whole and the backward pass keeps none of them. Faster on the CPU backend too.
    ///
    /// # Errors
    /// [`crate::Error::AllMasked`] if no target counts.
    pub fn train_loss(&self, batch: &TokenBatch<B>) -> Result<Tensor<B, 1>> {
        let input = DecoderInput {
            tokens: batch.inputs.clone(),
            positions: Positions::Contiguous { start: 0 },
            mask: None,
        };
        self.head_loss(self.forward_hidden(input), batch)
    }

    /// The fused head and loss of `hidden` states (the output of [`Decoder::forward_hidden`])
    /// against the batch's targets; see [`Decoder::train_loss`].
    ///
    /// # Shapes
    /// - `hidden`: `[batch, seq, d_model]` → `[1]`
    ///
    /// # Errors
    /// [`crate::Error::AllMasked`] if no target counts.
    pub fn head_loss(&self, hidden: Tensor<B, 3>, batch: &TokenBatch<B>) -> Result<Tensor<B, 1>> {
        let [size, seq, d] = hidden.dims();
        let chunk_rows = (LOGITS_PER_CHUNK / self.config.vocab_size).max(1);
        fused_linear_cross_entropy(
            hidden.reshape([size * seq, d]),
            self.head_weight(),
            batch.targets.clone().reshape([size * seq]),
            batch.mask.clone().reshape([size * seq]),
            batch.n_targets,
            chunk_rows,
        )
    }
}
