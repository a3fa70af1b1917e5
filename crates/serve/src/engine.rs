//! Continuous batching: one thread owns the model and runs decoding steps for every sequence
//! in flight. A new sequence is prefilled alone (its first token drawn from it; a preamble it
//! shares with others, such as the system turn, computed on its own once and kept) and joins
//! the running batch before the next step; a finished or abandoned one leaves it at once, its KV
//! cache rows with it. Each sequence has its own sampler and seed, and a left-padded row is
//! computed exactly as it would be alone (flex's decode kernel starts at its first key; the
//! engine's thread sends matrix products of up to `max_batch` rows to the few-rows kernels,
//! which compute every row on its own), so a seeded request gives the same answer alone or
//! among others.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use burn::tensor::backend::Backend;
use burn::tensor::{Int, Tensor, TensorData};
use ember_tokenizer::{TextStream, Tokenizer};
use ember_transformer::{Decoder, FinishReason, KvCache, Sampler, Sampling};
use rayon::prelude::*;
use serde::Serialize;
use tokio::sync::mpsc::{unbounded_channel, UnboundedReceiver, UnboundedSender};

use crate::stops::StopScanner;
use crate::{Error, Result};

/// One sequence to generate.
#[derive(Debug, Clone, PartialEq)]
pub struct Sequence {
    /// The prompt's tokens (the chat template already applied).
    pub prompt: Vec<u32>,
    /// How many of the prompt's first tokens are a preamble that other prompts share (the
    /// start and system turn: `ChatTemplate::render_prompt_with_preamble`); 0 for none. The
    /// engine computes a preamble's keys and values on their own and keeps them for the next
    /// sequence that starts with it, so the answer is the same whether they were kept or not.
    pub prefix: usize,
    /// New tokens at most; the engine also stops where the context ends.
    pub max_new_tokens: usize,
    /// How each token is drawn.
    pub sampling: Sampling,
    /// Seed of this sequence's draws.
    pub seed: u64,
    /// The answer ends before the first of these strings (not included).
    pub stop: Vec<String>,
    /// Go on past the model's stop tokens, to `max_new_tokens` (benchmarks; vLLM's
    /// `ignore_eos`).
    pub ignore_eos: bool,
}

/// What the engine reports of the sequences of one submission; `index` is the sequence's
/// place in the submission.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// Whole characters of text that the latest tokens completed.
    Text {
        /// Which sequence.
        index: usize,
        /// The new text.
        text: String,
    },
    /// The sequence ended.
    Finished {
        /// Which sequence.
        index: usize,
        /// A stop token or string (`Stop`) or the token limit (`Length`).
        reason: FinishReason,
        /// Tokens generated, the stop token included.
        completion_tokens: usize,
    },
    /// The sequence could not go on: the server is shutting down, or decoding failed.
    Aborted {
        /// Which sequence.
        index: usize,
        /// Why.
        message: String,
    },
}

/// Limits of an engine.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EngineConfig {
    /// Sequences decoded together in one step, at most.
    pub max_batch: usize,
    /// Sequences waiting for a place in the batch, at most; beyond, a submission is refused.
    pub queue: usize,
    /// Preambles whose keys and values are kept (the least recently used leaves first); 0
    /// keeps none (each sequence computes its preamble again).
    pub preambles: usize,
}

impl Default for EngineConfig {
    fn default() -> Self {
        Self {
            max_batch: 32,
            queue: 64,
            preambles: 8,
        }
    }
}

/// Why a submission was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SubmitError {
    /// More sequences would wait than the queue holds.
    #[error("{waiting} sequences are waiting and the queue holds {capacity}; try again later")]
    QueueFull {
        /// Waiting now.
        waiting: usize,
        /// The queue's size.
        capacity: usize,
    },
    /// The engine is shutting down.
    #[error("the server is shutting down")]
    ShuttingDown,
    /// A sequence the model cannot take.
    #[error("{0}")]
    Invalid(String),
}

