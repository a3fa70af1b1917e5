//! `--device`: which burn backend runs the command. The backend is a type, so each command is
//! generic over it and this module picks the instantiation at run time.

use clap::ValueEnum;

/// A device the user can ask for. `wgpu` and `cuda` exist only in builds with those features.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DeviceKind {
    /// burn's pure-Rust CPU backend (flex), always available.
    Cpu,
    /// Any GPU through wgpu (Vulkan, Metal, DX12, or lavapipe on a CPU); needs `--features wgpu`.
    Wgpu,
    /// NVIDIA GPUs through CUDA; needs `--features cuda`.
    Cuda,
}

/// Runs `$body` with `$B` bound to the inference backend of `$kind` and `$device` to its
/// device; `$AD` is the same backend with autodiff.
macro_rules! with_backend {
    ($kind:expr, |$B:ident, $AD:ident, $device:ident| $body:expr) => {{
        match $kind {
            $crate::device::DeviceKind::Cpu => {
                type $B = burn::backend::Flex;
                #[allow(dead_code)]
                type $AD = burn::backend::Autodiff<$B>;
                let $device: burn::tensor::ops::Device<$B> = Default::default();
                $body
            }
            #[cfg(feature = "wgpu")]
            $crate::device::DeviceKind::Wgpu => {
                type $B = burn::backend::Wgpu;
                #[allow(dead_code)]
                type $AD = burn::backend::Autodiff<$B>;
                let $device: burn::tensor::ops::Device<$B> = Default::default();
                $body
            }
            #[cfg(feature = "cuda")]
            $crate::device::DeviceKind::Cuda => {
                type $B = burn::backend::Cuda;
                #[allow(dead_code)]
                type $AD = burn::backend::Autodiff<$B>;
                let $device: burn::tensor::ops::Device<$B> = Default::default();
                $body
            }
            #[allow(unreachable_patterns)]
            other => anyhow::bail!(
                "this ember was built without the {other:?} backend; rebuild with `--features {}`",
                format!("{other:?}").to_lowercase()
            ),
        }
    }};
}

pub(crate) use with_backend;
