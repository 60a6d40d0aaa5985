//! OpenAI-compatible embeddings over HTTP (`POST {endpoint}/v1/embeddings`).

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use reqwest::StatusCode;
use serde::{Deserialize, Serialize};

use super::{EmbedError, Embedder, l2_normalize};

/// Inputs sent per HTTP request; larger calls are split (OpenAI accepts up to 2048).
const MAX_INPUTS_PER_REQUEST: usize = 128;
/// First retry delay; doubles per attempt.
const BACKOFF_BASE: Duration = Duration::from_millis(200);
/// Longest delay between two attempts (also caps a server's `Retry-After`).
const BACKOFF_MAX: Duration = Duration::from_secs(10);

/// Configuration of [`OpenAiEmbedder`].
#[derive(Clone)]
pub struct OpenAiOptions {
    /// Base URL, e.g. `https://api.openai.com` or `http://ollama:11434`; requests go to
    /// `{endpoint}/v1/embeddings` (a trailing `/` or `/v1` on the base is accepted too).
    pub endpoint: String,
    /// Model name sent in the request, e.g. `text-embedding-3-small`.
    pub model: String,
    /// Sent as `Authorization: Bearer <key>`; never logged or printed (`Debug` redacts it).
    pub api_key: Option<String>,
    /// Expected vector length; checked on every response. Sent as the request's `dimensions`
    /// field (models that support shortening, like text-embedding-3-*, then return vectors of
    /// that length); if the server rejects that field (HTTP 400/422 mentioning "dimension", as
    /// OpenAI does for text-embedding-ada-002), the request is repeated without it and the field
    /// is not sent again.
    pub dimensions: usize,
    /// Timeout of one HTTP attempt (connect + response).
    pub timeout: Duration,
    /// Retries after the first attempt, on 5xx, 429, timeouts and connection errors, with
    /// exponential backoff (200 ms, 400 ms, … ≤ 10 s, plus jitter; `Retry-After` honoured).
    pub max_retries: u32,
}

impl std::fmt::Debug for OpenAiOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OpenAiOptions")
            .field("endpoint", &self.endpoint)
            .field("model", &self.model)
            .field("api_key", &self.api_key.as_ref().map(|_| "<redacted>"))
            .field("dimensions", &self.dimensions)
            .field("timeout", &self.timeout)
            .field("max_retries", &self.max_retries)
            .finish()
    }
}

/// Embeddings from an OpenAI-compatible HTTP service (OpenAI, Azure-compatible gateways, vLLM,
/// Ollama, LiteLLM, …). Vectors are L2-normalised on receipt, whatever the server returns.
pub struct OpenAiEmbedder {
    client: reqwest::Client,
    url: String,
    opts: OpenAiOptions,
    model_id: String,
    /// Cleared once the server has rejected the `dimensions` field.
    send_dimensions: AtomicBool,
    /// [`MAX_IN_FLIGHT`] permits: one per HTTP request in progress.
    in_flight: tokio::sync::Semaphore,
}

/// HTTP requests one embedder has in progress at once (each holds a connection until the service answers or the
/// timeout passes); more callers wait for a permit, within their own time budget (a write's budget then commits
/// the row alone, `embedding: Pending`). Without it a service that accepts and never answers held one connection
/// per reconcile in flight: 42 at once for 40 audits applied together
/// (`embeddings::a_provider_that_never_answers_costs_timeouts_not_a_pile_up`).
pub const MAX_IN_FLIGHT: usize = 8;

impl std::fmt::Debug for OpenAiEmbedder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OpenAiEmbedder")
            .field("url", &self.url)
            .field("opts", &self.opts)
            .finish()
    }
}

#[derive(Serialize)]
struct Request<'a> {
    model: &'a str,
    input: &'a [String],
    #[serde(skip_serializing_if = "Option::is_none")]
    dimensions: Option<usize>,
    encoding_format: &'static str,
}

