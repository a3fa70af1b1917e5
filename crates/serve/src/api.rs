//! OpenAI's chat-completions API as Ember speaks it: the request checked field by field (a
//! wrong value names its parameter), the responses and stream chunks, the error object.

use ember_instruct::{Message, Role};
use ember_transformer::{FinishReason, Sampling};
use serde::Serialize;
use serde_json::{json, Map, Value};

/// The most stop strings a request may give (OpenAI's limit).
pub const MAX_STOPS: usize = 4;

/// An API error: HTTP status and OpenAI's error object.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiError {
    /// HTTP status code.
    pub status: u16,
    /// A sentence for the client.
    pub message: String,
    /// OpenAI's error type (`invalid_request_error`, …).
    pub kind: &'static str,
    /// The request parameter at fault, if one is.
    pub param: Option<String>,
    /// A machine-readable code, if there is one.
    pub code: Option<&'static str>,
}

impl ApiError {
    /// 400 for `param`.
    pub fn invalid(param: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            status: 400,
            message: message.into(),
            kind: "invalid_request_error",
            param: Some(param.into()),
            code: None,
        }
    }

    /// Any status without a parameter.
    pub fn new(
        status: u16,
        kind: &'static str,
        code: Option<&'static str>,
        message: impl Into<String>,
    ) -> Self {
        Self {
            status,
            message: message.into(),
            kind,
            param: None,
            code,
        }
    }

    /// The same error with a code.
    pub fn with_code(mut self, code: &'static str) -> Self {
        self.code = Some(code);
        self
    }

    /// `{"error": {"message", "type", "param", "code"}}`.
    pub fn body(&self) -> Value {
        json!({
            "error": {
                "message": self.message,
                "type": self.kind,
                "param": self.param,
                "code": self.code,
            }
        })
    }
}

/// A chat-completions request, checked.
#[derive(Debug, Clone, PartialEq)]
pub struct ChatRequest {
    /// The model asked for, if the request names one.
    pub model: Option<String>,
    /// The conversation.
    pub messages: Vec<Message>,
    /// How tokens are drawn.
    pub sampling: Sampling,
    /// New tokens at most per answer, if the request sets it.
    pub max_tokens: Option<usize>,
    /// The seed of the first answer (answer `i` uses `seed + i`), if given.
    pub seed: Option<u64>,
    /// Stop strings.
    pub stop: Vec<String>,
    /// Answers to generate.
    pub n: usize,
    /// Server-sent events instead of one response.
    pub stream: bool,
    /// With `stream`: a last chunk with the token counts.
    pub include_usage: bool,
    /// Generate past the model's stop tokens, to the token limit (vLLM's extension, for
    /// benchmarks).
    pub ignore_eos: bool,
}

fn wrong_type(param: &str, expected: &str, value: &Value) -> ApiError {
    ApiError::invalid(
        param,
        format!(
            "`{param}` must be {expected}, not {}",
            ember_instruct::formats::kind(value)
        ),
    )
}

/// A present, non-null field.
fn field<'a>(body: &'a Map<String, Value>, name: &str) -> Option<&'a Value> {
    body.get(name).filter(|v| !v.is_null())
}

fn number(body: &Map<String, Value>, name: &str) -> Result<Option<f64>, ApiError> {
    match field(body, name) {
        None => Ok(None),
        Some(v) => v
            .as_f64()
            .map(Some)
            .ok_or_else(|| wrong_type(name, "a number", v)),
    }
}

fn integer(body: &Map<String, Value>, name: &str) -> Result<Option<i64>, ApiError> {
    match field(body, name) {
        None => Ok(None),
        Some(v) => v
            .as_i64()
            .map(Some)
            .ok_or_else(|| wrong_type(name, "an integer", v)),
    }
}

fn boolean(body: &Map<String, Value>, name: &str) -> Result<bool, ApiError> {
    match field(body, name) {
        None => Ok(false),
        Some(v) => v.as_bool().ok_or_else(|| wrong_type(name, "a boolean", v)),
    }
}

