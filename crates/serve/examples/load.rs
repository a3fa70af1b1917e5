//! A load benchmark of `ember serve` on loopback: the server runs in this process on a free
//! port, and 1, 8, 32 … concurrent clients each send a bounded number of streamed requests.
//! Per level: the server's generated tokens/s, time to first token p50/p99, errors, and the
//! process's resident memory before and after; then the throughput of every level against
//! one client at a time (continuous batching's gain).
//!
//! ```text
//! cargo run --release -p ember-serve --example load -- --model runs/pipeline/ppo/model \
//!     [--clients 1,8,32] [--requests-per-client 4] [--max-tokens 64] [--max-batch 32] \
//!     [--preambles 8] [--temperature 1] [--packed-weights on|off] [--json load.json]
//! ```
//!
//! Each level also reports the CPU time the hypervisor stole from this machine meanwhile
//! (`steal` in `/proc/stat`, as a share of all CPU time; Linux), so that a round on a
//! contended host can be told from one on a quiet host.

use std::io::{BufRead as _, BufReader};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use ember_serve::{EngineConfig, ServeConfig, Server};
use serde_json::{json, Value};

struct Args {
    model: PathBuf,
    clients: Vec<usize>,
    requests_per_client: usize,
    max_tokens: usize,
    max_batch: usize,
    preambles: usize,
    temperature: f64,
    packed_weights: bool,
    json: Option<PathBuf>,
}

fn parse_args() -> Result<Args, String> {
    let mut args = Args {
        model: PathBuf::new(),
        clients: vec![1, 8, 32],
        requests_per_client: 4,
        max_tokens: 64,
        max_batch: 32,
        preambles: 8,
        temperature: 1.0,
        packed_weights: true,
        json: None,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = || it.next().ok_or(format!("{flag} needs a value"));
        let number = |v: String| v.parse::<usize>().map_err(|e| format!("{v}: {e}"));
        match flag.as_str() {
            "--model" => args.model = PathBuf::from(value()?),
            "--clients" => {
                args.clients = value()?
                    .split(',')
                    .map(|c| number(c.to_string()))
                    .collect::<Result<_, _>>()?
            }
            "--requests-per-client" => args.requests_per_client = number(value()?)?,
            "--max-tokens" => args.max_tokens = number(value()?)?,
            "--max-batch" => args.max_batch = number(value()?)?,
            "--preambles" => args.preambles = number(value()?)?,
            "--temperature" => {
                let v = value()?;
                args.temperature = v.parse().map_err(|e| format!("{v}: {e}"))?
            }
            "--packed-weights" => {
                args.packed_weights = match value()?.as_str() {
                    "on" => true,
                    "off" => false,
                    other => return Err(format!("--packed-weights takes on or off, not {other}")),
                }
            }
            "--json" => args.json = Some(PathBuf::from(value()?)),
            "--help" | "-h" => {
                return Err(
                    "usage: load --model DIR [--clients 1,8,32] [--requests-per-client N] \
                            [--max-tokens N] [--max-batch N] [--preambles N] [--temperature T] \
                            [--packed-weights on|off] [--json FILE]"
                        .into(),
                )
            }
            other => return Err(format!("unknown argument {other}; see --help")),
        }
    }
    if args.model.as_os_str().is_empty() {
        return Err("--model DIR is required; see --help".into());
    }
    if args.clients.contains(&0) || args.requests_per_client == 0 || args.max_tokens == 0 {
        return Err("clients, requests and tokens must be at least 1".into());
    }
    Ok(args)
}

/// Resident memory of this process, in MiB (Linux; 0 elsewhere).
fn rss_mib() -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse::<f64>().ok())
        })
        .map_or(0.0, |kib| kib / 1024.0)
}

/// (steal, total) CPU time of the machine so far, in clock ticks (`/proc/stat`; zeros
/// elsewhere).
fn cpu_ticks() -> (u64, u64) {
    let Some(line) = std::fs::read_to_string("/proc/stat")
        .ok()
        .and_then(|s| s.lines().next().map(str::to_string))
    else {
        return (0, 0);
    };
    let ticks = line
        .split_whitespace()
        .skip(1)
        .filter_map(|t| t.parse::<u64>().ok())
        .collect::<Vec<_>>();
    // user nice system idle iowait irq softirq steal guest guest_nice; guests are in user.
    let total = ticks.iter().take(8).sum();
    (ticks.get(7).copied().unwrap_or(0), total)
}

