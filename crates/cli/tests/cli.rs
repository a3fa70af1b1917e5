//! The `ember` binary end to end on a small corpus: tokenizer, pretraining, resume, generation,
//! and the errors a user meets.
//!
//! (Long because each test drives one command through its real files; they share the binary
//! helpers at the top.)

use std::path::Path;
use std::process::{Command, Output};

fn ember(args: &[&str], dir: &Path) -> Output {
    Command::new(env!("CARGO_BIN_EXE_ember"))
        .args(args)
        .current_dir(dir)
        .output()
        .expect("ember runs")
}

fn text(output: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

fn corpus(dir: &Path) {
    let words = [
        "the", "king", "and", "queen", "of", "a", "castle", "rode", "to", "sea", "by", "night",
    ];
    let mut state = 7u64;
    let mut text = String::new();
    for line in 0..600 {
        for _ in 0..(5 + line % 4) {
            state = state
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            text.push_str(words[(state >> 33) as usize % words.len()]);
            text.push(' ');
        }
        text.push_str(".\n");
    }
    std::fs::create_dir_all(dir.join("corpus")).unwrap();
    std::fs::write(dir.join("corpus/story.txt"), text).unwrap();
}

const CONFIG: &str = r#"
[model]
d_model = 32
n_layers = 2
n_heads = 2
[tokenizer]
vocab_size = 300
[shards]
block_bytes = 1024
[batch]
batch_size = 4
seq_len = 32
[train]
steps = 6
checkpoint_every = 3
eval_every = 3
progress = false
"#;

#[test]
fn pretrain_resume_and_generate() {
    let dir = tempfile::tempdir().unwrap();
    let dir = dir.path();
    corpus(dir);
    std::fs::write(dir.join("pretrain.toml"), CONFIG).unwrap();

    let out = ember(
        &[
            "pretrain",
            "--data",
            "corpus",
            "--run",
            "run",
            "--config",
            "pretrain.toml",
        ],
        dir,
    );
    assert!(out.status.success(), "{}", text(&out));
    let log = text(&out);
    assert!(log.contains("validation: loss"), "{log}");
    for file in [
        "config.toml",
        "tokenizer.json",
        "shards/train.bin",
        "model/model.mpk",
        "model/tokenizer.json",
    ] {
        assert!(dir.join("run").join(file).exists(), "{file} missing");
    }
    let metrics = std::fs::read_to_string(dir.join("run/metrics.jsonl")).unwrap();
    assert_eq!(
        metrics.lines().filter(|l| l.contains("\"train\"")).count(),
        6
    );

    // Asking for more steps resumes from the last checkpoint, reading the run's own config.
    let out = ember(&["pretrain", "--run", "run", "--steps", "9"], dir);
    assert!(out.status.success(), "{}", text(&out));
    assert!(text(&out).contains("resumed from step 6"), "{}", text(&out));
    let metrics = std::fs::read_to_string(dir.join("run/metrics.jsonl")).unwrap();
    assert_eq!(
        metrics.lines().filter(|l| l.contains("\"train\"")).count(),
        9
    );

    // Instruction tuning on prompt-completion data, answer loss reported before and after.
    let mut lines = String::new();
    for i in 0..40 {
        lines.push_str(&format!(
            "{{\"prompt\": \"the king of sea {i}\", \"completion\": \"the queen\"}}\n"
        ));
    }
    std::fs::write(dir.join("sft.jsonl"), lines).unwrap();
    let out = ember(
        &[
            "sft",
            "--model",
            "run/model",
            "--data",
            "sft.jsonl",
            "--run",
            "sft",
            "--steps",
            "4",
        ],
        dir,
    );
    let log = text(&out);
    assert!(out.status.success(), "{log}");
    assert!(
        log.contains("36 training and 4 validation conversations"),
        "{log}"
    );
    assert!(
        log.contains("validation answer loss before tuning") && log.contains("answer_loss"),
        "{log}"
    );
    assert!(dir.join("sft/model/model.mpk").exists());

    // A chat: two turns on standard input, one answer line each, and a prompts file. A line
    // that is not UTF-8 and one too long for the context are reported; the session goes on.
    let mut child = Command::new(env!("CARGO_BIN_EXE_ember"))
        .args([
            "chat",
            "--model",
            "sft/model",
            "--temperature",
            "0",
            "--max-new-tokens",
            "6",
            "--system",
            "be brief",
        ])
        .current_dir(dir)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write as _;
    let mut input = b"the king of sea 1\n\xff\xfe bad\n".to_vec();
    input.extend("sea ".repeat(3000).as_bytes());
    input.extend(b"\n/reset\nthe king of sea 2\n");
    child.stdin.take().unwrap().write_all(&input).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).lines().count(),
        2,
        "{}",
        text(&out)
    );
    assert!(text(&out).contains("(a new conversation)"));
    assert!(text(&out).contains("not UTF-8"), "{}", text(&out));
    assert!(text(&out).contains("it was not sent"), "{}", text(&out));
    serve_answers_and_stops_on_sigterm(dir);
    std::fs::write(
        dir.join("prompts.jsonl"),
        "{\"prompt\": \"the king\"}\n{\"prompt\": \"a sea\"}\n",
    )
    .unwrap();
    let out = ember(
        &[
            "generate",
            "--model",
            "run/model",
            "--prompts",
            "prompts.jsonl",
            "--max-new-tokens",
            "4",
            "--batch-size",
            "2",
        ],
        dir,
    );
    assert!(out.status.success(), "{}", text(&out));
    let lines = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .collect::<Vec<_>>();
    assert_eq!(lines.len(), 2);
    assert_eq!(lines[1]["prompt"], "a sea");
    assert!(lines[0]["finish"] == "length" || lines[0]["finish"] == "stop");
    std::fs::write(
        dir.join("broken.jsonl"),
        "{\"prompt\": \"ok\"}\n{\"text\": 1}\n",
    )
    .unwrap();
    let out = ember(
        &[
            "generate",
            "--model",
            "run/model",
            "--prompts",
            "broken.jsonl",
        ],
        dir,
    );
    assert!(
        !out.status.success() && text(&out).contains("broken.jsonl:2:"),
        "{}",
        text(&out)
    );

    // Evaluation on the built-in tasks: a table per family, and per-example JSONL.
    let out = ember(
        &[
            "eval",
            "--model",
            "sft/model",
            "--per-family",
            "2",
            "--max-new-tokens",
            "4",
            "--output",
            "eval.jsonl",
        ],
        dir,
    );
    let log = text(&out);
    assert!(out.status.success(), "{log}");
    for family in [
        "translate",
        "arithmetic",
        "reverse",
        "spell",
        "count_letters",
        "sort",
        "compare",
        "describe",
        "all",
    ] {
        assert!(
            log.lines().any(|l| l.starts_with(family)),
            "{family}: {log}"
        );
    }
    let rows = std::fs::read_to_string(dir.join("eval.jsonl")).unwrap();
    assert_eq!(rows.lines().count(), 16);
    for row in rows.lines() {
        let row: serde_json::Value = serde_json::from_str(row).unwrap();
        let score = row["score"].as_f64().unwrap();
        assert!(
            (0.0..=1.0).contains(&score) && row["prompt"].is_string() && row["output"].is_string()
        );
    }

    // Sampled evaluation: three answers per prompt, each prompt's answers together, seeded.
    let sampled = [
        "eval",
        "--model",
        "sft/model",
        "--per-family",
        "1",
        "--max-new-tokens",
        "4",
        "--temperature",
        "1",
        "--samples",
        "3",
        "--output",
        "sampled.jsonl",
    ];
    let out = ember(&sampled, dir);
    assert!(out.status.success(), "{}", text(&out));
    let rows = std::fs::read_to_string(dir.join("sampled.jsonl")).unwrap();
    let prompts = rows
        .lines()
        .map(|r| serde_json::from_str::<serde_json::Value>(r).unwrap()["prompt"].clone())
        .collect::<Vec<_>>();
    assert_eq!(prompts.len(), 8 * 3);
    for answers in prompts.chunks(3) {
        assert!(answers.iter().all(|p| *p == answers[0]), "{answers:?}");
    }
    assert_ne!(prompts[0], prompts[3]);
    // The same again (over the file it wrote: --force) gives the same answers.
    let refused = ember(&sampled, dir);
    assert!(text(&refused).contains("sampled.jsonl exists; pass --force"));
    let mut again = sampled.to_vec();
    again.push("--force");
    assert_eq!(ember(&again, dir).stdout, out.stdout, "seeded");
    let greedy_samples = ember(&["eval", "--model", "sft/model", "--samples", "2"], dir);
    assert!(!greedy_samples.status.success());
    assert!(
        text(&greedy_samples).contains("--temperature"),
        "{}",
        text(&greedy_samples)
    );

    // Greedy generation is deterministic and streams the prompt and its continuation.
    let args = [
        "generate",
        "--model",
        "run/model",
        "--prompt",
        "the king",
        "--temperature",
        "0",
        "--max-new-tokens",
        "8",
    ];
    let first = ember(&args, dir);
    assert!(first.status.success(), "{}", text(&first));
    assert!(String::from_utf8_lossy(&first.stdout).starts_with("the king"));
    assert_eq!(first.stdout, ember(&args, dir).stdout);

    // A batch of prompts of different lengths, and a sampling config file.
    std::fs::write(
        dir.join("sample.toml"),
        "max_new_tokens = 5\nseed = 3\n[sampling]\nkind = \"top_k\"\nk = 5\ntemperature = 0.7\n",
    )
    .unwrap();
    let out = ember(
        &[
            "generate",
            "--model",
            "run/model",
            "--config",
            "sample.toml",
            "--prompt",
            "a",
            "--prompt",
            "the queen rode",
        ],
        dir,
    );
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).matches("--- ").count(),
        2
    );
}