/// Text of a message's `content`: a string, or an array of `{"type": "text", "text": …}`
/// parts.
fn content(value: Option<&Value>, param: &str) -> Result<String, ApiError> {
    match value {
        Some(Value::String(text)) => Ok(text.clone()),
        Some(Value::Array(parts)) => {
            let mut text = String::new();
            for (i, part) in parts.iter().enumerate() {
                let param = format!("{param}[{i}]");
                let kind = part.get("type").and_then(Value::as_str);
                match (kind, part.get("text")) {
                    (Some("text"), Some(Value::String(t))) => text.push_str(t),
                    (Some("text"), other) => {
                        return Err(wrong_type(
                            &format!("{param}.text"),
                            "a string",
                            other.unwrap_or(&Value::Null),
                        ))
                    }
                    (other, _) => {
                        return Err(ApiError::invalid(
                            format!("{param}.type"),
                            format!(
                                "content parts of type {} are not supported; only \"text\"",
                                other.map_or("(none)".into(), |k| format!("{k:?}"))
                            ),
                        ))
                    }
                }
            }
            Ok(text)
        }
        None | Some(Value::Null) => Err(ApiError::invalid(
            param,
            format!("`{param}` is missing: every message needs its text"),
        )),
        Some(other) => Err(wrong_type(
            param,
            "a string or an array of text parts",
            other,
        )),
    }
}

fn messages(body: &Map<String, Value>) -> Result<Vec<Message>, ApiError> {
    let value = field(body, "messages").ok_or_else(|| {
        ApiError::invalid(
            "messages",
            "`messages` is required: the conversation to answer",
        )
    })?;
    let list = value
        .as_array()
        .ok_or_else(|| wrong_type("messages", "an array of messages", value))?;
    if list.is_empty() {
        return Err(ApiError::invalid(
            "messages",
            "`messages` is empty: it needs at least one user message",
        ));
    }
    list.iter()
        .enumerate()
        .map(|(i, message)| {
            let param = format!("messages[{i}]");
            let object = message
                .as_object()
                .ok_or_else(|| wrong_type(&param, "an object", message))?;
            let role_param = format!("{param}.role");
            let role = match object.get("role") {
                Some(Value::String(role)) => match role.as_str() {
                    "system" | "developer" => Role::System,
                    "user" => Role::User,
                    "assistant" => Role::Assistant,
                    other => {
                        return Err(ApiError::invalid(
                            role_param,
                            format!(
                                "unknown role {other:?}: one of \"system\", \"developer\", \
                                 \"user\", \"assistant\""
                            ),
                        ))
                    }
                },
                None => {
                    return Err(ApiError::invalid(
                        role_param,
                        "every message needs a `role`",
                    ))
                }
                Some(other) => return Err(wrong_type(&role_param, "a string", other)),
            };
            let content = content(object.get("content"), &format!("{param}.content"))?;
            Ok(Message { role, content })
        })
        .collect()
}

fn stop(body: &Map<String, Value>) -> Result<Vec<String>, ApiError> {
    let stops = match field(body, "stop") {
        None => Vec::new(),
        Some(Value::String(s)) => vec![s.clone()],
        Some(Value::Array(items)) => items
            .iter()
            .enumerate()
            .map(|(i, item)| {
                item.as_str()
                    .map(str::to_string)
                    .ok_or_else(|| wrong_type(&format!("stop[{i}]"), "a string", item))
            })
            .collect::<Result<_, _>>()?,
        Some(other) => return Err(wrong_type("stop", "a string or an array of strings", other)),
    };
    if stops.len() > MAX_STOPS {
        return Err(ApiError::invalid(
            "stop",
            format!("at most {MAX_STOPS} stop strings, got {}", stops.len()),
        ));
    }
    if stops.iter().any(String::is_empty) {
        return Err(ApiError::invalid("stop", "a stop string is empty"));
    }
    Ok(stops)
}

fn sampling(body: &Map<String, Value>) -> Result<Sampling, ApiError> {
    let temperature = number(body, "temperature")?.unwrap_or(1.0);
    if !(0.0..=2.0).contains(&temperature) {
        return Err(ApiError::invalid(
            "temperature",
            format!("`temperature` must be between 0 and 2, got {temperature}"),
        ));
    }
    let top_p = number(body, "top_p")?.unwrap_or(1.0);
    if !(top_p > 0.0 && top_p <= 1.0) {
        return Err(ApiError::invalid(
            "top_p",
            format!("`top_p` must be above 0 and at most 1, got {top_p}"),
        ));
    }
    let top_k = integer(body, "top_k")?;
    if let Some(k) = top_k {
        if k < 1 {
            return Err(ApiError::invalid(
                "top_k",
                format!("`top_k` must be at least 1, got {k}"),
            ));
        }
        if top_p < 1.0 {
            return Err(ApiError::invalid(
                "top_k",
                "`top_k` and `top_p` cannot be combined; give one of them",
            ));
        }
    }
    let temperature = temperature as f32;
    Ok(match (temperature == 0.0, top_k) {
        (true, _) => Sampling::Greedy,
        (false, Some(k)) => Sampling::TopK {
            k: k as usize,
            temperature,
        },
        (false, None) if top_p < 1.0 => Sampling::TopP {
            p: top_p as f32,
            temperature,
        },
        (false, None) => Sampling::Temperature { temperature },
    })
}

