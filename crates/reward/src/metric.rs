//! The names of the validation metrics the reward model's objective writes in `metrics.jsonl`
//! (beside the training loop's own, `ember_train::metric`), shared by the writer and the
//! readers.

/// Held-out pairwise accuracy.
pub const ACCURACY: &str = "accuracy";
/// Held-out mean raw margin r_better − r_worse.
pub const MARGIN: &str = "margin";
