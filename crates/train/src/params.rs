//! Parameter groups and gradient surgery: which parameters are decayed, the global gradient
//! norm, clipping, and splitting the gradients between the two optimizer groups.

use std::collections::HashSet;

use burn::module::{AutodiffModule, ModuleVisitor, Param, ParamId};
use burn::optim::GradientsParams;
use burn::tensor::backend::{AutodiffBackend, Backend};
use burn::tensor::{ElementConversion, Tensor};

/// Parameter ids split by whether weight decay applies: matrices outside embeddings are
/// decayed; norms' gains, biases and embedding tables are not (GPT-3, nanoGPT's
/// `configure_optimizers` minus its embedding decay).
#[derive(Debug, Default, Clone)]
pub struct DecayGroups {
    /// Decayed.
    pub decay: HashSet<ParamId>,
    /// Not decayed.
    pub no_decay: HashSet<ParamId>,
}

#[derive(Default)]
struct GroupVisitor {
    containers: Vec<String>,
    groups: DecayGroups,
}

impl<B: Backend> ModuleVisitor<B> for GroupVisitor {
    fn enter_module(&mut self, _name: &str, container_type: &str) {
        self.containers.push(container_type.to_owned());
    }

    fn exit_module(&mut self, _name: &str, _container_type: &str) {
        self.containers.pop();
    }

    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
        let in_embedding = self.containers.iter().any(|c| c == "Struct:Embedding");
        if D >= 2 && !in_embedding {
            self.groups.decay.insert(param.id);
        } else {
            self.groups.no_decay.insert(param.id);
        }
    }
}

impl DecayGroups {
    /// The groups of `module`'s parameters.
    pub fn of<B: Backend, M: burn::module::Module<B>>(module: &M) -> Self {
        let mut visitor = GroupVisitor::default();
        module.visit::<GroupVisitor>(&mut visitor);
        visitor.groups
    }
}

/// Visits every parameter that has a gradient, with the gradient.
struct GradVisitor<'a, B: AutodiffBackend, F> {
    grads: &'a mut GradientsParams,
    f: F,
    _backend: std::marker::PhantomData<B>,
}

/// What to do with one gradient: given its id and value, return a replacement or `None` to
/// leave it.
trait GradFn<B: Backend> {
    fn apply<const D: usize>(&mut self, id: ParamId, grad: Tensor<B, D>) -> Option<Tensor<B, D>>;
}

impl<B: AutodiffBackend, F: GradFn<B::InnerBackend>> ModuleVisitor<B> for GradVisitor<'_, B, F> {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
        if let Some(grad) = self.grads.remove::<B::InnerBackend, D>(param.id) {
            let keep = grad.clone();
            match self.f.apply(param.id, grad) {
                Some(replacement) => self.grads.register(param.id, replacement),
                None => self.grads.register(param.id, keep),
            }
        }
    }
}

fn for_each_grad<B: AutodiffBackend, M: AutodiffModule<B>, F: GradFn<B::InnerBackend>>(
    module: &M,
    grads: &mut GradientsParams,
    f: F,
) -> F {
    let mut visitor = GradVisitor::<B, F> {
        grads,
        f,
        _backend: std::marker::PhantomData,
    };
    module.visit(&mut visitor);
    visitor.f
}

struct SquaredNorm<B: Backend> {
    total: Option<Tensor<B, 1>>,
}

impl<B: Backend> GradFn<B> for SquaredNorm<B> {
    fn apply<const D: usize>(&mut self, _id: ParamId, grad: Tensor<B, D>) -> Option<Tensor<B, D>> {
        let squares = grad.square().sum();
        self.total = Some(match self.total.take() {
            None => squares,
            Some(total) => total + squares,
        });
        None
    }
}

struct Scale(f64);

impl<B: Backend> GradFn<B> for Scale {
    fn apply<const D: usize>(&mut self, _id: ParamId, grad: Tensor<B, D>) -> Option<Tensor<B, D>> {
        Some(grad.mul_scalar(self.0))
    }
}

/// The L2 norm of all gradients together (one device sync).
pub fn global_grad_norm<B: AutodiffBackend, M: AutodiffModule<B>>(
    module: &M,
    grads: &mut GradientsParams,
) -> f64 {
    let norm = for_each_grad::<B, M, _>(module, grads, SquaredNorm { total: None });
    norm.total
        .map_or(0.0, |t| f64::from(t.into_scalar().elem::<f32>()).sqrt())
}

/// Scales every gradient so that their global norm is at most `max_norm` (PyTorch's
/// `clip_grad_norm_`; burn's own clipping works per tensor). Returns the norm before clipping.
pub fn clip_global_norm<B: AutodiffBackend, M: AutodiffModule<B>>(
    module: &M,
    grads: &mut GradientsParams,
    max_norm: f64,
) -> f64 {
    let norm = global_grad_norm::<B, M>(module, grads);
    let scale = max_norm / (norm + 1e-6);
    if scale < 1.0 {
        for_each_grad::<B, M, _>(module, grads, Scale(scale));
    }
    norm
}

/// Moves the gradients of the parameters in `ids` out of `grads` into a new set.
pub fn split_grads<B: AutodiffBackend, M: AutodiffModule<B>>(
    module: &M,
    grads: &mut GradientsParams,
    ids: &HashSet<ParamId>,
) -> GradientsParams {
    struct Mover<'a> {
        from: &'a mut GradientsParams,
        ids: &'a HashSet<ParamId>,
        taken: GradientsParams,
    }
    impl<B: AutodiffBackend> ModuleVisitor<B> for Mover<'_> {
        fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
            if self.ids.contains(&param.id) {
                if let Some(grad) = self.from.remove::<B::InnerBackend, D>(param.id) {
                    self.taken.register(param.id, grad);
                }
            }
        }
    }
    let mut mover = Mover {
        from: grads,
        ids,
        taken: GradientsParams::new(),
    };
    module.visit::<Mover<'_>>(&mut mover);
    mover.taken
}