/// Parameters OpenAI has that Ember does not implement: refused when they ask for anything
/// but their default, rather than silently ignored.
fn unsupported(body: &Map<String, Value>) -> Result<(), ApiError> {
    for name in [
        "tools",
        "functions",
        "tool_choice",
        "function_call",
        "audio",
        "modalities",
        "prediction",
    ] {
        if field(body, name)
            .is_some_and(|v| !(v.as_array().is_some_and(Vec::is_empty) || v == "none"))
        {
            return Err(ApiError::invalid(
                name,
                format!("`{name}` is not supported by this server"),
            ));
        }
    }
    for name in ["logprobs"] {
        if boolean(body, name)? {
            return Err(ApiError::invalid(
                name,
                format!("`{name}` is not supported by this server"),
            ));
        }
    }
    for name in ["frequency_penalty", "presence_penalty"] {
        if number(body, name)?.is_some_and(|v| v != 0.0) {
            return Err(ApiError::invalid(
                name,
                format!("`{name}` is not supported by this server; leave it at 0"),
            ));
        }
    }
    if field(body, "logit_bias").is_some_and(|v| v.as_object().is_none_or(|m| !m.is_empty())) {
        return Err(ApiError::invalid(
            "logit_bias",
            "`logit_bias` is not supported by this server",
        ));
    }
    if let Some(format) = field(body, "response_format") {
        if format.get("type").and_then(Value::as_str) != Some("text") {
            return Err(ApiError::invalid(
                "response_format",
                "only `{\"type\": \"text\"}` responses are supported by this server",
            ));
        }
    }
    Ok(())
}

/// Checks a request body (JSON already parsed); `max_n` bounds `n`.
///
/// # Errors
/// The first field that is missing, of the wrong type, out of range or not supported.
pub fn parse_chat_request(body: &Value, max_n: usize) -> Result<ChatRequest, ApiError> {
    let body = body.as_object().ok_or_else(|| {
        ApiError::new(
            400,
            "invalid_request_error",
            None,
            format!(
                "the request body must be a JSON object, not {}",
                ember_instruct::formats::kind(body)
            ),
        )
    })?;
    let model = match field(body, "model") {
        None => None,
        Some(Value::String(model)) => Some(model.clone()),
        Some(other) => return Err(wrong_type("model", "a string", other)),
    };
    let messages = messages(body)?;
    let mut max_tokens = None;
    for name in ["max_tokens", "max_completion_tokens"] {
        if let Some(n) = integer(body, name)? {
            if n < 1 {
                return Err(ApiError::invalid(
                    name,
                    format!("`{name}` must be at least 1, got {n}"),
                ));
            }
            max_tokens = Some(n as usize);
        }
    }
    let n = integer(body, "n")?.unwrap_or(1);
    if n < 1 || n as usize > max_n {
        return Err(ApiError::invalid(
            "n",
            format!("`n` must be between 1 and {max_n}, got {n}"),
        ));
    }
    // OpenAI's seeds are 64-bit integers; any of them, signed or not, picks the draws.
    let seed = match field(body, "seed") {
        None => None,
        Some(v) => Some(
            v.as_u64()
                .or_else(|| v.as_i64().map(|s| s as u64))
                .ok_or_else(|| wrong_type("seed", "an integer", v))?,
        ),
    };
    let stream = boolean(body, "stream")?;
    let include_usage = match field(body, "stream_options") {
        None => false,
        Some(Value::Object(options)) => {
            if !stream {
                return Err(ApiError::invalid(
                    "stream_options",
                    "`stream_options` is only allowed with `stream: true`",
                ));
            }
            boolean(options, "include_usage").map_err(|mut e| {
                e.param = Some("stream_options.include_usage".into());
                e
            })?
        }
        Some(other) => return Err(wrong_type("stream_options", "an object", other)),
    };
    unsupported(body)?;
    Ok(ChatRequest {
        model,
        messages,
        sampling: sampling(body)?,
        max_tokens,
        seed,
        stop: stop(body)?,
        n: n as usize,
        stream,
        include_usage,
        ignore_eos: boolean(body, "ignore_eos")?,
    })
}

/// OpenAI's name for a finish reason.
pub fn finish_reason(reason: FinishReason) -> &'static str {
    match reason {
        FinishReason::Stop => "stop",
        FinishReason::Length => "length",
    }
}

