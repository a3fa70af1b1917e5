//! The HTTP side: axum routes for the OpenAI API, the health check and the chat page.

use std::convert::Infallible;
use std::sync::Arc;

use axum::body::{Body, Bytes};
use axum::extract::{Path, State};
use axum::http::{header, HeaderMap, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use ember_instruct::{ChatTemplate, Conversation};
use ember_transformer::FinishReason;
use http_body_util::{BodyExt as _, LengthLimitError, Limited};
use serde_json::{json, Value};
use tokio::sync::mpsc::UnboundedReceiver;

use crate::api::{finish_reason, parse_chat_request, ApiError, Usage};
use crate::engine::{EngineHandle, Event, Sequence, SubmitError};

/// The chat page, one self-contained file.
const PAGE: &str = include_str!("page.html");

/// What every handler shares.
pub(crate) struct AppState {
    pub engine: EngineHandle,
    pub template: ChatTemplate,
    pub model: String,
    pub created: u64,
    pub api_key: Option<String>,
    pub max_body_bytes: usize,
    pub default_max_tokens: usize,
    pub max_n: usize,
}

type Shared = Arc<AppState>;

/// The routes.
pub(crate) fn router(state: Shared) -> Router {
    Router::new()
        .route("/", get(page))
        .route("/health", get(health))
        .route("/v1/models", get(models))
        .route("/v1/models/{id}", get(model))
        .route("/v1/chat/completions", post(chat_completions))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .with_state(state)
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = StatusCode::from_u16(self.status).unwrap_or(StatusCode::BAD_REQUEST);
        json_response(status, &self.body())
    }
}

fn json_response(status: StatusCode, body: &Value) -> Response {
    Response::builder()
        .status(status)
        .header(header::CONTENT_TYPE, "application/json")
        .body(Body::from(body.to_string()))
        .unwrap_or_else(|_| StatusCode::INTERNAL_SERVER_ERROR.into_response())
}

async fn page() -> Response {
    Response::builder()
        .header(header::CONTENT_TYPE, "text/html; charset=utf-8")
        .header(header::CACHE_CONTROL, "no-cache")
        .body(Body::from(PAGE))
        .unwrap_or_else(|_| StatusCode::INTERNAL_SERVER_ERROR.into_response())
}

async fn health(State(state): State<Shared>) -> Response {
    let stats = state.engine.stats();
    let mut body = serde_json::to_value(stats).unwrap_or_else(|_| json!({}));
    if let Value::Object(fields) = &mut body {
        fields.insert("status".into(), json!("ok"));
        fields.insert("model".into(), json!(state.model));
        fields.insert("context".into(), json!(state.engine.context()));
    }
    json_response(StatusCode::OK, &body)
}

fn authorise(state: &AppState, headers: &HeaderMap) -> Result<(), ApiError> {
    let Some(key) = &state.api_key else {
        return Ok(());
    };
    let given = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    match given {
        Some(given) if constant_time_eq(given.trim().as_bytes(), key.as_bytes()) => Ok(()),
        Some(_) => Err(ApiError::new(
            401,
            "invalid_request_error",
            Some("invalid_api_key"),
            "Incorrect API key provided.",
        )),
        None => Err(ApiError::new(
            401,
            "invalid_request_error",
            Some("invalid_api_key"),
            "You didn't provide an API key: send it as `Authorization: Bearer KEY`.",
        )),
    }
}

/// Equality whose time does not depend on where the first difference is.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

fn model_object(state: &AppState) -> Value {
    json!({"id": state.model, "object": "model", "created": state.created, "owned_by": "ember"})
}

async fn models(State(state): State<Shared>, headers: HeaderMap) -> Response {
    if let Err(error) = authorise(&state, &headers) {
        return error.into_response();
    }
    json_response(
        StatusCode::OK,
        &json!({"object": "list", "data": [model_object(&state)]}),
    )
}

async fn model(
    State(state): State<Shared>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Response {
    if let Err(error) = authorise(&state, &headers) {
        return error.into_response();
    }
    if id != state.model {
        return unknown_model(&state, &id).into_response();
    }
    json_response(StatusCode::OK, &model_object(&state))
}

fn unknown_model(state: &AppState, id: &str) -> ApiError {
    let mut error = ApiError::new(
        404,
        "invalid_request_error",
        Some("model_not_found"),
        format!(
            "The model `{id}` does not exist: this server serves `{}`.",
            state.model
        ),
    );
    error.param = Some("model".into());
    error
}

async fn not_found(method: Method, uri: Uri) -> ApiError {
    ApiError::new(
        404,
        "invalid_request_error",
        Some("unknown_url"),
        format!("Unknown request URL: {method} {}.", uri.path()),
    )
}

async fn method_not_allowed(method: Method, uri: Uri) -> ApiError {
    ApiError::new(
        405,
        "invalid_request_error",
        Some("method_not_allowed"),
        format!("{method} is not allowed on {}.", uri.path()),
    )
}

/// The body, at most `limit` bytes.
async fn read_body(headers: &HeaderMap, body: Body, limit: usize) -> Result<Bytes, ApiError> {
    let too_large = || {
        ApiError::new(
            413,
            "invalid_request_error",
            Some("request_too_large"),
            format!("The request body is larger than this server's limit of {limit} bytes."),
        )
    };
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > limit as u64) {
        return Err(too_large());
    }
    match Limited::new(body, limit).collect().await {
        Ok(collected) => Ok(collected.to_bytes()),
        Err(error) if error.downcast_ref::<LengthLimitError>().is_some() => Err(too_large()),
        Err(error) => Err(ApiError::new(
            400,
            "invalid_request_error",
            None,
            format!("The request body could not be read: {error}"),
        )),
    }
}