/// Counters of an engine, as `GET /health` shows them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize)]
pub struct Stats {
    /// Sequences in the running batch now.
    pub active: usize,
    /// Sequences waiting for a place.
    pub waiting: usize,
    /// Decoding steps run.
    pub steps: u64,
    /// Steps that decoded more than one sequence.
    pub batched_steps: u64,
    /// The most sequences one step decoded.
    pub max_batch_seen: usize,
    /// Tokens generated (first tokens from the prefill included).
    pub generated_tokens: u64,
    /// Prompt tokens of the sequences started.
    pub prompt_tokens: u64,
    /// Of those, preamble tokens whose keys and values were kept from an earlier sequence.
    pub cached_prompt_tokens: u64,
    /// Sequences that ended (stop or length).
    pub finished: u64,
    /// Sequences dropped because their client went away.
    pub cancelled: u64,
    /// Sequences aborted (shutdown or a failure).
    pub aborted: u64,
}

#[derive(Default)]
struct Counters {
    active: AtomicUsize,
    steps: AtomicU64,
    batched_steps: AtomicU64,
    max_batch_seen: AtomicUsize,
    generated_tokens: AtomicU64,
    prompt_tokens: AtomicU64,
    cached_prompt_tokens: AtomicU64,
    finished: AtomicU64,
    cancelled: AtomicU64,
    aborted: AtomicU64,
}

struct Job {
    sequence: Sequence,
    index: usize,
    events: UnboundedSender<Event>,
}

#[derive(Default)]
struct Queue {
    jobs: VecDeque<Job>,
    /// No new submissions.
    closing: bool,
    /// Abort what is running and waiting, then exit.
    abort: bool,
}

struct Shared {
    queue: Mutex<Queue>,
    wake: Condvar,
    counters: Counters,
    config: EngineConfig,
    vocab_size: usize,
    context: usize,
    stopped: AtomicBool,
}

impl Shared {
    fn queue(&self) -> MutexGuard<'_, Queue> {
        // A panic while holding the lock cannot leave the queue half-changed (every change
        // is one push or pop), so a poisoned lock is still a good queue.
        self.queue.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// A running engine: submit sequences, read counters, shut it down. Cheap to clone; every
/// clone talks to the same engine thread.
#[derive(Clone)]
pub struct EngineHandle {
    shared: Arc<Shared>,
    thread: Arc<Mutex<Option<JoinHandle<()>>>>,
}

impl std::fmt::Debug for EngineHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EngineHandle")
            .field("stats", &self.stats())
            .finish_non_exhaustive()
    }
}

impl EngineHandle {
    /// Starts the engine thread with `model` (which `load` builds on that thread, so that
    /// the model never has to move between threads) and `tokenizer` for the answers' text;
    /// returns once the model is loaded.
    ///
    /// # Errors
    /// What `load` returns, or invalid limits.
    pub fn start<B, F>(
        load: F,
        tokenizer: Tokenizer,
        stop_tokens: Vec<u32>,
        config: EngineConfig,
    ) -> Result<Self>
    where
        B: Backend,
        F: FnOnce() -> Result<Decoder<B>> + Send + 'static,
    {
        if config.max_batch == 0 || config.queue == 0 {
            return Err(Error::Config(format!(
                "max_batch and queue must be at least 1 (a request waits in the queue until the \
                 batch takes it), got {} and {}",
                config.max_batch, config.queue
            )));
        }
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let thread = std::thread::Builder::new()
            .name("ember-engine".into())
            .spawn(move || {
                // Every step of up to `max_batch` rows through the few-rows kernels: each
                // row's values are then those it has alone (and they are the faster ones; never
                // below their default of 16, up to which they beat the gemm for prefills too).
                ember_transformer::set_few_rows_limit(config.max_batch.max(16));
                let model = match load() {
                    Ok(model) => model,
                    Err(error) => {
                        let _ = ready_tx.send(Err(error));
                        return;
                    }
                };
                let model_config = model.config();
                let shared = Arc::new(Shared {
                    queue: Mutex::default(),
                    wake: Condvar::new(),
                    counters: Counters::default(),
                    config,
                    vocab_size: model_config.vocab_size,
                    context: model_config.max_seq_len,
                    stopped: AtomicBool::new(false),
                });
                if ready_tx.send(Ok(shared.clone())).is_err() {
                    return;
                }
                let mut engine = Engine {
                    device: {
                        use burn::module::Module as _;
                        model.devices().into_iter().next().unwrap_or_default()
                    },
                    model: &model,
                    tokenizer: &tokenizer,
                    stop_tokens: &stop_tokens,
                    shared: &shared,
                    preambles: Vec::new(),
                    uses: 0,
                };
                engine.run();
                shared.stopped.store(true, Ordering::SeqCst);
            })
            .map_err(|e| Error::Io {
                path: "ember-engine thread".into(),
                source: e,
            })?;
        let shared = match ready_rx.recv() {
            Ok(Ok(shared)) => shared,
            Ok(Err(error)) => {
                let _ = thread.join();
                return Err(error);
            }
            Err(_) => {
                let _ = thread.join();
                return Err(Error::Config(
                    "the engine thread ended while loading".into(),
                ));
            }
        };
        Ok(Self {
            shared,
            thread: Arc::new(Mutex::new(Some(thread))),
        })
    }