#[test]
fn bad_input_gets_a_clear_error_not_a_panic() {
    let dir = tempfile::tempdir().unwrap();
    let dir = dir.path();
    let cases: [(&[&str], &str); 11] = [
        (
            &[
                "reward",
                "collect",
                "--model",
                "nowhere",
                "-o",
                "kept.jsonl",
            ],
            "kept.jsonl exists; pass --force",
        ),
        (
            &["tokenizer", "train", "latin1.txt", "-o", "kept.json"],
            "kept.json exists; pass --force",
        ),
        (
            &["eval", "--model", "nowhere", "--output", "kept.jsonl"],
            "kept.jsonl exists; pass --force",
        ),
        (
            &[
                "reward",
                "collect",
                "--model",
                "nowhere",
                "-o",
                "out.jsonl",
                "--closeness",
                "0.5",
            ],
            "would reorder the judge's levels",
        ),
        (&["bench", "--steps", "0"], "--steps must be at least 1"),
        (
            &["bench", "--peak-tflops", "0"],
            "--peak-tflops must be a positive number",
        ),
        (&["tokenizer", "train", "missing.txt"], "missing.txt"),
        (&["pretrain", "--run", "empty-run"], "--data is required"),
        (
            &["generate", "--model", "nowhere"],
            "nowhere/tokenizer.json",
        ),
        (
            &["generate", "--model", "nowhere", "--top-k", "0"],
            "top-k needs k >= 1",
        ),
        (
            &["pretrain", "--data", "x", "--config", "bad.toml"],
            "bad.toml",
        ),
    ];
    std::fs::write(dir.join("bad.toml"), "[train]\nstep = 3\n").unwrap();
    std::fs::write(dir.join("kept.jsonl"), "{}\n").unwrap();
    std::fs::write(dir.join("kept.json"), "{}\n").unwrap();
    for (args, expected) in cases {
        let out = ember(args, dir);
        let log = text(&out);
        assert!(!out.status.success(), "{args:?} succeeded");
        assert!(
            log.contains("error:") && log.contains(expected),
            "{args:?}: {log}"
        );
        assert!(!log.contains("panicked"), "{args:?}: {log}");
    }
    // What the refused commands would have replaced is untouched.
    assert_eq!(
        std::fs::read_to_string(dir.join("kept.jsonl")).unwrap(),
        "{}\n"
    );
    assert_eq!(
        std::fs::read_to_string(dir.join("kept.json")).unwrap(),
        "{}\n"
    );
    let non_utf8 = dir.join("latin1.txt");
    std::fs::write(&non_utf8, b"caf\xe9\n").unwrap();
    let out = ember(&["tokenizer", "train", "latin1.txt"], dir);
    assert!(
        text(&out).contains("latin1.txt: not valid UTF-8"),
        "{}",
        text(&out)
    );
}