/// A checked request, ready for the engine.
struct Prepared {
    sequences: Vec<Sequence>,
    prompt_tokens: usize,
    stream: bool,
    include_usage: bool,
}

fn prepare(state: &AppState, bytes: &[u8]) -> Result<Prepared, ApiError> {
    let body: Value = serde_json::from_slice(bytes).map_err(|error| {
        ApiError::new(
            400,
            "invalid_request_error",
            None,
            format!("We could not parse the JSON body of your request: {error}."),
        )
    })?;
    let request = parse_chat_request(&body, state.max_n)?;
    if let Some(model) = &request.model {
        if *model != state.model {
            return Err(unknown_model(state, model));
        }
    }
    let conversation = Conversation::new(request.messages);
    let (prompt, preamble) = state
        .template
        .render_prompt_with_preamble(&conversation)
        .map_err(|error| ApiError::invalid("messages", error.to_string()))?;
    let context = state.engine.context();
    if prompt.len() >= context {
        return Err(ApiError::invalid(
            "messages",
            format!(
                "This model's maximum context length is {context} tokens, and the messages are \
                 {} tokens with the chat template: no room is left for an answer.",
                prompt.len()
            ),
        )
        .with_code("context_length_exceeded"));
    }
    let room = context - prompt.len();
    let max_new_tokens = request
        .max_tokens
        .unwrap_or(state.default_max_tokens)
        .min(room);
    let seed = request.seed.unwrap_or_else(rand::random);
    let prompt_tokens = prompt.len();
    let sequences = (0..request.n)
        .map(|i| Sequence {
            prompt: prompt.clone(),
            prefix: preamble,
            max_new_tokens,
            sampling: request.sampling,
            seed: seed.wrapping_add(i as u64),
            stop: request.stop.clone(),
            ignore_eos: request.ignore_eos,
        })
        .collect();
    Ok(Prepared {
        sequences,
        prompt_tokens,
        stream: request.stream,
        include_usage: request.include_usage,
    })
}

fn submit_error(error: SubmitError) -> ApiError {
    match error {
        SubmitError::QueueFull { .. } => ApiError::new(
            429,
            "rate_limit_error",
            Some("rate_limit_exceeded"),
            format!("The server is busy: {error}."),
        ),
        SubmitError::ShuttingDown => ApiError::new(
            503,
            "server_error",
            Some("shutting_down"),
            "The server is shutting down.",
        ),
        SubmitError::Invalid(message) => ApiError::invalid("messages", message),
    }
}

async fn chat_completions(State(state): State<Shared>, headers: HeaderMap, body: Body) -> Response {
    if let Err(error) = authorise(&state, &headers) {
        return error.into_response();
    }
    let bytes = match read_body(&headers, body, state.max_body_bytes).await {
        Ok(bytes) => bytes,
        Err(error) => return error.into_response(),
    };
    let prepared = match prepare(&state, &bytes) {
        Ok(prepared) => prepared,
        Err(error) => return error.into_response(),
    };
    let n = prepared.sequences.len();
    let events = match state.engine.submit(prepared.sequences) {
        Ok(events) => events,
        Err(error) => return submit_error(error).into_response(),
    };
    let id = format!("chatcmpl-{:016x}", rand::random::<u64>());
    let created = unix_time();
    let reply = Reply {
        id,
        created,
        model: state.model.clone(),
        n,
        prompt_tokens: prepared.prompt_tokens,
    };
    if prepared.stream {
        stream_response(reply, events, prepared.include_usage)
    } else {
        whole_response(reply, events).await
    }
}

pub(crate) fn unix_time() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// What every part of one response repeats.
struct Reply {
    id: String,
    created: u64,
    model: String,
    n: usize,
    prompt_tokens: usize,
}

impl Reply {
    fn usage(&self, completion_tokens: usize) -> Usage {
        Usage {
            prompt_tokens: self.prompt_tokens,
            completion_tokens,
            total_tokens: self.prompt_tokens + completion_tokens,
        }
    }

    fn chunk(&self, choices: Value) -> Bytes {
        let chunk = json!({
            "id": self.id,
            "object": "chat.completion.chunk",
            "created": self.created,
            "model": self.model,
            "choices": choices,
        });
        Bytes::from(format!("data: {chunk}\n\n"))
    }
}