    /// The model's context length.
    pub fn context(&self) -> usize {
        self.shared.context
    }

    /// Queues `sequences` as one submission; their events arrive on the receiver, tagged with
    /// each sequence's index. Dropping the receiver cancels them: they leave the batch before
    /// the next step.
    ///
    /// # Errors
    /// A full queue, a shutdown under way, or a sequence the model cannot take.
    pub fn submit(
        &self,
        sequences: Vec<Sequence>,
    ) -> std::result::Result<UnboundedReceiver<Event>, SubmitError> {
        let shared = &self.shared;
        if sequences.is_empty() {
            return Err(SubmitError::Invalid("nothing to generate".into()));
        }
        for sequence in &sequences {
            self.check(sequence)?;
        }
        let (events, receiver) = unbounded_channel();
        let mut queue = shared.queue();
        if queue.closing || shared.stopped.load(Ordering::SeqCst) {
            return Err(SubmitError::ShuttingDown);
        }
        let waiting = queue.jobs.len();
        if waiting + sequences.len() > shared.config.queue {
            return Err(SubmitError::QueueFull {
                waiting,
                capacity: shared.config.queue,
            });
        }
        for (index, sequence) in sequences.into_iter().enumerate() {
            queue.jobs.push_back(Job {
                sequence,
                index,
                events: events.clone(),
            });
        }
        drop(queue);
        shared.wake.notify_all();
        Ok(receiver)
    }

    fn check(&self, sequence: &Sequence) -> std::result::Result<(), SubmitError> {
        let shared = &self.shared;
        if sequence.prompt.is_empty() {
            return Err(SubmitError::Invalid("an empty prompt".into()));
        }
        if sequence.prompt.len() >= shared.context {
            return Err(SubmitError::Invalid(format!(
                "a prompt of {} tokens leaves no room in the context of {}",
                sequence.prompt.len(),
                shared.context
            )));
        }
        if let Some(id) = sequence
            .prompt
            .iter()
            .find(|&&id| id as usize >= shared.vocab_size)
        {
            return Err(SubmitError::Invalid(format!(
                "token {id} is outside the vocabulary of {}",
                shared.vocab_size
            )));
        }
        if sequence.max_new_tokens == 0 {
            return Err(SubmitError::Invalid(
                "max_new_tokens must be at least 1".into(),
            ));
        }
        sequence
            .sampling
            .validate()
            .map_err(|e| SubmitError::Invalid(e.to_string()))
    }

    /// The counters now.
    pub fn stats(&self) -> Stats {
        let c = &self.shared.counters;
        Stats {
            active: c.active.load(Ordering::SeqCst),
            waiting: self.shared.queue().jobs.len(),
            steps: c.steps.load(Ordering::SeqCst),
            batched_steps: c.batched_steps.load(Ordering::SeqCst),
            max_batch_seen: c.max_batch_seen.load(Ordering::SeqCst),
            generated_tokens: c.generated_tokens.load(Ordering::SeqCst),
            prompt_tokens: c.prompt_tokens.load(Ordering::SeqCst),
            cached_prompt_tokens: c.cached_prompt_tokens.load(Ordering::SeqCst),
            finished: c.finished.load(Ordering::SeqCst),
            cancelled: c.cancelled.load(Ordering::SeqCst),
            aborted: c.aborted.load(Ordering::SeqCst),
        }
    }

    /// Stops taking submissions; what is running and waiting goes on.
    pub fn close(&self) {
        self.shared.queue().closing = true;
        self.shared.wake.notify_all();
    }