#[test]
fn tasks_export_writes_data_the_other_commands_read() {
    let dir = tempfile::tempdir().unwrap();
    let dir = dir.path();
    let args = [
        "tasks",
        "export",
        "--out",
        "t",
        "--corpus-sentences",
        "100",
        "--train-per-family",
        "3",
        "--heldout-per-family",
        "2",
    ];
    let out = ember(&args, dir);
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(
        std::fs::read_to_string(dir.join("t/corpus.txt"))
            .unwrap()
            .lines()
            .count(),
        100
    );
    assert_eq!(
        std::fs::read_to_string(dir.join("t/heldout.jsonl"))
            .unwrap()
            .lines()
            .count(),
        16
    );
    let tokenizer = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../tokenizer/tests/fixtures/hf/ember-tokenizer.json"
    );
    let out = ember(
        &[
            "data",
            "show",
            "t/sft.jsonl",
            "--tokenizer",
            tokenizer,
            "--strict",
        ],
        dir,
    );
    assert!(out.status.success(), "{}", text(&out));
    assert!(text(&out).contains("24 conversations"), "{}", text(&out));
}

/// Runs `ember bench --shapes tiny --steps 1` with `extra` arguments: its log and the fields
/// of its `tiny` row.
fn bench_tiny(extra: &[&str], dir: &Path) -> (String, Vec<String>) {
    let args = [&["bench", "--shapes", "tiny", "--steps", "1"][..], extra].concat();
    let out = ember(&args, dir);
    let log = text(&out);
    assert!(out.status.success(), "{log}");
    let row = log
        .lines()
        .find(|l| l.starts_with("tiny "))
        .unwrap_or_else(|| panic!("no tiny row: {log}"));
    let fields = row.split_whitespace().map(String::from).collect();
    (log, fields)
}