#[derive(Deserialize)]
struct Response {
    data: Vec<Datum>,
}

#[derive(Deserialize)]
struct Datum {
    embedding: Vec<f32>,
    #[serde(default)]
    index: Option<usize>,
}

/// Why one attempt failed.
enum Attempt {
    Retry(EmbedError, Option<Duration>),
    Fatal(EmbedError),
    /// The server refused the `dimensions` field: repeat without it.
    DimensionsUnsupported(EmbedError),
}

impl OpenAiEmbedder {
    /// Validates the options and builds the HTTP client (no request is made).
    pub fn new(opts: OpenAiOptions) -> Result<Self, EmbedError> {
        if opts.dimensions == 0 {
            return Err(EmbedError::Config("dimensions must be at least 1".into()));
        }
        if opts.model.trim().is_empty() {
            return Err(EmbedError::Config("model must not be empty".into()));
        }
        if opts.timeout.is_zero() {
            return Err(EmbedError::Config("timeout must be positive".into()));
        }
        let base = opts.endpoint.trim().trim_end_matches('/');
        let base = base.strip_suffix("/v1").unwrap_or(base);
        let url = format!("{base}/v1/embeddings");
        let parsed = reqwest::Url::parse(&url).map_err(|e| {
            EmbedError::Config(format!("invalid endpoint {:?}: {e}", opts.endpoint))
        })?;
        if !matches!(parsed.scheme(), "http" | "https") {
            return Err(EmbedError::Config(format!(
                "endpoint {:?} must be http(s)",
                opts.endpoint
            )));
        }
        if let Some(key) = &opts.api_key
            && reqwest::header::HeaderValue::from_str(&format!("Bearer {key}")).is_err()
        {
            return Err(EmbedError::Config(
                "api key contains characters not allowed in a header".into(),
            ));
        }
        let client = reqwest::Client::builder()
            .connect_timeout(opts.timeout)
            .build()
            .map_err(|e| EmbedError::Config(format!("cannot build HTTP client: {e}")))?;
        let model_id = format!("openai:{}:{}", opts.model, opts.dimensions);
        Ok(Self {
            client,
            url,
            opts,
            model_id,
            send_dimensions: AtomicBool::new(true),
            in_flight: tokio::sync::Semaphore::new(MAX_IN_FLIGHT),
        })
    }

    async fn embed_chunk(&self, texts: &[String]) -> Result<Vec<Vec<f32>>, EmbedError> {
        let mut attempt: u32 = 0;
        loop {
            let body = Request {
                model: &self.opts.model,
                input: texts,
                dimensions: self
                    .send_dimensions
                    .load(Ordering::Relaxed)
                    .then_some(self.opts.dimensions),
                encoding_format: "float",
            };
            let permit = self
                .in_flight
                .acquire()
                .await
                .map_err(|_| EmbedError::Http("the embedder is shutting down".into()))?;
            let result = self.attempt(&body, texts.len()).await;
            // Not held through the backoff below: a waiting caller may use the connection meanwhile.
            drop(permit);
            let err = match result {
                Ok(v) => return Ok(v),
                Err(Attempt::Fatal(e)) => return Err(e),
                Err(Attempt::DimensionsUnsupported(e)) => {
                    if body.dimensions.is_none() {
                        return Err(e);
                    }
                    tracing::info!(
                        url = %self.url,
                        model = %self.opts.model,
                        "embedding service rejected the `dimensions` field; not sending it any more"
                    );
                    self.send_dimensions.store(false, Ordering::Relaxed);
                    continue;
                }
                Err(Attempt::Retry(e, retry_after)) => (e, retry_after),
            };
            if attempt >= self.opts.max_retries {
                return Err(err.0);
            }
            let delay = backoff(attempt, err.1);
            tracing::warn!(
                url = %self.url,
                attempt = attempt + 1,
                delay_ms = delay.as_millis() as u64,
                error = %err.0,
                "embedding request failed, retrying"
            );
            tokio::time::sleep(delay).await;
            attempt += 1;
        }
    }