/// Token counts of a response.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Usage {
    /// Tokens of the rendered prompt.
    pub prompt_tokens: usize,
    /// Tokens generated over every answer.
    pub completion_tokens: usize,
    /// Both.
    pub total_tokens: usize,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(body: Value) -> Result<ChatRequest, ApiError> {
        parse_chat_request(&body, 8)
    }

    fn param_of(body: Value) -> String {
        parse(body).unwrap_err().param.unwrap_or_default()
    }

    #[test]
    fn a_full_request_parses_into_its_settings() {
        let request = parse(json!({
            "model": "m",
            "messages": [
                {"role": "system", "content": "be brief"},
                {"role": "user", "content": [{"type": "text", "text": "hi "}, {"type": "text", "text": "there"}]}
            ],
            "temperature": 0.5, "top_p": 0.9, "max_completion_tokens": 7, "seed": 3,
            "stop": ["\n", "END"], "n": 2, "stream": true, "stream_options": {"include_usage": true},
            "user": "ignored", "frequency_penalty": 0
        }))
        .unwrap();
        assert_eq!(request.model.as_deref(), Some("m"));
        assert_eq!(request.messages[1], Message::user("hi there"));
        assert_eq!(
            request.sampling,
            Sampling::TopP {
                p: 0.9,
                temperature: 0.5
            }
        );
        assert_eq!(
            (request.max_tokens, request.seed, request.n),
            (Some(7), Some(3), 2)
        );
        assert_eq!(request.stop, ["\n", "END"]);
        assert!(request.stream && request.include_usage);
        let greedy =
            parse(json!({"messages": [{"role": "user", "content": "x"}], "temperature": 0}))
                .unwrap();
        assert_eq!(greedy.sampling, Sampling::Greedy);
        assert_eq!(greedy.n, 1);
    }

    #[test]
    fn each_bad_field_is_named() {
        let user = json!([{"role": "user", "content": "x"}]);
        assert_eq!(param_of(json!({})), "messages");
        assert_eq!(param_of(json!({"messages": []})), "messages");
        assert_eq!(param_of(json!({"messages": "hi"})), "messages");
        assert_eq!(
            param_of(json!({"messages": [{"role": "robot", "content": "x"}]})),
            "messages[0].role"
        );
        assert_eq!(
            param_of(json!({"messages": [{"role": "user"}]})),
            "messages[0].content"
        );
        assert_eq!(
            param_of(json!({"messages": [{"role": "user", "content": 5}]})),
            "messages[0].content"
        );
        assert_eq!(
            param_of(json!({"messages": user, "temperature": "hot"})),
            "temperature"
        );
        assert_eq!(
            param_of(json!({"messages": user, "temperature": 3})),
            "temperature"
        );
        assert_eq!(param_of(json!({"messages": user, "top_p": 0})), "top_p");
        assert_eq!(
            param_of(json!({"messages": user, "max_tokens": 0})),
            "max_tokens"
        );
        assert_eq!(
            param_of(json!({"messages": user, "max_tokens": 1.5})),
            "max_tokens"
        );
        assert_eq!(param_of(json!({"messages": user, "n": 9})), "n");
        assert_eq!(param_of(json!({"messages": user, "stop": [1]})), "stop[0]");
        assert_eq!(
            param_of(json!({"messages": user, "stop": ["a", "b", "c", "d", "e"]})),
            "stop"
        );
        assert_eq!(
            param_of(json!({"messages": user, "stream": "yes"})),
            "stream"
        );
        assert_eq!(
            param_of(json!({"messages": user, "stream_options": {"include_usage": true}})),
            "stream_options"
        );
        assert_eq!(param_of(json!({"messages": user, "model": 4})), "model");
        assert_eq!(param_of(json!({"messages": user, "seed": 1.5})), "seed");
        let big = parse(json!({"messages": user, "seed": u64::MAX})).unwrap();
        assert_eq!(big.seed, Some(u64::MAX));
        assert_eq!(
            param_of(json!({"messages": user, "tools": [{"type": "function"}]})),
            "tools"
        );
        assert_eq!(
            param_of(json!({"messages": user, "logprobs": true})),
            "logprobs"
        );
        assert_eq!(
            param_of(json!({"messages": user, "presence_penalty": 0.5})),
            "presence_penalty"
        );
        assert_eq!(
            param_of(json!({"messages": user, "response_format": {"type": "json_object"}})),
            "response_format"
        );
        let not_object = parse(json!([1])).unwrap_err();
        assert_eq!((not_object.status, not_object.param), (400, None));
    }

    #[test]
    fn the_error_object_has_openais_four_fields() {
        let body = ApiError::invalid("n", "bad").with_code("x").body();
        assert_eq!(
            body,
            json!({"error": {"message": "bad", "type": "invalid_request_error", "param": "n", "code": "x"}})
        );
    }
}