    /// Closes the engine, lets the sequences in flight finish for up to `grace`, aborts the
    /// rest (their clients get [`Event::Aborted`]) and waits for the engine thread to end.
    pub fn shutdown(&self, grace: Duration) {
        self.close();
        let deadline = Instant::now() + grace;
        while Instant::now() < deadline {
            let busy = self.stats();
            if busy.active == 0 && busy.waiting == 0 {
                break;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        self.shared.queue().abort = true;
        self.shared.wake.notify_all();
        let thread = self.thread.lock().unwrap_or_else(|e| e.into_inner()).take();
        if let Some(thread) = thread {
            let _ = thread.join();
        }
    }
}

/// One sequence in the running batch.
struct Row<'t> {
    index: usize,
    events: UnboundedSender<Event>,
    sampler: Sampler,
    text: TextStream<'t>,
    stops: StopScanner,
    generated: usize,
    max_new: usize,
    ignore_eos: bool,
    /// The latest token, the next step's input.
    last: u32,
}

impl Row<'_> {
    fn send(&self, event: Event) {
        // A closed channel is a client gone: the row leaves at the next step.
        let _ = self.events.send(event);
    }

    /// Takes the sequence's next token; `Some` when the sequence ends with it.
    fn accept(&mut self, token: u32, stop_tokens: &[u32]) -> Option<FinishReason> {
        self.generated += 1;
        self.last = token;
        let stop_token = !self.ignore_eos && stop_tokens.contains(&token);
        let reason = if stop_token {
            Some(FinishReason::Stop)
        } else {
            let piece = self.text.step(token).ok().flatten().unwrap_or_default();
            let scanned = self.stops.push(&piece);
            if !scanned.text.is_empty() {
                self.send(Event::Text {
                    index: self.index,
                    text: scanned.text,
                });
            }
            if scanned.stopped {
                Some(FinishReason::Stop)
            } else if self.generated >= self.max_new {
                Some(FinishReason::Length)
            } else {
                None
            }
        };
        if let Some(reason) = reason {
            if reason == FinishReason::Length || stop_token {
                let rest = self.stops.finish();
                if !rest.is_empty() {
                    self.send(Event::Text {
                        index: self.index,
                        text: rest,
                    });
                }
            }
            self.send(Event::Finished {
                index: self.index,
                reason,
                completion_tokens: self.generated,
            });
        }
        reason
    }
}

struct Engine<'a, B: Backend> {
    /// The model's device, looked up once (it walks the module tree).
    device: B::Device,
    model: &'a Decoder<B>,
    tokenizer: &'a Tokenizer,
    stop_tokens: &'a [u32],
    shared: &'a Shared,
    /// Kept preambles, at most `EngineConfig::preambles`.
    preambles: Vec<Preamble<B>>,
    /// Preamble lookups so far (the clock of `preambles`).
    uses: u64,
}

/// A kept preamble: its tokens, their keys and values (one row), and when it was last used.
struct Preamble<B: Backend> {
    tokens: Vec<u32>,
    cache: KvCache<B>,
    used: u64,
}

impl<'a, B: Backend> Engine<'a, B> {
    fn run(&mut self) {
        let counters = &self.shared.counters;
        let n_layers = self.model.config().n_layers;
        let mut rows: Vec<Row<'a>> = Vec::new();
        let mut cache = KvCache::<B>::new(n_layers);
        loop {
            // Clients that went away leave before anything else is computed for them.
            if rows.iter().any(|r| r.events.is_closed()) {
                // Flags and count from one look: a client may leave at any moment.
                let open = rows
                    .iter()
                    .map(|r| !r.events.is_closed())
                    .collect::<Vec<_>>();
                let gone = open.iter().filter(|&&o| !o).count();
                counters.cancelled.fetch_add(gone as u64, Ordering::SeqCst);
                keep(&mut rows, &mut cache, &open);
            }
            let (jobs, abort, closing) = self.next_jobs(rows.len());
            if abort {
                for row in rows.drain(..) {
                    row.send(Event::Aborted {
                        index: row.index,
                        message: "the server shut down before the answer was finished".into(),
                    });
                    counters.aborted.fetch_add(1, Ordering::SeqCst);
                }
                counters.active.store(0, Ordering::SeqCst);
                let mut queue = self.shared.queue();
                for job in queue.jobs.drain(..) {
                    let _ = job.events.send(Event::Aborted {
                        index: job.index,
                        message: "the server shut down before the answer was started".into(),
                    });
                    counters.aborted.fetch_add(1, Ordering::SeqCst);
                }
                return;
            }
            for job in jobs {
                if job.events.is_closed() {
                    counters.cancelled.fetch_add(1, Ordering::SeqCst);
                    continue;
                }
                if let Some((row, single)) = self.prefill(job) {
                    match cache.extend(single) {
                        Ok(()) => rows.push(row),
                        Err(error) => {
                            counters.aborted.fetch_add(1, Ordering::SeqCst);
                            row.send(Event::Aborted {
                                index: row.index,
                                message: error.to_string(),
                            });
                        }
                    }
                }
            }
            counters.active.store(rows.len(), Ordering::SeqCst);
            if rows.is_empty() {
                if closing && self.shared.queue().jobs.is_empty() {
                    return;
                }
                self.wait();
                continue;
            }
            self.step(&mut rows, &mut cache);
            counters.active.store(rows.len(), Ordering::SeqCst);
        }
    }