    async fn attempt(&self, body: &Request<'_>, n: usize) -> Result<Vec<Vec<f32>>, Attempt> {
        let mut req = self
            .client
            .post(&self.url)
            .timeout(self.opts.timeout)
            .json(body);
        if let Some(key) = &self.opts.api_key {
            let mut value = reqwest::header::HeaderValue::from_str(&format!("Bearer {key}"))
                .map_err(|_| Attempt::Fatal(EmbedError::Config("invalid api key".into())))?;
            value.set_sensitive(true);
            req = req.header(reqwest::header::AUTHORIZATION, value);
        }
        let resp = req.send().await.map_err(classify)?;
        let status = resp.status();
        if !status.is_success() {
            let retry_after = resp
                .headers()
                .get(reqwest::header::RETRY_AFTER)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.trim().parse::<u64>().ok())
                .map(Duration::from_secs);
            let text = resp.text().await.unwrap_or_default();
            let snippet: String = text.chars().take(300).collect();
            let err = EmbedError::Http(format!("{} returned {status}: {snippet}", self.url));
            return Err(
                if status == StatusCode::TOO_MANY_REQUESTS || status.is_server_error() {
                    Attempt::Retry(err, retry_after)
                } else if body.dimensions.is_some()
                    && matches!(
                        status,
                        StatusCode::BAD_REQUEST | StatusCode::UNPROCESSABLE_ENTITY
                    )
                    && text.to_ascii_lowercase().contains("dimension")
                {
                    Attempt::DimensionsUnsupported(err)
                } else {
                    Attempt::Fatal(err)
                },
            );
        }
        let parsed: Response = resp.json().await.map_err(|e| match classify(e) {
            Attempt::Retry(EmbedError::Timeout, r) => Attempt::Retry(EmbedError::Timeout, r),
            Attempt::Retry(e, _) | Attempt::Fatal(e) | Attempt::DimensionsUnsupported(e) => {
                Attempt::Fatal(EmbedError::Http(format!(
                    "invalid response from {}: {e}",
                    self.url
                )))
            }
        })?;
        self.to_vectors(parsed, n).map_err(Attempt::Fatal)
    }

    fn to_vectors(&self, resp: Response, n: usize) -> Result<Vec<Vec<f32>>, EmbedError> {
        if resp.data.len() != n {
            return Err(EmbedError::Http(format!(
                "{} returned {} embeddings for {n} inputs",
                self.url,
                resp.data.len()
            )));
        }
        let mut out: Vec<Option<Vec<f32>>> = vec![None; n];
        for (pos, d) in resp.data.into_iter().enumerate() {
            let i = d.index.unwrap_or(pos);
            if i >= n || out[i].is_some() {
                return Err(EmbedError::Http(format!(
                    "{} returned a bad embedding index {i}",
                    self.url
                )));
            }
            if d.embedding.len() != self.opts.dimensions {
                return Err(EmbedError::Http(format!(
                    "{} returned {} dimensions, configured {} (model {})",
                    self.url,
                    d.embedding.len(),
                    self.opts.dimensions,
                    self.opts.model
                )));
            }
            if d.embedding.iter().any(|x| !x.is_finite()) {
                return Err(EmbedError::Http(format!(
                    "{} returned a non-finite embedding",
                    self.url
                )));
            }
            let mut v = d.embedding;
            l2_normalize(&mut v);
            out[i] = Some(v);
        }
        out.into_iter()
            .map(|v| {
                v.ok_or_else(|| {
                    EmbedError::Http(format!("{} left an input without an embedding", self.url))
                })
            })
            .collect()
    }
}

