//! `ember serve` over real HTTP on a free loopback port: answers, streams, determinism under
//! batching, the error contract, a disconnect freeing its slot, shutdown.

use std::io::{BufRead as _, BufReader, Read};
use std::path::Path;
use std::time::{Duration, Instant};

use burn::backend::Flex;
use ember_instruct::{Conversation, Message};
use ember_pipeline::ModelFolder;
use ember_serve::{EngineConfig, ServeConfig, Server};
use ember_tokenizer::{BpeConfig, Tokenizer};
use ember_transformer::{generate, DecoderConfig, FinishReason, GenerateConfig};
use serde_json::{json, Value};

/// A random tiny model (its answers are noise, which is all these tests need) with a
/// context of `context`, saved in `dir/model`.
fn model_folder(dir: &Path, context: usize, width: usize) -> ModelFolder {
    let text = dir.join("corpus.txt");
    std::fs::write(
        &text,
        "the cat sat on the mat. 2 + 3 = 5. naïve café 無監督 ".repeat(40),
    )
    .unwrap();
    let bpe = BpeConfig {
        vocab_size: 300,
        ..Default::default()
    };
    let tokenizer = Tokenizer::train(&[text], &bpe).unwrap();
    let mut config = DecoderConfig::tiny();
    config.vocab_size = tokenizer.vocab_size();
    config.d_model = width;
    config.n_layers = 2;
    config.n_heads = 2;
    config.max_seq_len = context;
    let model = config.init::<Flex>(&Default::default()).unwrap();
    let folder = ModelFolder::new(dir.join("model"));
    folder.save(&model, &tokenizer).unwrap();
    folder
}

fn start(folder: &ModelFolder, config: ServeConfig) -> Server {
    Server::start::<Flex>(
        folder.path(),
        Default::default(),
        ServeConfig { port: 0, ..config },
    )
    .unwrap()
}

fn agent() -> ureq::Agent {
    ureq::AgentBuilder::new()
        .timeout(Duration::from_secs(120))
        .build()
}

fn url(server: &Server, path: &str) -> String {
    format!("http://{}{path}", server.address())
}

/// POSTs `body` (raw) and returns the status and the parsed JSON answer.
fn post_raw(server: &Server, body: &str, key: Option<&str>) -> (u16, Value) {
    let mut request = agent()
        .post(&url(server, "/v1/chat/completions"))
        .set("Content-Type", "application/json");
    if let Some(key) = key {
        request = request.set("Authorization", &format!("Bearer {key}"));
    }
    let response = match request.send_string(body) {
        Ok(response) => response,
        Err(ureq::Error::Status(_, response)) => response,
        Err(error) => panic!("{error}"),
    };
    let status = response.status();
    let text = response.into_string().unwrap();
    (
        status,
        serde_json::from_str(&text).unwrap_or(Value::String(text)),
    )
}

fn post(server: &Server, body: &Value) -> (u16, Value) {
    post_raw(server, &body.to_string(), None)
}

fn get(server: &Server, path: &str) -> (u16, Value) {
    let response = match agent().get(&url(server, path)).call() {
        Ok(response) => response,
        Err(ureq::Error::Status(_, response)) => response,
        Err(error) => panic!("{error}"),
    };
    let status = response.status();
    (
        status,
        serde_json::from_str(&response.into_string().unwrap()).unwrap(),
    )
}

fn health(server: &Server) -> Value {
    get(server, "/health").1
}

fn user(text: &str) -> Value {
    json!([{"role": "user", "content": text}])
}

/// A stream's `data:` payloads, read as they come.
struct Events {
    lines: std::io::Lines<BufReader<Box<dyn Read + Send + Sync>>>,
    /// Chunks that opened an answer with the assistant's role.
    roles: usize,
}

impl Events {
    fn open(server: &Server, body: &Value) -> Self {
        let response = agent()
            .post(&url(server, "/v1/chat/completions"))
            .set("Content-Type", "application/json")
            .send_string(&body.to_string())
            .unwrap();
        assert_eq!(response.header("Content-Type"), Some("text/event-stream"));
        Self {
            lines: BufReader::new(response.into_reader()).lines(),
            roles: 0,
        }
    }

