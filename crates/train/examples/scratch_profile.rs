use std::time::Instant;
use burn::backend::{Autodiff, Flex};
use burn::module::AutodiffModule;
use burn::tensor::backend::Backend;
use ember_transformer::{Architecture, GptConfig, TokenBatch};
type B = Autodiff<Flex>;
fn main() {
    let device = Default::default();
    for arch in [Architecture::Llama, Architecture::Gpt2] {
        let model = GptConfig::tiny().with_architecture(arch).init::<B>(&device).unwrap();
        let rows: Vec<Vec<u32>> = (0..16).map(|r| (0..129).map(|i| ((i * 31 + r * 7) % 4096) as u32).collect()).collect();
        let batch = TokenBatch::<B>::from_rows(&rows, &device).unwrap();
        let inner_batch = TokenBatch::<Flex>::from_rows(&rows, &device).unwrap();
        let valid = model.valid();
        for _ in 0..2 { let _ = model.loss(&batch).unwrap().backward(); }
        let n = 5;
        let t = Instant::now();
        for _ in 0..n { let l = valid.loss(&inner_batch).unwrap(); let _ = l.into_scalar(); }
        let fwd = t.elapsed().as_secs_f64() / n as f64;
        let t = Instant::now();
        for _ in 0..n { let l = model.loss(&batch).unwrap(); let _ = l.clone().into_scalar(); let _g = l.backward(); Flex::sync(&device).unwrap(); }
        let fb = t.elapsed().as_secs_f64() / n as f64;
        println!("{arch:?}: inference fwd {:.1} ms, train fwd+bwd {:.1} ms, {:.0} tok/s", fwd*1e3, fb*1e3, 2048.0/fb);
    }
}