#[test]
fn bench_prints_training_and_generation_tables() {
    let dir = tempfile::tempdir().unwrap();
    let (log, fields) = bench_tiny(&["--new-tokens", "4"], dir.path());
    // params, batch, tokens per step, then three positive figures.
    assert_eq!(fields[1..4], ["1.33M", "16", "2048"], "{fields:?}");
    for figure in &fields[4..7] {
        assert!(figure.parse::<f64>().unwrap() > 0.0, "{fields:?}");
    }
    // Batches 1 and 8, the KV cache giving the same greedy tokens as full recomputation.
    for batch in ["1 ", "8 "] {
        let row = log
            .lines()
            .find(|l| l.starts_with(batch))
            .unwrap_or_else(|| panic!("no batch {batch}row: {log}"));
        assert!(row.ends_with("100.0%"), "{row}");
    }

    // bf16 (emulated on flex) with an MFU column: at a peak of 0.1 TFLOP/s, MFU in percent
    // is the GFLOP/s figure itself (printed to one decimal, MFU to two).
    let extra = [
        "--no-generation",
        "--precision",
        "bf16",
        "--peak-tflops",
        "0.1",
    ];
    let (log, fields) = bench_tiny(&extra, dir.path());
    assert!(log.contains("Gpt2-shaped, BF16;"), "{log}");
    let gflops = fields[6].parse::<f64>().unwrap();
    let mfu = fields[7].trim_end_matches('%').parse::<f64>().unwrap();
    assert!(gflops > 0.0 && (mfu - gflops).abs() <= 0.051, "{fields:?}");
}