    /// The next payload (`[DONE]` as a string), `None` at the end of the body.
    fn next_event(&mut self) -> Option<Value> {
        for line in self.lines.by_ref() {
            let line = line.unwrap();
            if let Some(data) = line.strip_prefix("data: ") {
                if data == "[DONE]" {
                    return Some(Value::String("[DONE]".into()));
                }
                let event: Value = serde_json::from_str(data).unwrap();
                let choices = event["choices"].as_array().into_iter().flatten();
                self.roles += choices
                    .filter(|c| c["delta"]["role"] == "assistant")
                    .count();
                return Some(event);
            }
            assert!(line.is_empty(), "not an SSE line: {line:?}");
        }
        None
    }

    /// Every answer's text and finish reason, the usage chunk if any; checks the framing.
    fn collect(mut self, n: usize) -> (Vec<String>, Vec<String>, Option<Value>) {
        let mut texts = vec![String::new(); n];
        let mut reasons = vec![String::new(); n];
        let mut usage = None;
        let mut done = false;
        while let Some(event) = self.next_event() {
            assert!(!done, "data after [DONE]");
            if event == "[DONE]" {
                done = true;
                continue;
            }
            assert_eq!(event["object"], "chat.completion.chunk");
            if !event["usage"].is_null() {
                usage = Some(event["usage"].clone());
            }
            for choice in event["choices"].as_array().unwrap() {
                let index = choice["index"].as_u64().unwrap() as usize;
                if let Some(text) = choice["delta"]["content"].as_str() {
                    texts[index].push_str(text);
                }
                if let Some(reason) = choice["finish_reason"].as_str() {
                    reasons[index] = reason.to_string();
                }
            }
        }
        assert!(done, "the stream did not end with [DONE]");
        assert_eq!(
            self.roles, n,
            "every answer opens with the assistant's role"
        );
        (texts, reasons, usage)
    }
}

#[test]
fn answers_whole_and_streamed_agree_with_the_library_and_count_their_tokens() {
    let dir = tempfile::tempdir().unwrap();
    let folder = model_folder(dir.path(), 128, 32);
    let server = start(&folder, ServeConfig::default());

    let (status, models) = get(&server, "/v1/models");
    assert_eq!(status, 200);
    // A stage's `model` folder is named after its stage: here the temporary folder.
    let name = dir.path().canonicalize().unwrap();
    let name = name.file_name().unwrap().to_str().unwrap();
    assert_eq!(models["data"][0]["id"], name);
    assert_eq!(health(&server)["status"], "ok");

    // Greedy, so the library's own `generate` gives the expected tokens.
    let body = json!({"model": name, "messages": user("the cat"), "temperature": 0,
                      "max_tokens": 12});
    let (status, whole) = post(&server, &body);
    assert_eq!(status, 200, "{whole}");
    assert_eq!(whole["object"], "chat.completion");
    let template = folder.template().unwrap();
    let prompt = template
        .render_prompt(&Conversation::new(vec![Message::user("the cat")]))
        .unwrap();
    let model = folder.load::<Flex>(&Default::default()).unwrap();
    let expected = generate(
        &model,
        std::slice::from_ref(&prompt),
        &GenerateConfig {
            max_new_tokens: 12,
            stop_tokens: vec![template.stop_token(), template.eos_token()],
            ..Default::default()
        },
    )
    .unwrap()
    .remove(0);
    let expected_text = template
        .tokenizer()
        .decode_skip_special(expected.content())
        .unwrap();
    let choice = &whole["choices"][0];
    assert_eq!(choice["message"]["role"], "assistant");
    assert_eq!(choice["message"]["content"], expected_text.as_str());
    let reason = match expected.finish {
        FinishReason::Length => "length",
        FinishReason::Stop => "stop",
    };
    assert_eq!(choice["finish_reason"], reason);
    let usage = &whole["usage"];
    assert_eq!(usage["prompt_tokens"], prompt.len());
    assert_eq!(usage["completion_tokens"], expected.tokens.len());
    assert_eq!(usage["total_tokens"], prompt.len() + expected.tokens.len());

    // The same request streamed: the same text in pieces, the same reason and usage.
    let mut streamed = body.clone();
    streamed["stream"] = json!(true);
    streamed["stream_options"] = json!({"include_usage": true});
    let (texts, reasons, stream_usage) = Events::open(&server, &streamed).collect(1);
    assert_eq!(texts[0], expected_text);
    assert_eq!(reasons[0], reason);
    assert_eq!(stream_usage.as_ref(), Some(usage));

    // A stop string cuts the answer just before it, with finish_reason "stop".
    let cut: String = expected_text.chars().skip(3).take(2).collect();
    if expected_text.chars().count() > 5 && !cut.trim().is_empty() {
        let mut stopped = body.clone();
        stopped["stop"] = json!(cut);
        let (_, answer) = post(&server, &stopped);
        let at = expected_text.find(&cut).unwrap();
        assert_eq!(
            answer["choices"][0]["message"]["content"],
            &expected_text[..at]
        );
        assert_eq!(answer["choices"][0]["finish_reason"], "stop");
    }
    server.shutdown().unwrap();
}

