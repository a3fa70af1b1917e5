//! GPT-2's initialisation, shared by the layers.

use burn::module::{Module, ModuleMapper, Param, ParamId};
use burn::nn::{Initializer, Linear, LinearConfig};
use burn::tensor::backend::Backend;
use burn::tensor::Tensor;

/// A linear layer with weights drawn from N(0, std²) and biases at zero (PyTorch GPT-2's
/// init; burn's default would draw the biases from the weights' distribution too).
pub fn linear<B: Backend>(
    d_input: usize,
    d_output: usize,
    bias: bool,
    std: f64,
    device: &B::Device,
) -> Linear<B> {
    let mut layer = LinearConfig::new(d_input, d_output)
        .with_bias(bias)
        .with_initializer(normal(std))
        .init(device);
    if bias {
        layer.bias = Some(Param::from_tensor(Tensor::zeros([d_output], device)));
    }
    layer
}

/// N(0, std²), or zeros for a standard deviation of 0 (burn would still draw the samples).
pub(crate) fn normal(std: f64) -> Initializer {
    if std == 0.0 {
        Initializer::Zeros
    } else {
        Initializer::Normal { mean: 0.0, std }
    }
}

/// `layer` applied to every position of `x` (`[batch, seq, d_input]`) as one 2-D matmul over
/// `batch · seq` rows. burn's `linear` on a 3-D input multiplies each item separately and, in
/// the backward pass, builds one weight gradient per item and then sums them; as rows, the
/// weight gradient is one matmul with `batch · seq` as its inner dimension.
pub(crate) fn linear_rows<B: Backend>(layer: &Linear<B>, x: Tensor<B, 3>) -> Tensor<B, 3> {
    let [batch, seq, d] = x.dims();
    let x = x.reshape([batch * seq, d]);
    #[cfg(feature = "flex")]
    if let Some(y) = crate::kernels::flex::matmul_few_rows(
        &x,
        &layer.weight.val(),
        layer.bias.as_ref().map(|b| b.val()).as_ref(),
    ) {
        let d_output = y.dims()[1];
        return y.reshape([batch, seq, d_output]);
    }
    let y = layer.forward(x);
    let d_output = y.dims()[1];
    y.reshape([batch, seq, d_output])
}

/// Forces every parameter's initialisation now. burn initialises parameters lazily, and a
/// clone of an uninitialised parameter carries the initialiser rather than the value, so
/// the clone and the original would draw different weights (a saved copy of a fresh model
/// would not be the model). A module built here is one concrete value from the start.
pub fn materialize<B: Backend, M: Module<B>>(module: M) -> M {
    struct Materialize;
    impl<B: Backend> ModuleMapper<B> for Materialize {}
    module.map(&mut Materialize)
}

/// The same module with new parameter ids. burn keys gradients and optimizer state by
/// parameter id, and a module loaded from a file takes the ids saved in it: two modules loaded
/// from the same weights (a policy and a critic, both from the SFT model) would share ids, and
/// one optimizer would mix their gradients. Give one of them fresh ids.
pub fn fresh_ids<B: Backend, M: Module<B>>(module: M) -> M {
    struct Fresh;
    impl<B: Backend> ModuleMapper<B> for Fresh {
        fn map_float<const D: usize>(
            &mut self,
            param: Param<burn::tensor::Tensor<B, D>>,
        ) -> Param<burn::tensor::Tensor<B, D>> {
            let (_, tensor, mapper) = param.consume();
            Param::from_mapped_value(ParamId::new(), tensor, mapper)
        }
    }
    module.map(&mut Fresh)
}