/// One streamed request: (time to first token, completion tokens), or an error.
fn one_request(url: &str, body: &Value) -> Result<(Duration, u64), String> {
    let start = Instant::now();
    let response = ureq::AgentBuilder::new()
        .timeout(Duration::from_secs(600))
        .build()
        .post(url)
        .set("Content-Type", "application/json")
        .send_string(&body.to_string())
        .map_err(|e| e.to_string())?;
    let mut first = None;
    let mut tokens = None;
    let mut done = false;
    for line in BufReader::new(response.into_reader()).lines() {
        let line = line.map_err(|e| e.to_string())?;
        let Some(data) = line.strip_prefix("data: ") else {
            continue;
        };
        if data == "[DONE]" {
            done = true;
            break;
        }
        let chunk: Value = serde_json::from_str(data).map_err(|e| e.to_string())?;
        if chunk.get("error").is_some() {
            return Err(chunk["error"]["message"].to_string());
        }
        let has_text = chunk["choices"][0]["delta"]["content"]
            .as_str()
            .is_some_and(|t| !t.is_empty());
        if has_text && first.is_none() {
            first = Some(start.elapsed());
        }
        if let Some(n) = chunk["usage"]["completion_tokens"].as_u64() {
            tokens = Some(n);
        }
    }
    match (done, tokens) {
        (true, Some(tokens)) => Ok((first.unwrap_or_else(|| start.elapsed()), tokens)),
        _ => Err("the stream ended without its usage and [DONE]".into()),
    }
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

fn main() {
    // As `ember serve` does (its `main` is the CLI's): large buffers stay in the process.
    ember_train::keep_freed_memory();
    let args = match parse_args() {
        Ok(args) => args,
        Err(message) => {
            eprintln!("{message}");
            std::process::exit(2);
        }
    };
    if !args.packed_weights {
        ember_transformer::set_packed_weights_limit(0);
    }
    let memory_before_load = rss_mib();
    let server = match Server::start::<burn::backend::Flex>(
        &args.model,
        Default::default(),
        ServeConfig {
            port: 0,
            engine: EngineConfig {
                max_batch: args.max_batch,
                queue: args.clients.iter().max().copied().unwrap_or(1).max(64),
                preambles: args.preambles,
            },
            ..Default::default()
        },
    ) {
        Ok(server) => server,
        Err(error) => {
            eprintln!("error: {error}");
            std::process::exit(1);
        }
    };
    let url = format!("http://{}/v1/chat/completions", server.address());
    let prompts = [
        "Reverse the word: garden",
        "Spell the word: lantern",
        "Sort these words: pear apple fig",
        "What is 17 + 25?",
    ];
    // Warm-up: one request, so that the first level does not pay for first-touch costs.
    let warm = json!({"messages": [{"role": "user", "content": prompts[0]}], "max_tokens": 8,
                      "stream": true, "stream_options": {"include_usage": true}});
    if let Err(error) = one_request(&url, &warm) {
        eprintln!("error: the warm-up request failed: {error}");
        std::process::exit(1);
    }
    println!(
        "model {} · max batch {} · {} preambles kept · temperature {} · {} requests per client \
         · {} tokens per answer (ignore_eos) · packed weights {} · {} threads",
        args.model.display(),
        args.max_batch,
        args.preambles,
        args.temperature,
        args.requests_per_client,
        args.max_tokens,
        if args.packed_weights { "on" } else { "off" },
        std::thread::available_parallelism().map_or(1, |n| n.get())
    );
    println!();
    println!(
        "| clients | requests | tokens | seconds | tokens/s | TTFT p50 ms | TTFT p99 ms | errors | \
         RSS before MiB | RSS after MiB | CPU stolen |"
    );
    println!("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    let mut levels = Vec::new();
    for &clients in &args.clients {
        let memory_before = rss_mib();
        let ticks_before = cpu_ticks();
        let start = Instant::now();
        let results = std::thread::scope(|scope| {
            let handles = (0..clients)
                .map(|client| {
                    let url = &url;
                    let args = &args;
                    scope.spawn(move || {
                        (0..args.requests_per_client)
                            .map(|r| {
                                let body = json!({
                                    "messages": [{"role": "user",
                                                  "content": prompts[(client + r) % prompts.len()]}],
                                    "max_tokens": args.max_tokens,
                                    "temperature": args.temperature,
                                    "seed": (client * 1000 + r) as u64,
                                    "ignore_eos": true,
                                    "stream": true,
                                    "stream_options": {"include_usage": true},
                                });
                                one_request(url, &body)
                            })
                            .collect::<Vec<_>>()
                    })
                })
                .collect::<Vec<_>>();
            handles
                .into_iter()
                .flat_map(|h| h.join().unwrap_or_default())
                .collect::<Vec<_>>()
        });
        let seconds = start.elapsed().as_secs_f64();
        let memory_after = rss_mib();
        let ticks_after = cpu_ticks();
        let stolen = (ticks_after.0 - ticks_before.0) as f64
            / (ticks_after.1 - ticks_before.1).max(1) as f64;
        let errors = results.iter().filter(|r| r.is_err()).count();
        for error in results.iter().filter_map(|r| r.as_ref().err()).take(3) {
            eprintln!("error: {error}");
        }
        let tokens: u64 = results
            .iter()
            .filter_map(|r| r.as_ref().ok())
            .map(|r| r.1)
            .sum();
        let mut ttft = results
            .iter()
            .filter_map(|r| r.as_ref().ok())
            .map(|r| r.0.as_secs_f64() * 1000.0)
            .collect::<Vec<_>>();
        ttft.sort_by(f64::total_cmp);
        let throughput = tokens as f64 / seconds;
        let (p50, p99) = (percentile(&ttft, 50.0), percentile(&ttft, 99.0));
        println!(
            "| {clients} | {} | {tokens} | {seconds:.2} | {throughput:.1} | {p50:.0} | {p99:.0} | \
             {errors} | {memory_before:.0} | {memory_after:.0} | {:.0} % |",
            results.len(),
            100.0 * stolen
        );
        levels.push(json!({
            "clients": clients, "requests": results.len(), "tokens": tokens,
            "seconds": seconds, "tokens_per_second": throughput,
            "ttft_p50_ms": p50, "ttft_p99_ms": p99, "errors": errors,
            "rss_before_mib": memory_before, "rss_after_mib": memory_after,
            "cpu_stolen": stolen,
        }));
    }
    let stats = server.engine().stats();
    let base = levels
        .first()
        .and_then(|l| l["tokens_per_second"].as_f64())
        .unwrap_or(f64::NAN);
    println!();
    for level in &levels {
        let ratio = level["tokens_per_second"].as_f64().unwrap_or(f64::NAN) / base;
        println!(
            "{} clients: {ratio:.2}× the throughput of {} at a time",
            level["clients"], levels[0]["clients"]
        );
    }
    println!(
        "engine: {} steps, {} of them batched, at most {} sequences in one step; {} of {} \
         prompt tokens from kept preambles; RSS at start {memory_before_load:.0} MiB",
        stats.steps,
        stats.batched_steps,
        stats.max_batch_seen,
        stats.cached_prompt_tokens,
        stats.prompt_tokens
    );
    if let Some(path) = &args.json {
        let report = json!({
            "model": args.model, "max_batch": args.max_batch, "temperature": args.temperature,
            "requests_per_client": args.requests_per_client, "max_tokens": args.max_tokens,
            "packed_weights": args.packed_weights, "levels": levels, "engine": stats,
        });
        let text = serde_json::to_string_pretty(&report).unwrap_or_default();
        if let Err(error) = std::fs::write(path, text + "\n") {
            eprintln!("error: {}: {error}", path.display());
            std::process::exit(1);
        }
    }
    if let Err(error) = server.shutdown() {
        eprintln!("error: {error}");
        std::process::exit(1);
    }
}