fn sampled(prompt: &str, seed: u64, max_tokens: usize) -> Value {
    json!({"messages": user(prompt), "temperature": 1.0, "seed": seed,
           "max_tokens": max_tokens, "ignore_eos": true})
}

fn text_of(answer: &Value, index: usize) -> String {
    answer["choices"][index]["message"]["content"]
        .as_str()
        .unwrap()
        .to_string()
}

#[test]
fn a_seeded_request_gives_the_same_answer_alone_and_batched_with_others() {
    let dir = tempfile::tempdir().unwrap();
    let folder = model_folder(dir.path(), 256, 32);
    let server = start(&folder, ServeConfig::default());

    let alone = post(&server, &sampled("the cat sat", 7, 40)).1;
    let alone_text = text_of(&alone, 0);
    assert_eq!(alone["usage"]["completion_tokens"], 40);
    let before = health(&server);

    // Others of other lengths run first; the seeded one joins their batch mid-way.
    let mut others = (0..5)
        .map(|i| {
            let mut body = sampled(&"on the mat ".repeat(i + 1), 100 + i as u64, 120);
            body["stream"] = json!(true);
            let mut events = Events::open(&server, &body);
            events.next_event().unwrap(); // the role chunk: it is in the batch
            events
        })
        .collect::<Vec<_>>();
    let batched = post(&server, &sampled("the cat sat", 7, 40)).1;
    assert_eq!(text_of(&batched, 0), alone_text);
    let others_texts = others
        .drain(..)
        .map(|events| events.collect(1).0.remove(0))
        .collect::<Vec<_>>();
    let after = health(&server);
    assert!(after["max_batch_seen"].as_u64().unwrap() >= 2, "{after}");
    assert!(
        after["batched_steps"].as_u64().unwrap() > before["batched_steps"].as_u64().unwrap(),
        "{after}"
    );
    // And each of those is what it gives alone.
    for (i, text) in others_texts.iter().enumerate() {
        let alone = post(
            &server,
            &sampled(&"on the mat ".repeat(i + 1), 100 + i as u64, 120),
        )
        .1;
        assert_eq!(&text_of(&alone, 0), text, "request {i}");
    }

    // n answers: answer i is the request with seed + i.
    let mut three = sampled("the cat sat", 7, 40);
    three["n"] = json!(3);
    let three = post(&server, &three).1;
    assert_eq!(text_of(&three, 0), alone_text);
    let second = post(&server, &sampled("the cat sat", 8, 40)).1;
    assert_eq!(text_of(&three, 1), text_of(&second, 0));
    assert_eq!(three["usage"]["completion_tokens"], 120);
    assert_ne!(text_of(&three, 0), text_of(&three, 1));
    server.shutdown().unwrap();
}