fn engine_gone() -> ApiError {
    ApiError::new(
        500,
        "server_error",
        None,
        "The generation engine stopped before the answer was finished.",
    )
}

async fn whole_response(reply: Reply, mut events: UnboundedReceiver<Event>) -> Response {
    let mut texts = vec![String::new(); reply.n];
    let mut reasons: Vec<Option<FinishReason>> = vec![None; reply.n];
    let mut completion_tokens = 0;
    let mut open = reply.n;
    while open > 0 {
        match events.recv().await {
            Some(Event::Text { index, text }) => texts[index].push_str(&text),
            Some(Event::Finished {
                index,
                reason,
                completion_tokens: tokens,
            }) => {
                reasons[index] = Some(reason);
                completion_tokens += tokens;
                open -= 1;
            }
            Some(Event::Aborted { message, .. }) => {
                return ApiError::new(503, "server_error", Some("aborted"), message).into_response()
            }
            None => return engine_gone().into_response(),
        }
    }
    let choices = texts
        .into_iter()
        .zip(reasons)
        .enumerate()
        .map(|(index, (content, reason))| {
            json!({
                "index": index,
                "message": {"role": "assistant", "content": content},
                "logprobs": null,
                "finish_reason": reason.map(finish_reason),
            })
        })
        .collect::<Vec<_>>();
    json_response(
        StatusCode::OK,
        &json!({
            "id": reply.id,
            "object": "chat.completion",
            "created": reply.created,
            "model": reply.model,
            "choices": choices,
            "usage": reply.usage(completion_tokens),
        }),
    )
}

/// Where a stream is.
struct Streaming {
    reply: Reply,
    events: UnboundedReceiver<Event>,
    include_usage: bool,
    open: usize,
    completion_tokens: usize,
    /// Chunks ready to send, in order.
    pending: std::collections::VecDeque<Bytes>,
    ended: bool,
}

impl Streaming {
    fn end(&mut self) {
        if self.include_usage {
            let chunk = json!({
                "id": self.reply.id,
                "object": "chat.completion.chunk",
                "created": self.reply.created,
                "model": self.reply.model,
                "choices": [],
                "usage": self.reply.usage(self.completion_tokens),
            });
            self.pending
                .push_back(Bytes::from(format!("data: {chunk}\n\n")));
        }
        self.pending
            .push_back(Bytes::from_static(b"data: [DONE]\n\n"));
        self.ended = true;
    }

    fn error(&mut self, error: ApiError) {
        self.pending
            .push_back(Bytes::from(format!("data: {}\n\n", error.body())));
        self.pending
            .push_back(Bytes::from_static(b"data: [DONE]\n\n"));
        self.ended = true;
    }

    /// The next piece of the body; `None` at its end. Dropping the stream (the client went
    /// away) drops `events`, which takes the sequences out of the batch.
    async fn next(&mut self) -> Option<Bytes> {
        loop {
            if let Some(bytes) = self.pending.pop_front() {
                return Some(bytes);
            }
            if self.ended {
                return None;
            }
            match self.events.recv().await {
                Some(Event::Text { index, text }) => {
                    let chunk = self.reply.chunk(json!([{
                        "index": index,
                        "delta": {"content": text},
                        "logprobs": null,
                        "finish_reason": null,
                    }]));
                    self.pending.push_back(chunk);
                }
                Some(Event::Finished {
                    index,
                    reason,
                    completion_tokens,
                }) => {
                    self.completion_tokens += completion_tokens;
                    let chunk = self.reply.chunk(json!([{
                        "index": index,
                        "delta": {},
                        "logprobs": null,
                        "finish_reason": finish_reason(reason),
                    }]));
                    self.pending.push_back(chunk);
                    self.open -= 1;
                    if self.open == 0 {
                        self.end();
                    }
                }
                Some(Event::Aborted { message, .. }) => {
                    self.error(ApiError::new(503, "server_error", Some("aborted"), message));
                }
                None => self.error(engine_gone()),
            }
        }
    }
}

fn stream_response(
    reply: Reply,
    events: UnboundedReceiver<Event>,
    include_usage: bool,
) -> Response {
    let mut pending = std::collections::VecDeque::new();
    // Every answer opens with the assistant's role, as OpenAI's streams do.
    for index in 0..reply.n {
        pending.push_back(reply.chunk(json!([{
            "index": index,
            "delta": {"role": "assistant", "content": ""},
            "logprobs": null,
            "finish_reason": null,
        }])));
    }
    let state = Streaming {
        open: reply.n,
        reply,
        events,
        include_usage,
        completion_tokens: 0,
        pending,
        ended: false,
    };
    let body = futures_util::stream::unfold(state, |mut state| async move {
        let bytes = state.next().await?;
        Some((Ok::<_, Infallible>(bytes), state))
    });
    Response::builder()
        .header(header::CONTENT_TYPE, "text/event-stream")
        .header(header::CACHE_CONTROL, "no-cache")
        .body(Body::from_stream(body))
        .unwrap_or_else(|_| StatusCode::INTERNAL_SERVER_ERROR.into_response())
}
