//! The policy and its critic (value model), one module for the shared loop.

use burn::module::Module;
use burn::tensor::backend::Backend;
use ember_reward::RewardModel;
use ember_transformer::Decoder;

/// The policy being trained and its critic (value model), optimised together: their
/// parameters are disjoint, so one optimiser over both is two optimisers. Build it with
/// [`ActorCritic::new`], which makes sure of that.
#[derive(Module, Debug)]
pub struct ActorCritic<B: Backend> {
    /// The language model being tuned.
    pub policy: Decoder<B>,
    /// The value model: a transformer with a scalar head read at every token.
    pub critic: RewardModel<B>,
}

impl<B: Backend> ActorCritic<B> {
    /// Pairs a policy and a critic, giving the critic fresh parameter ids: both usually come
    /// from the same SFT weights, and a file's weights bring their ids, so without this the
    /// optimiser would see one parameter where there are two and mix their gradients.
    pub fn new(policy: Decoder<B>, critic: RewardModel<B>) -> Self {
        Self {
            policy,
            critic: ember_transformer::fresh_ids(critic),
        }
    }
}