/// `ember serve` on a free port: one chat completion over HTTP, then SIGTERM ends it with
/// exit status 0.
fn serve_answers_and_stops_on_sigterm(dir: &Path) {
    use std::io::{BufRead as _, BufReader, Read as _, Write as _};
    let mut child = Command::new(env!("CARGO_BIN_EXE_ember"))
        .args([
            "serve",
            "--model",
            "sft/model",
            "--port",
            "0",
            "--name",
            "tiny",
        ])
        .current_dir(dir)
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut stderr = BufReader::new(child.stderr.take().unwrap());
    let mut line = String::new();
    let address = loop {
        line.clear();
        assert!(
            stderr.read_line(&mut line).unwrap() > 0,
            "ember serve ended"
        );
        if let Some(rest) = line.split("on http://").nth(1) {
            break rest.split_whitespace().next().unwrap().to_string();
        }
    };
    let body = r#"{"model": "tiny", "messages": [{"role": "user", "content": "the king"}], "max_tokens": 4, "temperature": 0}"#;
    let mut stream = std::net::TcpStream::connect(&address).unwrap();
    write!(
        stream,
        "POST /v1/chat/completions HTTP/1.1\r\nHost: {address}\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).unwrap();
    assert!(response.starts_with("HTTP/1.1 200"), "{response}");
    let json = response.split("\r\n\r\n").nth(1).unwrap();
    let json: serde_json::Value = serde_json::from_str(json).unwrap();
    assert_eq!(json["model"], "tiny");
    assert!(json["usage"]["completion_tokens"].as_u64().unwrap() <= 4);
    let killed = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(killed.success());
    let status = child.wait().unwrap();
    let mut rest = String::new();
    stderr.read_to_string(&mut rest).unwrap();
    assert!(status.success(), "{status}: {rest}");
    assert!(rest.contains("stopped"), "{rest}");
}

#[test]
fn help_describes_every_command() {
    let dir = tempfile::tempdir().unwrap();
    for command in [
        &["--help"][..],
        &["pretrain", "--help"],
        &["generate", "--help"],
        &["serve", "--help"],
        &["tokenizer", "train", "--help"],
    ] {
        let out = ember(command, dir.path());
        assert!(out.status.success());
        let help = String::from_utf8_lossy(&out.stdout);
        assert!(help.contains("Usage: ember"), "{help}");
    }
    let out = ember(&["pretrain", "--help"], dir.path());
    let help = String::from_utf8_lossy(&out.stdout);
    for flag in ["--data", "--run", "--config", "--device", "--steps"] {
        assert!(help.contains(flag), "{flag}: {help}");
    }
}

#[test]
fn data_show_marks_what_is_learned_and_counts_bad_records() {
    let dir = tempfile::tempdir().unwrap();
    let dir = dir.path();
    let tokenizer = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../tokenizer/tests/fixtures/hf/ember-tokenizer.json"
    );
    std::fs::write(
        dir.join("pc.jsonl"),
        "{\"prompt\": \"What is 2 + 2?\", \"completion\": \"4\"}\n{\"prompt\": \"x\"}\n",
    )
    .unwrap();
    let out = ember(&["data", "show", "pc.jsonl", "--tokenizer", tokenizer], dir);
    let log = text(&out);
    assert!(out.status.success(), "{log}");
    assert!(
        log.contains("<|assistant_start|>⟦4<|assistant_end|>⟧"),
        "{log}"
    );
    assert!(
        log.contains("skipped 1 malformed record(s)")
            && log.contains("pc.jsonl:2: missing `completion`"),
        "{log}"
    );
    let strict = ember(
        &[
            "data",
            "show",
            "pc.jsonl",
            "--tokenizer",
            tokenizer,
            "--strict",
        ],
        dir,
    );
    assert!(
        !strict.status.success() && text(&strict).contains("pc.jsonl:2:"),
        "{}",
        text(&strict)
    );
}

