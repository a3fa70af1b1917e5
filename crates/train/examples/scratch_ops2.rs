use std::time::Instant;
use burn::backend::Flex;
use burn::tensor::{Tensor, Distribution};
type B = Flex;
fn time<F: FnMut()>(name: &str, mut f: F) {
    f();
    let n = 10; let t = Instant::now();
    for _ in 0..n { f(); }
    println!("{name:30} {:8.2} ms", t.elapsed().as_secs_f64() / n as f64 * 1e3);
}
fn main() {
    let d = Default::default();
    let x = Tensor::<B, 3>::random([16, 128, 4096], Distribution::Normal(0.0, 1.0), &d);
    time("exp", || { let _ = x.clone().exp().into_data(); });
    time("max_dim", || { let _ = x.clone().max_dim(2).into_data(); });
    time("sum_dim", || { let _ = x.clone().sum_dim(2).into_data(); });
    let m = x.clone().max_dim(2);
    time("sub broadcast", || { let _ = (x.clone() - m.clone()).into_data(); });
    time("mul_scalar", || { let _ = x.clone().mul_scalar(2.0).into_data(); });
    time("log", || { let _ = x.clone().abs().log().into_data(); });
    time("clone+into_data only", || { let _ = x.clone().into_data(); });
    let x2 = x.clone().reshape([2048, 4096]);
    time("2d exp", || { let _ = x2.clone().exp().into_data(); });
    time("2d max_dim", || { let _ = x2.clone().max_dim(1).into_data(); });
    time("2d sum_dim", || { let _ = x2.clone().sum_dim(1).into_data(); });
}