#[test]
fn a_kept_system_prompt_gives_the_answers_of_one_computed_again() {
    let dir = tempfile::tempdir().unwrap();
    let folder = model_folder(dir.path(), 256, 32);
    let keeping = start(&folder, ServeConfig::default());
    let forgetting = start(
        &folder,
        ServeConfig {
            engine: EngineConfig {
                preambles: 0,
                ..Default::default()
            },
            ..Default::default()
        },
    );
    let ask = |server: &Server, system: &str, prompt: &str, seed: u64| {
        let mut body = sampled(prompt, seed, 30);
        body["messages"] = json!([{"role": "system", "content": system},
                                  {"role": "user", "content": prompt}]);
        text_of(&post(server, &body).1, 0)
    };
    let requests = [
        ("Be brief.", "the cat sat", 3),
        ("Be brief.", "on the mat", 4),
        ("Be kind.", "the cat sat", 3),
        ("Be brief.", "the cat sat", 3),
        ("Be kind.", "2 + 3 =", 5),
    ];
    let kept = requests
        .iter()
        .map(|&(system, prompt, seed)| ask(&keeping, system, prompt, seed))
        .collect::<Vec<_>>();
    let computed = requests
        .iter()
        .map(|&(system, prompt, seed)| ask(&forgetting, system, prompt, seed))
        .collect::<Vec<_>>();
    assert_eq!(kept, computed);
    assert_eq!(kept[3], kept[0]);
    assert_ne!(kept[0], kept[2], "the system prompt is part of the prompt");
    // The second, fourth and fifth requests found their system turn kept.
    let template = folder.template().unwrap();
    let preamble = |system: &str| {
        template
            .render_prompt_with_preamble(&Conversation::new(vec![
                Message::system(system),
                Message::user("x"),
            ]))
            .unwrap()
            .1
    };
    let (brief, kind) = (preamble("Be brief."), preamble("Be kind."));
    assert!(brief > 0 && kind > 0);
    assert_eq!(
        health(&keeping)["cached_prompt_tokens"],
        2 * brief + kind,
        "{}",
        health(&keeping)
    );
    assert_eq!(health(&forgetting)["cached_prompt_tokens"], 0);
    keeping.shutdown().unwrap();
    forgetting.shutdown().unwrap();
}

fn assert_error(status: u16, body: &Value, expected: u16, param: Option<&str>, code: Option<&str>) {
    assert_eq!(status, expected, "{body}");
    let error = &body["error"];
    assert!(
        error["message"].as_str().is_some_and(|m| !m.is_empty()),
        "{body}"
    );
    assert!(error["type"].is_string(), "{body}");
    assert_eq!(error["param"].as_str(), param, "{body}");
    assert_eq!(error["code"].as_str(), code, "{body}");
}

#[test]
fn bad_requests_get_openais_error_object_with_the_right_status() {
    let dir = tempfile::tempdir().unwrap();
    let folder = model_folder(dir.path(), 64, 16);
    let server = start(
        &folder,
        ServeConfig {
            max_body_bytes: 4096,
            ..Default::default()
        },
    );
    let (status, body) = post_raw(&server, "{\"messages\": [", None);
    assert_error(status, &body, 400, None, None);
    let (status, body) = post(&server, &json!({"model": "model"}));
    assert_error(status, &body, 400, Some("messages"), None);
    let (status, body) = post(&server, &json!({"messages": []}));
    assert_error(status, &body, 400, Some("messages"), None);
    let (status, body) = post(
        &server,
        &json!({"messages": [{"role": "wizard", "content": "x"}]}),
    );
    assert_error(status, &body, 400, Some("messages[0].role"), None);
    let (status, body) = post(
        &server,
        &json!({"messages": user("x"), "temperature": "warm"}),
    );
    assert_error(status, &body, 400, Some("temperature"), None);
    let (status, body) = post(
        &server,
        &json!({"messages": user("x"), "max_tokens": "many"}),
    );
    assert_error(status, &body, 400, Some("max_tokens"), None);
    // Turns out of order are the template's refusal, named as the messages' fault.
    let (status, body) = post(
        &server,
        &json!({"messages": [{"role": "assistant", "content": "x"}]}),
    );
    assert_error(status, &body, 400, Some("messages"), None);
    // A prompt longer than the context of 64.
    let (status, body) = post(
        &server,
        &json!({"messages": user(&"the cat sat on the mat ".repeat(20))}),
    );
    assert_error(
        status,
        &body,
        400,
        Some("messages"),
        Some("context_length_exceeded"),
    );
    let (status, body) = post(&server, &json!({"model": "gpt-9", "messages": user("x")}));
    assert_error(status, &body, 404, Some("model"), Some("model_not_found"));
    let (status, body) = get(&server, "/v1/models/gpt-9");
    assert_error(status, &body, 404, Some("model"), Some("model_not_found"));
    let (status, body) = get(&server, "/v2/nothing");
    assert_error(status, &body, 404, None, Some("unknown_url"));
    let (status, body) = post(&server, &json!({"messages": user(&"x".repeat(5000))}));
    assert_error(status, &body, 413, None, Some("request_too_large"));
    // The server is fine after all that.
    let (status, _) = post(
        &server,
        &json!({"messages": user("the cat"), "max_tokens": 3}),
    );
    assert_eq!(status, 200);
    server.shutdown().unwrap();

    // With a key: none or a wrong one is 401; the right one passes.
    let keyed = start(
        &folder,
        ServeConfig {
            api_key: Some("sesame".into()),
            ..Default::default()
        },
    );
    let request = json!({"messages": user("the cat"), "max_tokens": 2}).to_string();
    let (status, body) = post_raw(&keyed, &request, None);
    assert_error(status, &body, 401, None, Some("invalid_api_key"));
    let (status, body) = post_raw(&keyed, &request, Some("sesame!"));
    assert_error(status, &body, 401, None, Some("invalid_api_key"));
    let (status, _) = post_raw(&keyed, &request, Some("sesame"));
    assert_eq!(status, 200);
    let (status, body) = get(&keyed, "/v1/models");
    assert_error(status, &body, 401, None, Some("invalid_api_key"));
    keyed.shutdown().unwrap();
}