fn classify(e: reqwest::Error) -> Attempt {
    if e.is_timeout() {
        Attempt::Retry(EmbedError::Timeout, None)
    } else if e.is_connect() || e.is_request() || e.is_body() {
        Attempt::Retry(EmbedError::Http(e.to_string()), None)
    } else {
        Attempt::Fatal(EmbedError::Http(e.to_string()))
    }
}

/// `BACKOFF_BASE · 2^attempt`, at most `BACKOFF_MAX`, plus up to 25 % jitter; a server's
/// `Retry-After` (capped) wins when longer.
fn backoff(attempt: u32, retry_after: Option<Duration>) -> Duration {
    let exp = BACKOFF_BASE
        .saturating_mul(1u32 << attempt.min(16))
        .min(BACKOFF_MAX);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    let jitter = exp.mul_f64(f64::from(nanos % 1000) / 4000.0);
    let d = exp + jitter;
    match retry_after {
        Some(ra) => d.max(ra.min(BACKOFF_MAX)),
        None => d,
    }
}

#[async_trait::async_trait]
impl Embedder for OpenAiEmbedder {
    fn model_id(&self) -> &str {
        &self.model_id
    }

    fn dimensions(&self) -> usize {
        self.opts.dimensions
    }

    fn semantic(&self) -> bool {
        true
    }