    /// Waiting jobs that fit in the batch, and whether to abort or the engine is closing.
    fn next_jobs(&self, running: usize) -> (Vec<Job>, bool, bool) {
        let mut queue = self.shared.queue();
        let room = self.shared.config.max_batch.saturating_sub(running);
        let take = room.min(queue.jobs.len());
        let jobs = queue.jobs.drain(..take).collect();
        // Counted as active from here (still under the lock), so that a job being prefilled
        // is never seen as neither waiting nor running.
        self.shared
            .counters
            .active
            .store(running + take, Ordering::SeqCst);
        (jobs, queue.abort, queue.closing)
    }

    fn wait(&self) {
        let queue = self.shared.queue();
        if queue.jobs.is_empty() && !queue.abort && !queue.closing {
            let _ = self
                .shared
                .wake
                .wait_timeout(queue, Duration::from_millis(200));
        }
    }

    /// The keys and values of `tokens` (a preamble), kept or computed on their own (and
    /// kept).
    fn preamble(&mut self, tokens: &[u32]) -> KvCache<B> {
        self.uses += 1;
        if let Some(kept) = self.preambles.iter_mut().find(|p| p.tokens == tokens) {
            kept.used = self.uses;
            self.shared
                .counters
                .cached_prompt_tokens
                .fetch_add(tokens.len() as u64, Ordering::SeqCst);
            // A clone shares the buffers; the sequence's own tokens are written to a copy.
            return kept.cache.clone();
        }
        let mut cache = KvCache::new(self.model.config().n_layers);
        self.model.prefill(self.prompt_tensor(tokens), &mut cache);
        let room = self.shared.config.preambles;
        if room > 0 {
            if self.preambles.len() >= room {
                let oldest = (0..self.preambles.len())
                    .min_by_key(|&i| self.preambles[i].used)
                    .unwrap_or(0);
                self.preambles.swap_remove(oldest);
            }
            self.preambles.push(Preamble {
                tokens: tokens.to_vec(),
                cache: cache.clone(),
                used: self.uses,
            });
        }
        cache
    }

    fn prompt_tensor(&self, tokens: &[u32]) -> Tensor<B, 2, Int> {
        Tensor::<B, 2, Int>::from_data(
            TensorData::new(
                tokens.iter().map(|&t| i64::from(t)).collect(),
                [1, tokens.len()],
            ),
            &self.device,
        )
    }