const PIPELINE: &str = r#"
[tasks]
corpus_sentences = 3000
train_per_family = 24
[pretrain.model]
d_model = 32
n_layers = 2
n_heads = 2
[pretrain.tokenizer]
vocab_size = 400
[pretrain.batch]
batch_size = 4
seq_len = 32
[pretrain.train]
steps = 4
eval_every = 2
checkpoint_every = 2
progress = false
[sft]
val_fraction = 0.1
[sft.batch]
batch_size = 4
row_len = 48
[sft.train]
steps = 4
eval_every = 2
checkpoint_every = 2
progress = false
[collect]
per_family = 6
heldout_per_family = 4
k = 3
[reward.batch]
prompts_per_batch = 2
[reward.train]
steps = 3
eval_every = 3
checkpoint_every = 3
progress = false
[ppo]
iterations = 2
prompts_per_family = 4
eval_per_family = 1
eval_every = 1
checkpoint_every = 1
[ppo.ppo]
rollout_prompts = 8
samples_per_prompt = 2
minibatches = 2
max_new_tokens = 6
[eval]
per_family = 2
max_new_tokens = 8
"#;

#[test]
fn the_pipeline_runs_every_stage_resumes_and_reports() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("pipeline.toml"), PIPELINE).unwrap();
    let args = [
        "pipeline",
        "--run",
        "runs/p",
        "--config",
        "pipeline.toml",
        "--upper-bound",
    ];
    let out = ember(&args, dir.path());
    assert!(out.status.success(), "{}", text(&out));
    let run = dir.path().join("runs/p");
    for file in [
        "data/corpus.txt",
        "base/model/model.mpk",
        "sft/model/model.mpk",
        "rankings/train.jsonl",
        "rankings/heldout.jsonl",
        "reward/model/reward.json",
        "ppo/model/model.mpk",
        "eval/ppo.jsonl",
        "eval/summary.json",
    ] {
        assert!(run.join(file).exists(), "{file} missing: {}", text(&out));
    }
    for plot in ["loss", "reward", "kl"] {
        let svg = std::fs::read_to_string(run.join(format!("plots/{plot}.svg"))).unwrap();
        assert!(
            svg.starts_with("<svg") && svg.contains("<polyline"),
            "{plot}.svg"
        );
    }
    let report = std::fs::read_to_string(run.join("report.md")).unwrap();
    for needle in [
        "| **all** |",
        "win rate",
        "pairwise accuracy",
        "final KL",
        "| ppo |",
        "| **total** |",
    ] {
        assert!(report.contains(needle), "{needle}: {report}");
    }
    // Eight families, one row each, in the gains, the greedy and the sampled judge tables.
    assert_eq!(report.matches("| translate |").count(), 3, "{report}");
    assert!(
        report.contains("Sampled answers** (8 per prompt"),
        "{report}"
    );
    for needle in [
        "paired bootstrap 95 % intervals",
        "| SFT, flawless data |",
        "| PPO, judge as reward |",
        "Share of the gap between SFT and SFT on flawless data that PPO closes",
        "carry a flaw the labeler dislikes",
    ] {
        assert!(report.contains(needle), "{needle}: {report}");
    }
    // The sampled evaluation: per model and family a mean judge score, and the overall mean
    // is the mean of the families' (every family has as many prompts).
    let summary: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(run.join("eval/summary.json")).unwrap())
            .unwrap();
    for model in ["base", "sft", "ppo"] {
        let sampled = &summary["models"][model]["sampled"];
        let families = sampled["families"].as_object().unwrap();
        assert_eq!(families.len(), 8, "{summary}");
        let scores = families
            .values()
            .map(|v| v["mean"].as_f64().unwrap())
            .collect::<Vec<_>>();
        assert!(scores.iter().all(|s| (0.0..=1.0).contains(s)));
        let mean = sampled["mean"].as_f64().unwrap();
        assert!(
            (mean - scores.iter().sum::<f64>() / 8.0).abs() < 1e-9,
            "{summary}"
        );
    }
    let by_family = summary["reward_model_by_family"].as_object().unwrap();
    let pairs: u64 = by_family
        .values()
        .map(|v| v["pairs"].as_u64().unwrap())
        .sum();
    assert_eq!(
        pairs,
        summary["reward_model"]["pairs"].as_u64().unwrap(),
        "{summary}"
    );
    let timings: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(run.join("timings.json")).unwrap()).unwrap();
    let first_ppo = timings["ppo"].as_f64().unwrap();

    // The stages' own commands read what the pipeline wrote.
    let scored = ember(
        &[
            "reward",
            "score",
            "--model",
            "runs/p/reward/model",
            "--prompt",
            "What is 2 + 3?",
            "--answer",
            "5",
            "--answer",
            "seven",
        ],
        dir.path(),
    );
    assert!(scored.status.success(), "{}", text(&scored));
    let lines = String::from_utf8_lossy(&scored.stdout)
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .collect::<Vec<_>>();
    assert_eq!(lines.len(), 2);
    assert_eq!(lines[1]["answer"], "seven");
    assert!(lines[0]["reward"].as_f64().unwrap().is_finite());
    let evaluated = ember(
        &[
            "reward",
            "eval",
            "--model",
            "runs/p/reward/model",
            "--data",
            "runs/p/rankings/heldout.jsonl",
        ],
        dir.path(),
    );
    assert!(evaluated.status.success(), "{}", text(&evaluated));
    assert!(
        text(&evaluated).contains("accuracy"),
        "{}",
        text(&evaluated)
    );
    let not_a_reward_model = ember(
        &[
            "reward",
            "score",
            "--model",
            "runs/p/sft/model",
            "--prompt",
            "q",
            "--answer",
            "a",
        ],
        dir.path(),
    );
    assert!(!not_a_reward_model.status.success());
    assert!(
        text(&not_a_reward_model).contains("reward.json"),
        "{}",
        text(&not_a_reward_model)
    );

    // Again: every stage is done, nothing is redone, the report is written anew.
    let again = ember(&args, dir.path());
    assert!(again.status.success(), "{}", text(&again));
    let log = text(&again);
    for stage in [
        "data",
        "pretrain",
        "sft",
        "sft_flawless",
        "collect",
        "reward",
        "ppo",
        "ppo_judge",
        "eval",
    ] {
        assert!(
            log.contains(&format!("{stage}: done already")),
            "{stage}: {log}"
        );
    }
    let timings: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(run.join("timings.json")).unwrap()).unwrap();
    assert_eq!(timings["ppo"].as_f64().unwrap(), first_ppo);

    // `ember report` sums runs up: this one alone, and a folder that is not a run is refused.
    let summed = ember(
        &["report", "--runs", "runs/p", "--out", "seeds.md"],
        dir.path(),
    );
    assert!(summed.status.success(), "{}", text(&summed));
    let seeds = std::fs::read_to_string(dir.path().join("seeds.md")).unwrap();
    assert!(seeds.contains("| **pooled** |"), "{seeds}");
    assert_eq!(seeds.matches("| runs/p | 0 | 60 % |").count(), 1, "{seeds}");
    let not_a_run = ember(&["report", "--runs", "runs"], dir.path());
    assert!(!not_a_run.status.success());
    assert!(
        text(&not_a_run).contains("summary.json"),
        "{}",
        text(&not_a_run)
    );

    // A configuration with a key no stage knows is refused before anything runs.
    std::fs::write(dir.path().join("bad.toml"), "[ppo]\nitertions = 3\n").unwrap();
    let bad = ember(
        &["pipeline", "--run", "runs/q", "--config", "bad.toml"],
        dir.path(),
    );
    assert!(!bad.status.success());
    assert!(text(&bad).contains("itertions"), "{}", text(&bad));
    assert!(!dir.path().join("runs/q/data").exists());
}