    async fn embed(&self, texts: &[String]) -> Result<Vec<Vec<f32>>, EmbedError> {
        let mut out = Vec::with_capacity(texts.len());
        for chunk in texts.chunks(MAX_INPUTS_PER_REQUEST) {
            out.extend(self.embed_chunk(chunk).await?);
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::embed::test_util::{norm, strings};
    use axum::extract::State;
    use axum::http::{HeaderMap, StatusCode as AxumStatus};
    use axum::response::{IntoResponse, Response as AxumResponse};
    use axum::routing::post;
    use axum::{Json, Router};
    use std::sync::Arc;
    use std::sync::Mutex;
    use std::sync::atomic::{AtomicUsize, Ordering};

    #[derive(Clone, Copy)]
    enum Mode {
        Ok,
        /// First `n` requests fail with 500.
        FailFirst(usize),
        /// Every request takes this long.
        Slow(Duration),
        /// Always 400.
        BadRequest,
        /// 400 when "dimensions" is sent (like ada-002); vectors of 8 otherwise.
        RejectDimensions,
    }

    struct ServerState {
        mode: Mode,
        calls: AtomicUsize,
        auth: Mutex<Vec<Option<String>>>,
        bodies: Mutex<Vec<serde_json::Value>>,
    }

    /// A real HTTP server on 127.0.0.1 implementing POST /v1/embeddings. Vectors are
    /// deterministic: element k of text t is (len(t) + k) % 7 + 1 (not normalised, so the client's
    /// normalisation is exercised), returned in reverse order with explicit indexes.
    async fn serve(mode: Mode) -> (String, Arc<ServerState>) {
        async fn handler(
            State(st): State<Arc<ServerState>>,
            headers: HeaderMap,
            Json(body): Json<serde_json::Value>,
        ) -> AxumResponse {
            let call = st.calls.fetch_add(1, Ordering::SeqCst);
            st.auth.lock().unwrap().push(
                headers
                    .get("authorization")
                    .map(|v| v.to_str().unwrap().to_string()),
            );
            st.bodies.lock().unwrap().push(body.clone());
            match st.mode {
                Mode::FailFirst(n) if call < n => {
                    return (AxumStatus::INTERNAL_SERVER_ERROR, "boom").into_response();
                }
                Mode::Slow(d) => tokio::time::sleep(d).await,
                Mode::BadRequest => {
                    return (AxumStatus::BAD_REQUEST, r#"{"error":"bad model"}"#).into_response();
                }
                Mode::RejectDimensions if body.get("dimensions").is_some() => {
                    let msg = r#"{"error":{"message":"This model does not support specifying dimensions."}}"#;
                    return (AxumStatus::BAD_REQUEST, msg).into_response();
                }
                _ => {}
            }
            let dims = body["dimensions"].as_u64().unwrap_or(8) as usize;
            let inputs = body["input"].as_array().unwrap();
            let mut data: Vec<serde_json::Value> = inputs
                .iter()
                .enumerate()
                .map(|(i, t)| {
                    let len = t.as_str().unwrap().len();
                    let v: Vec<f32> = (0..dims).map(|k| ((len + k) % 7 + 1) as f32).collect();
                    serde_json::json!({"object": "embedding", "index": i, "embedding": v})
                })
                .collect();
            data.reverse();
            Json(serde_json::json!({"object": "list", "data": data, "model": body["model"]}))
                .into_response()
        }
        let st = Arc::new(ServerState {
            mode,
            calls: AtomicUsize::new(0),
            auth: Mutex::new(Vec::new()),
            bodies: Mutex::new(Vec::new()),
        });
        let app = Router::new()
            .route("/v1/embeddings", post(handler))
            .with_state(st.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        (format!("http://{addr}"), st)
    }

    fn opts(endpoint: &str) -> OpenAiOptions {
        OpenAiOptions {
            endpoint: endpoint.to_string(),
            model: "text-embedding-3-small".into(),
            api_key: Some("sk-test-123".into()),
            dimensions: 8,
            timeout: Duration::from_secs(5),
            max_retries: 3,
        }
    }

    #[tokio::test]
    async fn success_sends_bearer_and_normalises() {
        let (url, st) = serve(Mode::Ok).await;
        let e = OpenAiEmbedder::new(opts(&url)).unwrap();
        assert_eq!(e.model_id(), "openai:text-embedding-3-small:8");
        assert_eq!(e.dimensions(), 8);
        let texts = strings(&["a", "bbb", "cc"]);
        let v = e.embed(&texts).await.unwrap();
        assert_eq!(v.len(), 3);
        for x in &v {
            assert_eq!(x.len(), 8);
            assert!((norm(x) - 1.0).abs() < 1e-5);
        }
        // Order follows "index", not the (reversed) order of the response array.
        let mut want: Vec<f32> = (0..8).map(|k| ((3 + k) % 7 + 1) as f32).collect();
        l2_normalize(&mut want);
        assert_eq!(v[1], want);
        assert_eq!(st.calls.load(Ordering::SeqCst), 1);
        assert_eq!(
            st.auth.lock().unwrap()[0].as_deref(),
            Some("Bearer sk-test-123")
        );
        let body = st.bodies.lock().unwrap()[0].clone();
        assert_eq!(body["model"], "text-embedding-3-small");
        assert_eq!(body["dimensions"], 8);
        assert_eq!(body["input"], serde_json::json!(["a", "bbb", "cc"]));

        // "/v1" or a trailing slash on the endpoint is accepted.
        let e2 = OpenAiEmbedder::new(opts(&format!("{url}/v1/"))).unwrap();
        assert_eq!(e2.embed(&texts).await.unwrap(), v);
        // No key → no Authorization header.
        let e3 = OpenAiEmbedder::new(OpenAiOptions {
            api_key: None,
            ..opts(&url)
        })
        .unwrap();
        e3.embed(&texts).await.unwrap();
        assert_eq!(st.auth.lock().unwrap()[2], None);
        // The key never shows up in Debug output.
        let dbg = format!("{e:?}");
        assert!(
            !dbg.contains("sk-test-123") && dbg.contains("redacted"),
            "{dbg}"
        );
    }

    #[tokio::test]
    async fn retries_after_server_errors() {
        let (url, st) = serve(Mode::FailFirst(2)).await;
        let e = OpenAiEmbedder::new(opts(&url)).unwrap();
        let v = e.embed(&strings(&["x"])).await.unwrap();
        assert_eq!(v[0].len(), 8);
        assert_eq!(st.calls.load(Ordering::SeqCst), 3);

        // Out of retries → the last HTTP error.
        let (url, st) = serve(Mode::FailFirst(100)).await;
        let e = OpenAiEmbedder::new(OpenAiOptions {
            max_retries: 1,
            ..opts(&url)
        })
        .unwrap();
        let err = e.embed(&strings(&["x"])).await.unwrap_err();
        assert!(
            matches!(&err, EmbedError::Http(m) if m.contains("500")),
            "{err:?}"
        );
        assert_eq!(st.calls.load(Ordering::SeqCst), 2);
    }

    #[tokio::test]
    async fn client_errors_are_not_retried() {
        let (url, st) = serve(Mode::BadRequest).await;
        let e = OpenAiEmbedder::new(opts(&url)).unwrap();
        let err = e.embed(&strings(&["x"])).await.unwrap_err();
        assert!(
            matches!(&err, EmbedError::Http(m) if m.contains("400") && m.contains("bad model")),
            "{err:?}"
        );
        assert_eq!(st.calls.load(Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn falls_back_when_dimensions_field_is_rejected() {
        let (url, st) = serve(Mode::RejectDimensions).await;
        let e = OpenAiEmbedder::new(opts(&url)).unwrap();
        assert_eq!(e.embed(&strings(&["x"])).await.unwrap()[0].len(), 8);
        assert_eq!(st.calls.load(Ordering::SeqCst), 2);
        assert_eq!(e.embed(&strings(&["y"])).await.unwrap()[0].len(), 8);
        assert_eq!(st.calls.load(Ordering::SeqCst), 3, "field no longer sent");
        assert!(st.bodies.lock().unwrap()[2].get("dimensions").is_none());
    }

    #[tokio::test]
    async fn slow_server_times_out() {
        let (url, st) = serve(Mode::Slow(Duration::from_secs(3))).await;
        let e = OpenAiEmbedder::new(OpenAiOptions {
            timeout: Duration::from_millis(200),
            max_retries: 1,
            ..opts(&url)
        })
        .unwrap();
        let started = std::time::Instant::now();
        let err = e.embed(&strings(&["x"])).await.unwrap_err();
        assert!(matches!(err, EmbedError::Timeout), "{err:?}");
        assert!(
            started.elapsed() < Duration::from_secs(2),
            "{:?}",
            started.elapsed()
        );
        assert_eq!(
            st.calls.load(Ordering::SeqCst),
            2,
            "one retry after the timeout"
        );
    }

    #[tokio::test]
    async fn wrong_dimensions_are_rejected() {
        let (url, _st) = serve(Mode::Ok).await;
        // The server honours "dimensions", so fake a mismatch by checking a bad config instead:
        assert!(matches!(
            OpenAiEmbedder::new(OpenAiOptions {
                dimensions: 0,
                ..opts(&url)
            }),
            Err(EmbedError::Config(_))
        ));
        assert!(matches!(
            OpenAiEmbedder::new(OpenAiOptions {
                endpoint: "ftp://x".into(),
                ..opts(&url)
            }),
            Err(EmbedError::Config(_))
        ));
        let e = OpenAiEmbedder::new(opts(&url)).unwrap();
        let bad = Response {
            data: vec![Datum {
                embedding: vec![1.0; 3],
                index: Some(0),
            }],
        };
        assert!(matches!(e.to_vectors(bad, 1), Err(EmbedError::Http(_))));
    }

    #[tokio::test]
    async fn unreachable_server_is_an_http_error() {
        // Bind then drop, so the port is (very likely) closed.
        let port = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap().port()
        };
        let e = OpenAiEmbedder::new(OpenAiOptions {
            max_retries: 1,
            ..opts(&format!("http://127.0.0.1:{port}"))
        })
        .unwrap();
        let err = e.embed(&strings(&["x"])).await.unwrap_err();
        assert!(matches!(err, EmbedError::Http(_)), "{err:?}");
    }
}