    /// Runs the prompt alone (after its preamble), draws the first token; `None` when the
    /// sequence already ended (or failed).
    fn prefill(&mut self, job: Job) -> Option<(Row<'a>, KvCache<B>)> {
        let counters = &self.shared.counters;
        let Job {
            sequence,
            index,
            events,
        } = job;
        let sampler = match Sampler::new(sequence.sampling, sequence.seed) {
            Ok(sampler) => sampler,
            Err(error) => {
                let _ = events.send(Event::Aborted {
                    index,
                    message: error.to_string(),
                });
                counters.aborted.fetch_add(1, Ordering::SeqCst);
                return None;
            }
        };
        let prompt_len = sequence.prompt.len();
        let mut row = Row {
            index,
            events,
            sampler,
            text: self.tokenizer.decode_stream(true),
            stops: StopScanner::new(sequence.stop),
            generated: 0,
            max_new: sequence
                .max_new_tokens
                .min(self.shared.context - prompt_len),
            ignore_eos: sequence.ignore_eos,
            last: 0,
        };
        // At least the last token is the sequence's own: its logits give the first token.
        let split = sequence.prefix.min(prompt_len - 1);
        let mut cache = if split > 0 {
            self.preamble(&sequence.prompt[..split])
        } else {
            KvCache::new(self.model.config().n_layers)
        };
        let tokens = self.prompt_tensor(&sequence.prompt[split..]);
        let logits = self.model.forward_cached_last(tokens, &mut cache);
        counters
            .prompt_tokens
            .fetch_add(prompt_len as u64, Ordering::SeqCst);
        let logits = match logits.into_data().to_vec::<f32>() {
            Ok(logits) => logits,
            Err(error) => {
                row.send(Event::Aborted {
                    index,
                    message: format!("the model's logits could not be read: {error:?}"),
                });
                counters.aborted.fetch_add(1, Ordering::SeqCst);
                return None;
            }
        };
        let token = row.sampler.sample(&logits);
        counters.generated_tokens.fetch_add(1, Ordering::SeqCst);
        if row.accept(token, self.stop_tokens).is_some() {
            counters.finished.fetch_add(1, Ordering::SeqCst);
            return None;
        }
        Some((row, cache))
    }

    /// One decoding step for every row; finished rows leave.
    fn step(&self, rows: &mut Vec<Row<'a>>, cache: &mut KvCache<B>) {
        let counters = &self.shared.counters;
        let batch = rows.len();
        let vocab = self.shared.vocab_size;
        let tokens = Tensor::<B, 2, Int>::from_data(
            TensorData::new(rows.iter().map(|r| i64::from(r.last)).collect(), [batch, 1]),
            &self.device,
        );
        let logits = self
            .model
            .forward_cached(tokens, cache)
            .reshape([batch, vocab])
            .into_data()
            .to_vec::<f32>();
        counters.steps.fetch_add(1, Ordering::SeqCst);
        if batch > 1 {
            counters.batched_steps.fetch_add(1, Ordering::SeqCst);
        }
        counters.max_batch_seen.fetch_max(batch, Ordering::SeqCst);
        let logits = match logits {
            Ok(logits) => logits,
            Err(error) => {
                for row in rows.drain(..) {
                    row.send(Event::Aborted {
                        index: row.index,
                        message: format!("the model's logits could not be read: {error:?}"),
                    });
                    counters.aborted.fetch_add(1, Ordering::SeqCst);
                }
                *cache = KvCache::new(self.model.config().n_layers);
                return;
            }
        };
        // Each row draws from its own seeded sampler, so the rows can draw in parallel (a
        // draw sorts the whole vocabulary: milliseconds for a real model's).
        let tokens = rows
            .iter_mut()
            .map(|row| &mut row.sampler)
            .collect::<Vec<_>>()
            .into_par_iter()
            .zip(logits.par_chunks_exact(vocab))
            .map(|(sampler, logits)| sampler.sample(logits))
            .collect::<Vec<_>>();
        let mut done = vec![false; batch];
        for (i, (row, token)) in rows.iter_mut().zip(tokens).enumerate() {
            counters.generated_tokens.fetch_add(1, Ordering::SeqCst);
            if row.accept(token, self.stop_tokens).is_some() {
                counters.finished.fetch_add(1, Ordering::SeqCst);
                done[i] = true;
            }
        }
        if done.iter().any(|&d| d) {
            keep(rows, cache, &done.iter().map(|&d| !d).collect::<Vec<_>>());
        }
    }
}

/// Keeps the rows flagged `true` in `keep` (one flag per row), and their cache rows.
fn keep<B: Backend>(rows: &mut Vec<Row<'_>>, cache: &mut KvCache<B>, keep: &[bool]) {
    let kept = (0..rows.len()).filter(|&i| keep[i]).collect::<Vec<_>>();
    let mut flags = keep.iter();
    rows.retain(|_| flags.next().copied().unwrap_or(false));
    // The indices are the cache's own rows, so this cannot fail.
    cache
        .retain_rows(&kept)
        .expect("the batch's rows are its cache's rows");
}
