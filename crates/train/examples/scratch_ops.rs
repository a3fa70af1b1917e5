use std::time::Instant;
use burn::backend::Flex;
use burn::tensor::{Tensor, Distribution, activation::log_softmax, module::attention, ops::AttentionModuleOptions};
use burn::tensor::backend::Backend;
type B = Flex;
fn time<F: FnMut()>(name: &str, flops: f64, mut f: F) {
    f();
    let n = 10; let t = Instant::now();
    for _ in 0..n { f(); }
    let s = t.elapsed().as_secs_f64() / n as f64;
    println!("{name:40} {:8.2} ms  {:6.1} GFLOP/s", s * 1e3, flops / s / 1e9);
}
fn main() {
    let d = Default::default();
    let x = Tensor::<B, 3>::random([16, 128, 128], Distribution::Normal(0.0, 1.0), &d);
    let w = Tensor::<B, 2>::random([128, 4096], Distribution::Normal(0.0, 1.0), &d);
    let w3 = w.clone().unsqueeze::<3>();
    time("lm head matmul 3d x [1,128,4096]", 2.0*2048.0*128.0*4096.0, || { let _ = x.clone().matmul(w3.clone()).into_data(); });
    let x2 = x.clone().reshape([2048, 128]);
    time("lm head matmul 2d", 2.0*2048.0*128.0*4096.0, || { let _ = x2.clone().matmul(w.clone()).into_data(); });
    let wt = Tensor::<B, 2>::random([4096, 128], Distribution::Normal(0.0, 1.0), &d);
    time("lm head matmul 2d with transposed w", 2.0*2048.0*128.0*4096.0, || { let _ = x2.clone().matmul(wt.clone().transpose()).into_data(); });
    let q = Tensor::<B, 4>::random([16, 4, 128, 32], Distribution::Normal(0.0, 1.0), &d);
    let opts = AttentionModuleOptions { scale: None, softcap: None, is_causal: true };
    time("attention 16x4x128x32", 4.0*16.0*4.0*128.0*128.0*32.0/2.0, || { let _ = attention(q.clone(), q.clone(), q.clone(), None, None, opts).into_data(); });
    let logits = Tensor::<B, 3>::random([16, 128, 4096], Distribution::Normal(0.0, 1.0), &d);
    time("log_softmax [16,128,4096]", 0.0, || { let _ = log_softmax(logits.clone(), 2).into_data(); });
    let h = Tensor::<B, 3>::random([16, 128, 128], Distribution::Normal(0.0, 1.0), &d);
    let w1 = Tensor::<B, 2>::random([128, 384], Distribution::Normal(0.0, 1.0), &d);
    time("linear 2048x128x384", 2.0*2048.0*128.0*384.0, || { let _ = burn::tensor::module::linear(h.clone(), w1.clone(), None).into_data(); });
    time("elementwise add [16,128,128]", 0.0, || { let _ = (h.clone() + h.clone()).into_data(); });
    let big = Tensor::<B, 2>::random([1024, 1024], Distribution::Normal(0.0, 1.0), &d);
    time("matmul 1024^3", 2.0*1024f64.powi(3), || { let _ = big.clone().matmul(big.clone()).into_data(); });
    B::sync(&d).unwrap();
}
