//! scratch: pairwise accuracy of the SFT model's answer log-likelihood on rankings.
use burn::tensor::{Int, Tensor, TensorData};
use burn_flex::Flex;
use ember_instruct::{ChatTemplate, OnError};
use ember_reward::read_rankings;
use ember_tokenizer::Tokenizer;
use ember_train::load_model;

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let model_dir = std::path::Path::new(&args[1]);
    let data = std::path::Path::new(&args[2]);
    let device = Default::default();
    let template =
        ChatTemplate::new(Tokenizer::from_file(model_dir.join("tokenizer.json")).unwrap()).unwrap();
    let model = load_model::<Flex>(model_dir, &device).unwrap();
    let rankings = read_rankings(data, OnError::Stop).unwrap().rankings;
    let mut stats: std::collections::BTreeMap<String, [(usize, usize); 2]> = Default::default();
    for r in &rankings {
        let prompt = template.render_prompt(&r.prompt).unwrap();
        let mut feats = Vec::new();
        for c in &r.completions {
            let mut row = prompt.clone();
            row.extend(template.tokenizer().encode(c).unwrap());
            row.push(template.stop_token());
            let n = row.len();
            let t = Tensor::<Flex, 2, Int>::from_data(
                TensorData::new(row.iter().map(|&x| x as i64).collect::<Vec<_>>(), [1, n]),
                &device,
            );
            let (lp, _) = ember_ppo::token_logprobs(&model, t, 1.0);
            let lp = lp.into_data().to_vec::<f32>().unwrap();
            let answer = &lp[prompt.len() - 1..];
            let sum: f32 = answer.iter().sum();
            feats.push([sum as f64, (sum / answer.len() as f32) as f64]);
        }
        let fam = r.family.clone().unwrap_or_default();
        let e = stats.entry(fam).or_default();
        for (b, w) in r.pairs() {
            for k in 0..2 {
                e[k].1 += 1;
                if feats[b][k] > feats[w][k] {
                    e[k].0 += 1;
                }
            }
        }
    }
    let mut tot = [(0, 0); 2];
    for (f, e) in &stats {
        println!(
            "{f:<14} sum {:.3} mean {:.3} ({} pairs)",
            e[0].0 as f64 / e[0].1 as f64,
            e[1].0 as f64 / e[1].1 as f64,
            e[0].1
        );
        for k in 0..2 {
            tot[k].0 += e[k].0;
            tot[k].1 += e[k].1;
        }
    }
    println!(
        "all sum {:.3} mean {:.3}",
        tot[0].0 as f64 / tot[0].1 as f64,
        tot[1].0 as f64 / tot[1].1 as f64
    );
}