/// Polls `/health` until `ready` says yes (at most 30 s).
fn wait_for(server: &Server, what: &str, ready: impl Fn(&Value) -> bool) -> Value {
    let start = Instant::now();
    loop {
        let health = health(server);
        if ready(&health) {
            return health;
        }
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "waited for {what}: {health}"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
}

#[test]
fn a_full_queue_is_429_and_a_client_that_leaves_mid_stream_frees_its_slot() {
    let dir = tempfile::tempdir().unwrap();
    // A context long enough that the first answer is still running while the test works.
    let folder = model_folder(dir.path(), 16384, 64);
    let server = start(
        &folder,
        ServeConfig {
            engine: EngineConfig {
                max_batch: 1,
                queue: 1,
                ..Default::default()
            },
            max_n: 1,
            ..Default::default()
        },
    );
    let mut long = sampled("the cat", 1, 16000);
    long["stream"] = json!(true);
    let mut running = Events::open(&server, &long);
    running.next_event().unwrap();
    running.next_event().unwrap(); // a token: it is decoding
    let address = server.address();
    let waiting = std::thread::spawn(move || {
        let response = agent()
            .post(&format!("http://{address}/v1/chat/completions"))
            .send_string(&sampled("the mat", 2, 5).to_string())
            .unwrap();
        serde_json::from_str::<Value>(&response.into_string().unwrap()).unwrap()
    });
    wait_for(&server, "the second request to wait", |h| h["waiting"] == 1);
    let (status, body) = post(&server, &sampled("a third", 3, 5));
    assert_error(status, &body, 429, None, Some("rate_limit_exceeded"));

    // The first client hangs up: its sequence leaves the batch, the waiting one runs.
    drop(running);
    let freed = wait_for(&server, "the slot to free", |h| h["cancelled"] == 1);
    let answer = waiting.join().unwrap();
    assert_eq!(answer["usage"]["completion_tokens"], 5);
    let after = health(&server);
    assert!(
        after["generated_tokens"].as_u64().unwrap() < 16000,
        "the cancelled answer ran on: {after}"
    );
    // The long answer was cancelled, not finished; only the waiting one finished.
    assert_eq!(freed["cancelled"], 1);
    assert_eq!(after["finished"], 1);
    assert_eq!(after["active"], 0);
    server.shutdown().unwrap();
}

#[test]
fn shutdown_finishes_the_answers_in_flight_and_refuses_new_ones() {
    let dir = tempfile::tempdir().unwrap();
    let folder = model_folder(dir.path(), 512, 32);
    let server = start(&folder, ServeConfig::default());
    let mut body = sampled("the cat", 4, 300);
    body["stream"] = json!(true);
    let mut events = Events::open(&server, &body);
    events.next_event().unwrap();
    let engine = server.engine().clone();
    let address = server.address();
    let stopping = std::thread::spawn(move || server.shutdown());
    // The stream in flight still ends properly.
    let (texts, reasons, _) = events.collect(1);
    assert_eq!(reasons[0], "length");
    assert!(!texts[0].is_empty());
    stopping.join().unwrap().unwrap();
    assert_eq!(engine.stats().finished, 1);
    // Nothing listens any more.
    assert!(std::net::TcpStream::connect(address).is_err());
}
