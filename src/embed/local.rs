//! all-MiniLM-L6-v2 run in-process on the CPU, by ONNX Runtime ([`super::onnx`]) or candle ([`super::candle`]),
//! with request coalescing. Both runtimes share everything but the encoder's forward pass: the tokenizer, per-batch
//! padding, truncation, mean pooling and L2 normalisation below, so they give the same vectors (cosine ≥ 0.9999 to
//! sentence-transformers, tests/it/embeddings.rs).

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc;

use candle_transformers::models::bert::Config as BertConfig;
use tokenizers::{Encoding, Tokenizer, TruncationParams};
use tokio::sync::oneshot;

use super::candle::CandleEncoder;
use super::onnx::OnnxEncoder;
use super::{EmbedError, Embedder, l2_normalize};
pub use crate::crd::{LocalPrecision, LocalRuntime};

/// Tuning of [`LocalEmbedder`].
#[derive(Debug, Clone)]
pub struct LocalOptions {
    /// ONNX Runtime (default) or candle.
    pub runtime: LocalRuntime,
    /// fp32 (default) or int8 weights (ONNX Runtime only; its own model id).
    pub precision: LocalPrecision,
    /// Most texts run through the model in one forward pass (default 32).
    pub max_batch: usize,
    /// Texts are truncated to this many tokens, [CLS]/[SEP] included (default 256, the length
    /// all-MiniLM-L6-v2 was trained with and sentence-transformers' `max_seq_length`; at most 512).
    pub max_tokens: usize,
    /// Threads of one forward pass; `None` = the available cores, at most [`MAX_DEFAULT_THREADS`].
    pub threads: Option<usize>,
}

/// The default thread count's cap: the embedder shares the machine with PostgreSQL and the API server, and
/// MiniLM's matrices (384 wide) stop scaling well past a few threads.
pub const MAX_DEFAULT_THREADS: usize = 4;

impl Default for LocalOptions {
    fn default() -> Self {
        Self {
            runtime: LocalRuntime::Onnx,
            precision: LocalPrecision::Fp32,
            max_batch: 32,
            max_tokens: 256,
            threads: None,
        }
    }
}

impl LocalOptions {
    /// The same options with another runtime and precision.
    pub fn with(runtime: LocalRuntime, precision: LocalPrecision) -> Self {
        Self {
            runtime,
            precision,
            ..Self::default()
        }
    }
}

/// Name the model is stored under in [`Embedder::model_id`].
const MODEL_NAME: &str = "all-MiniLM-L6-v2";

/// The model id of vectors made with `precision`: fp32 vectors are the reference's whichever runtime computed them
/// (one id, one index); int8 vectors differ (cosine ~0.99) and get their own id, so they never mix with fp32 ones.
pub fn local_model_id(precision: LocalPrecision, dims: usize) -> String {
    match precision {
        LocalPrecision::Fp32 => format!("local:{MODEL_NAME}:{dims}"),
        LocalPrecision::Int8 => format!("local:{MODEL_NAME}-int8:{dims}"),
    }
}

/// all-MiniLM-L6-v2 sentence embeddings (384 dims, mean pooling, L2-normalised), computed on the
/// CPU by ONNX Runtime or candle.
///
/// Inference runs on a dedicated OS thread (plus the runtime's own compute threads), never on
/// the async runtime's workers. Concurrent [`Embedder::embed`] calls are queued; the worker takes
/// everything queued (up to `max_batch` texts) as soon as it is free, so a lone request runs at
/// once and requests arriving during a forward pass share the next one (no fixed wait). Texts of a
/// batch are sorted by token count so that padding is minimal, and every caller gets its own
/// vectors back in order. Padding is masked out, so a text gets the same vector (±1e-5) alone or
/// in any batch.
///
/// Dropping the embedder stops the worker thread once queued requests are answered.
pub struct LocalEmbedder {
    tx: mpsc::Sender<Job>,
    model_id: String,
    dims: usize,
    config: BertConfig,
    runtime: LocalRuntime,
    stats: Arc<Stats>,
}

#[derive(Default)]
struct Stats {
    batches: AtomicU64,
    texts: AtomicU64,
}

struct Job {
    texts: Vec<String>,
    reply: oneshot::Sender<Result<Vec<Vec<f32>>, EmbedError>>,
}

/// One padded forward pass's input: `rows` texts of `seq` tokens, row-major.
pub(super) struct Batch {
    pub rows: usize,
    pub seq: usize,
    pub ids: Vec<i64>,
    pub mask: Vec<i64>,
}

enum Encoder {
    Onnx(OnnxEncoder),
    Candle(Box<CandleEncoder>),
}

impl Encoder {
    fn forward(&mut self, batch: &Batch) -> Result<Vec<f32>, EmbedError> {
        match self {
            Self::Onnx(e) => e.forward(batch),
            Self::Candle(e) => e.forward(batch),
        }
    }
}

/// What the worker thread owns.
struct Model {
    encoder: Encoder,
    tokenizer: Tokenizer,
    hidden: usize,
}

impl LocalEmbedder {
    /// Loads the tokenizer, config and the runtime's model files from `model_dir` and starts the
    /// worker thread. Blocking (reads ~90 MB): at startup, or via `spawn_blocking`.
    pub fn load(model_dir: &Path, opts: LocalOptions) -> Result<Self, EmbedError> {
        if opts.max_batch == 0 {
            return Err(EmbedError::Config("max_batch must be at least 1".into()));
        }
        if opts.max_tokens < 2 {
            return Err(EmbedError::Config("max_tokens must be at least 2".into()));
        }
        if opts.threads == Some(0) {
            return Err(EmbedError::Config("threads must be at least 1".into()));
        }
        if opts.runtime == LocalRuntime::Candle && opts.precision == LocalPrecision::Int8 {
            return Err(EmbedError::Config(
                "precision Int8 needs runtime Onnx (candle runs the fp32 weights)".into(),
            ));
        }
        let config_path = model_dir.join("config.json");
        let tokenizer_path = model_dir.join("tokenizer.json");
        for p in [&config_path, &tokenizer_path] {
            if !p.is_file() {
                return Err(load_error(p, "file not found"));
            }
        }

        let config_text =
            std::fs::read_to_string(&config_path).map_err(|e| load_error(&config_path, e))?;
        let config: BertConfig = serde_json::from_str(&config_text)
            .map_err(|e| load_error(&config_path, format!("not a BERT config: {e}")))?;
        if opts.max_tokens > config.max_position_embeddings {
            return Err(EmbedError::Config(format!(
                "max_tokens {} exceeds the model's {} positions",
                opts.max_tokens, config.max_position_embeddings
            )));
        }

        let mut tokenizer =
            Tokenizer::from_file(&tokenizer_path).map_err(|e| load_error(&tokenizer_path, e))?;
        // The shipped tokenizer.json pads every text to 128 tokens; pad per batch instead (see
        // `Model::batch`) and truncate at max_tokens.
        tokenizer.with_padding(None);
        tokenizer
            .with_truncation(Some(TruncationParams {
                max_length: opts.max_tokens,
                ..Default::default()
            }))
            .map_err(|e| load_error(&tokenizer_path, e))?;

        let threads = opts.threads.unwrap_or_else(|| {
            std::thread::available_parallelism()
                .map_or(1, |n| n.get())
                .min(MAX_DEFAULT_THREADS)
        });
        let dims = config.hidden_size;
        let encoder = match opts.runtime {
            LocalRuntime::Onnx => {
                let file = match opts.precision {
                    LocalPrecision::Fp32 => "model.onnx",
                    LocalPrecision::Int8 => "model.int8.onnx",
                };
                // The C++ library can throw through the FFI only as an error code; a panic in the binding (it
                // asserts on pointers) must still not take the operator down.
                let loaded =
                    std::panic::catch_unwind(|| OnnxEncoder::load(model_dir, file, dims, threads))
                        .unwrap_or_else(|p| {
                            Err(EmbedError::Load(format!(
                                "onnxruntime panicked while loading {}: {}",
                                model_dir.join(file).display(),
                                panic_message(&*p)
                            )))
                        })?;
                Encoder::Onnx(loaded)
            }
            LocalRuntime::Candle => {
                Encoder::Candle(Box::new(CandleEncoder::load(model_dir, &config, threads)?))
            }
        };
        let mut model = Model {
            encoder,
            tokenizer,
            hidden: dims,
        };
        // Fail at load time, not on the first request, if the weights do not run.
        let stats = Arc::new(Stats::default());
        let probe = model
            .embed_all(&["warm up"], opts.max_batch, &Stats::default())
            .map_err(|e| {
                EmbedError::Load(format!(
                    "model in {} does not run: {e}",
                    model_dir.display()
                ))
            })?;
        if probe.first().map(Vec::len) != Some(dims) {
            return Err(EmbedError::Load(format!(
                "model in {} gives wrong output shape",
                model_dir.display()
            )));
        }

        let (tx, rx) = mpsc::channel::<Job>();
        let worker_stats = stats.clone();
        let max_batch = opts.max_batch;
        std::thread::Builder::new()
            .name("embed-worker".into())
            .spawn(move || worker_loop(model, rx, max_batch, worker_stats))
            .map_err(|e| EmbedError::Load(format!("cannot start embedding worker thread: {e}")))?;

        Ok(Self {
            tx,
            model_id: local_model_id(opts.precision, dims),
            dims,
            config,
            runtime: opts.runtime,
            stats,
        })
    }

    /// The runtime this embedder runs on.
    pub fn runtime(&self) -> LocalRuntime {
        self.runtime
    }

    /// Forward passes run so far (one per batch of at most `max_batch` texts).
    pub fn batches_run(&self) -> u64 {
        self.stats.batches.load(Ordering::Relaxed)
    }

    /// Texts embedded so far.
    pub fn texts_embedded(&self) -> u64 {
        self.stats.texts.load(Ordering::Relaxed)
    }

    /// Estimated FLOPs per token of the matmuls in one forward pass, for compute-bound estimates:
    /// `2 · L · (4·h² + 2·h·i)` (see [`bert_flops_per_token`] with `seq_len = 0`); for
    /// all-MiniLM-L6-v2 (L=6, h=384, i=1536) ≈ 21.2 MFLOP per token. Attention scores add
    /// `4·L·h·seq_len` per token (≈ 0.3 MFLOP at 32 tokens), ignored here.
    pub fn flops_per_token_estimate(&self) -> f64 {
        bert_flops_per_token(
            self.config.num_hidden_layers,
            self.config.hidden_size,
            self.config.intermediate_size,
            0,
        )
    }
}

/// FLOPs per token of a BERT encoder forward pass (multiply-add = 2 FLOPs):
///
/// * per layer, the weight matmuls: Q, K, V and attention-output projections `4·h²` plus the
///   feed-forward up/down projections `2·h·i` multiply-adds per token → `2·(4h² + 2hi)` FLOPs;
/// * per layer, attention itself: `Q·Kᵀ` and `softmax·V` cost `2·h·seq_len` multiply-adds per
///   token → `4·h·seq_len` FLOPs;
///
/// times `layers`. Embedding lookups, layer norms, GELU and softmax are O(h) per token and ignored.
/// all-MiniLM-L6-v2: `bert_flops_per_token(6, 384, 1536, 16)` ≈ 21.4e6.
pub fn bert_flops_per_token(
    layers: usize,
    hidden: usize,
    intermediate: usize,
    seq_len: usize,
) -> f64 {
    let (l, h, i, s) = (
        layers as f64,
        hidden as f64,
        intermediate as f64,
        seq_len as f64,
    );
    l * (2.0 * (4.0 * h * h + 2.0 * h * i) + 4.0 * h * s)
}

pub(super) fn load_error(path: &Path, err: impl std::fmt::Display) -> EmbedError {
    EmbedError::Load(format!(
        "{}: {err}. The all-MiniLM-L6-v2 model files (and ONNX Runtime's library) are installed by \
         `make setup`; `hack/python-deps.sh model-dir` prints the directory that holds them",
        path.display()
    ))
}

fn panic_message(panic: &(dyn std::any::Any + Send)) -> String {
    panic
        .downcast_ref::<String>()
        .cloned()
        .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
        .unwrap_or_else(|| "unknown panic".into())
}

/// Mean of each row's token vectors over its attention mask, then L2-normalised: sentence-transformers'
/// `Pooling(mean)` + `Normalize` for all-MiniLM-L6-v2. `hidden` is `[rows, seq, h]` row-major.
pub(super) fn mean_pool_normalize(
    hidden: &[f32],
    mask: &[i64],
    rows: usize,
    seq: usize,
    h: usize,
) -> Vec<Vec<f32>> {
    (0..rows)
        .map(|r| {
            let mut v = vec![0f32; h];
            let mut count = 0f32;
            for t in 0..seq {
                if mask[r * seq + t] == 0 {
                    continue;
                }
                count += 1.0;
                let token = &hidden[(r * seq + t) * h..(r * seq + t + 1) * h];
                for (acc, x) in v.iter_mut().zip(token) {
                    *acc += x;
                }
            }
            let count = count.max(1e-9);
            for x in &mut v {
                *x /= count;
            }
            l2_normalize(&mut v);
            v
        })
        .collect()
}

impl Model {
    fn encode(&self, texts: &[&str]) -> Result<Vec<Encoding>, EmbedError> {
        self.tokenizer
            .encode_batch_fast(texts.to_vec(), true)
            .map_err(|e| EmbedError::Inference(format!("tokenizer: {e}")))
    }

    /// Embeds texts of any number, in forward passes of at most `max_batch` texts of similar
    /// length. Returns vectors in input order.
    fn embed_all(
        &mut self,
        texts: &[&str],
        max_batch: usize,
        stats: &Stats,
    ) -> Result<Vec<Vec<f32>>, EmbedError> {
        let encodings = self.encode(texts)?;
        let mut order: Vec<usize> = (0..encodings.len()).collect();
        order.sort_by_key(|&i| encodings[i].get_ids().len());
        let mut out = vec![Vec::new(); encodings.len()];
        for chunk in order.chunks(max_batch) {
            let encs: Vec<&Encoding> = chunk.iter().map(|&i| &encodings[i]).collect();
            let batch = Self::batch(&encs);
            let hidden = self.encoder.forward(&batch)?;
            let vectors =
                mean_pool_normalize(&hidden, &batch.mask, batch.rows, batch.seq, self.hidden);
            stats.batches.fetch_add(1, Ordering::Relaxed);
            stats.texts.fetch_add(chunk.len() as u64, Ordering::Relaxed);
            for (&i, v) in chunk.iter().zip(vectors) {
                out[i] = v;
            }
        }
        Ok(out)
    }

    /// Pads a chunk to its longest text (mask 0 on the padding).
    fn batch(encs: &[&Encoding]) -> Batch {
        let rows = encs.len();
        let seq = encs
            .iter()
            .map(|e| e.get_ids().len())
            .max()
            .unwrap_or(0)
            .max(1);
        let mut ids = vec![0i64; rows * seq];
        let mut mask = vec![0i64; rows * seq];
        for (row, e) in encs.iter().enumerate() {
            for (col, (&id, &m)) in e.get_ids().iter().zip(e.get_attention_mask()).enumerate() {
                ids[row * seq + col] = i64::from(id);
                mask[row * seq + col] = i64::from(m);
            }
        }
        Batch {
            rows,
            seq,
            ids,
            mask,
        }
    }
}

fn worker_loop(mut model: Model, rx: mpsc::Receiver<Job>, max_batch: usize, stats: Arc<Stats>) {
    while let Ok(first) = rx.recv() {
        // Everything that queued up while the previous batch ran joins this one; nothing waits for more.
        let mut queued = first.texts.len();
        let mut jobs = vec![first];
        while queued < max_batch {
            match rx.try_recv() {
                Ok(job) => {
                    queued += job.texts.len();
                    jobs.push(job);
                }
                Err(_) => break,
            }
        }
        // Callers that gave up (dropped their future) need no answer.
        jobs.retain(|j| !j.reply.is_closed());
        if jobs.is_empty() {
            continue;
        }
        let texts: Vec<&str> = jobs
            .iter()
            .flat_map(|j| j.texts.iter().map(String::as_str))
            .collect();
        let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            model.embed_all(&texts, max_batch, &stats)
        }))
        .unwrap_or_else(|panic| {
            Err(EmbedError::Inference(format!(
                "model panicked: {}",
                panic_message(&*panic)
            )))
        });
        match result {
            Ok(vectors) => {
                let mut it = vectors.into_iter();
                for job in jobs {
                    let mine: Vec<Vec<f32>> = it.by_ref().take(job.texts.len()).collect();
                    let _ = job.reply.send(Ok(mine));
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, texts = texts.len(), "local embedding batch failed");
                for job in jobs {
                    let _ = job.reply.send(Err(e.clone()));
                }
            }
        }
    }
}

#[async_trait::async_trait]
impl Embedder for LocalEmbedder {
    fn model_id(&self) -> &str {
        &self.model_id
    }

    fn dimensions(&self) -> usize {
        self.dims
    }

    fn semantic(&self) -> bool {
        true
    }

    async fn embed(&self, texts: &[String]) -> Result<Vec<Vec<f32>>, EmbedError> {
        if texts.is_empty() {
            return Ok(Vec::new());
        }
        let (reply, rx) = oneshot::channel();
        self.tx
            .send(Job {
                texts: texts.to_vec(),
                reply,
            })
            .map_err(|_| EmbedError::Inference("embedding worker thread has stopped".into()))?;
        rx.await
            .map_err(|_| EmbedError::Inference("embedding worker thread has stopped".into()))?
    }
}

impl std::fmt::Debug for LocalEmbedder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LocalEmbedder")
            .field("model_id", &self.model_id)
            .field("runtime", &self.runtime)
            .field("batches_run", &self.batches_run())
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::embed::cosine;
    use crate::embed::test_util::{max_abs_diff, model_dir, norm, strings};

    const RUNTIMES: [(LocalRuntime, LocalPrecision); 3] = [
        (LocalRuntime::Onnx, LocalPrecision::Fp32),
        (LocalRuntime::Onnx, LocalPrecision::Int8),
        (LocalRuntime::Candle, LocalPrecision::Fp32),
    ];

    fn load(runtime: LocalRuntime, precision: LocalPrecision) -> LocalEmbedder {
        LocalEmbedder::load(&model_dir(), LocalOptions::with(runtime, precision))
            .unwrap_or_else(|e| panic!("load {runtime:?} {precision:?}: {e}"))
    }

    #[tokio::test]
    async fn unit_length_deterministic_and_batch_invariant() {
        for (runtime, precision) in RUNTIMES {
            println!("{runtime:?} {precision:?}");
            unit_length_deterministic_and_batch_invariant_with(load(runtime, precision)).await;
        }
    }

    async fn unit_length_deterministic_and_batch_invariant_with(e: LocalEmbedder) {
        assert_eq!(
            e.model_id(),
            local_model_id(
                if e.model_id().contains("int8") {
                    LocalPrecision::Int8
                } else {
                    LocalPrecision::Fp32
                },
                384
            )
        );
        assert!(e.model_id().starts_with("local:all-MiniLM-L6-v2"));
        assert_eq!(e.dimensions(), 384);
        assert!(e.semantic());

        let target = "pod api was OOM killed after exceeding its memory limit".to_string();
        let alone = e.embed(std::slice::from_ref(&target)).await.unwrap();
        assert_eq!(alone.len(), 1);
        assert_eq!(alone[0].len(), 384);
        assert!((norm(&alone[0]) - 1.0).abs() < 1e-5);
        let again = e.embed(std::slice::from_ref(&target)).await.unwrap();
        assert!(
            max_abs_diff(&alone[0], &again[0]) <= 1e-6,
            "not deterministic"
        );

        // Inside a batch of shorter and much longer texts (so it gets padded), twice, at
        // different positions.
        let long = "the node worker-3 reported disk pressure and kubelet started evicting pods \
                    from the payments namespace, including several replicas of the api \
                    deployment, while the cluster autoscaler tried to add capacity"
            .repeat(3);
        let batch = vec![
            "ok".to_string(),
            long.clone(),
            target.clone(),
            "TLS certificate expired".to_string(),
            String::new(),
            target.clone(),
            long,
        ];
        let vs = e.embed(&batch).await.unwrap();
        assert_eq!(vs.len(), batch.len());
        for v in &vs {
            assert_eq!(v.len(), 384);
            assert!((norm(v) - 1.0).abs() < 1e-5, "norm {}", norm(v));
        }
        for idx in [2, 5] {
            if e.model_id().contains("int8") {
                // Dynamic quantization scales the activations by each batch's range, so batch mates move an int8
                // vector a little (measured: max component diff 0.017); it stays the same text's vector.
                let c = cosine(&alone[0], &vs[idx]);
                assert!(c >= 0.99, "int8 alone vs batch position {idx}: cosine {c}");
            } else {
                let d = max_abs_diff(&alone[0], &vs[idx]);
                assert!(d <= 1e-5, "alone vs batch position {idx}: max diff {d}");
            }
        }
        // A text longer than max_tokens is truncated, not rejected.
        let huge = vec!["memory ".repeat(2000)];
        assert_eq!(e.embed(&huge).await.unwrap()[0].len(), 384);
        assert!(e.embed(&[]).await.unwrap().is_empty());
    }

    #[tokio::test]
    async fn paraphrases_are_closer_than_unrelated() {
        for (runtime, precision) in RUNTIMES {
            println!("{runtime:?} {precision:?}");
            paraphrases_are_closer_than_unrelated_with(load(runtime, precision)).await;
        }
    }

    async fn paraphrases_are_closer_than_unrelated_with(e: LocalEmbedder) {
        // (anchor, paraphrase, unrelated)
        let cases = [
            (
                "pod was OOM killed, memory limit exceeded",
                "container terminated because it ran out of memory",
                "TLS certificate expired for ingress",
            ),
            (
                "node is not ready, kubelet stopped posting status",
                "the worker node went NotReady because kubelet is down",
                "deployment rollout succeeded after scaling replicas",
            ),
            (
                "disk is almost full on the node, eviction started",
                "node under disk pressure, pods being evicted",
                "DNS resolution failing for external service",
            ),
            (
                "restart pod to recover from crash loop backoff",
                "container keeps crashing and restarting (CrashLoopBackOff)",
                "increase the horizontal pod autoscaler max replicas",
            ),
            (
                "certificate for ingress expired, TLS handshake fails",
                "HTTPS errors because the TLS cert is out of date",
                "pod was OOM killed, memory limit exceeded",
            ),
        ];
        let mut texts = Vec::new();
        for (a, p, u) in cases {
            texts.extend(strings(&[a, p, u]));
        }
        let v = e.embed(&texts).await.unwrap();
        for (n, (a, p, u)) in cases.iter().enumerate() {
            let (va, vp, vu) = (&v[3 * n], &v[3 * n + 1], &v[3 * n + 2]);
            let (cp, cu) = (cosine(va, vp), cosine(va, vu));
            println!("{cp:.3} > {cu:.3}: {a:?} ~ {p:?} vs {u:?}");
            assert!(
                cp > cu + 0.1,
                "paraphrase {cp} not above unrelated {cu} for {a:?}"
            );
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn concurrent_calls_are_coalesced_and_identical() {
        let e = Arc::new(load(LocalRuntime::Onnx, LocalPrecision::Fp32));
        let texts: Vec<String> = (0..50)
            .map(|i| match i % 5 {
                0 => format!("pod {i} was OOM killed"),
                1 => format!("node worker-{i} is NotReady"),
                2 => format!("restart deployment api-{i} after crash loop, replicas {i}"),
                3 => format!("TLS certificate for ingress host-{i}.example.com expired"),
                _ => format!("disk pressure on node {i}; evicting pods and cleaning images"),
            })
            .collect();
        let mut sequential = Vec::new();
        for t in &texts {
            sequential.push(e.embed(std::slice::from_ref(t)).await.unwrap().remove(0));
        }
        let before = e.batches_run();
        let handles: Vec<_> = texts
            .iter()
            .cloned()
            .map(|t| {
                let e = e.clone();
                tokio::spawn(async move { e.embed(&[t]).await })
            })
            .collect();
        let mut concurrent = Vec::new();
        for h in handles {
            concurrent.push(h.await.unwrap().unwrap().remove(0));
        }
        let batches = e.batches_run() - before;
        println!("50 concurrent single-text calls ran in {batches} batches");
        assert!(batches < 50, "no coalescing: {batches} batches");
        for (i, (s, c)) in sequential.iter().zip(&concurrent).enumerate() {
            let d = max_abs_diff(s, c);
            assert!(d <= 1e-5, "text {i}: sequential vs concurrent max diff {d}");
        }
    }

    #[test]
    fn missing_model_dir_names_the_fix() {
        for (runtime, precision) in RUNTIMES {
            let err = LocalEmbedder::load(
                Path::new("/nonexistent/model"),
                LocalOptions::with(runtime, precision),
            )
            .unwrap_err();
            let msg = err.to_string();
            assert!(matches!(err, EmbedError::Load(_)));
            assert!(msg.contains("/nonexistent/model"), "{msg}");
            assert!(msg.contains("make setup"), "{msg}");
        }
    }

    /// A directory with everything but one file: the error names that file (never a panic, whether or not this
    /// process loaded ONNX Runtime before).
    #[test]
    fn each_missing_file_is_named() {
        let src = model_dir();
        for (missing, runtime, precision) in [
            ("model.onnx", LocalRuntime::Onnx, LocalPrecision::Fp32),
            ("model.int8.onnx", LocalRuntime::Onnx, LocalPrecision::Int8),
            (
                super::super::onnx::ONNXRUNTIME_LIBRARY,
                LocalRuntime::Onnx,
                LocalPrecision::Fp32,
            ),
            ("tokenizer.json", LocalRuntime::Onnx, LocalPrecision::Fp32),
            (
                "model.safetensors",
                LocalRuntime::Candle,
                LocalPrecision::Fp32,
            ),
        ] {
            let dir = tempfile::tempdir().unwrap();
            for f in [
                "config.json",
                "tokenizer.json",
                "model.onnx",
                "model.int8.onnx",
                "model.safetensors",
                super::super::onnx::ONNXRUNTIME_LIBRARY,
            ] {
                if f != missing {
                    std::os::unix::fs::symlink(src.join(f), dir.path().join(f)).unwrap();
                }
            }
            let err = LocalEmbedder::load(dir.path(), LocalOptions::with(runtime, precision))
                .unwrap_err();
            let msg = err.to_string();
            let named = dir.path().join(missing).display().to_string();
            assert!(
                msg.contains(&named) && msg.contains("make setup"),
                "{missing}: {msg}"
            );
        }
    }

    #[test]
    fn int8_needs_onnx() {
        let err = LocalEmbedder::load(
            &model_dir(),
            LocalOptions::with(LocalRuntime::Candle, LocalPrecision::Int8),
        )
        .unwrap_err();
        assert!(matches!(err, EmbedError::Config(_)), "{err}");
    }

    #[test]
    fn mean_pooling_skips_padding_and_normalises() {
        // 2 rows × 3 tokens × 2 dims; row 1's last token is padding.
        let hidden = [1.0, 0.0, 3.0, 0.0, 5.0, 5.0, 0.0, 2.0, 0.0, 4.0, 9.0, 9.0];
        let mask = [1, 1, 0, 1, 1, 0];
        let v = mean_pool_normalize(&hidden, &mask, 2, 3, 2);
        assert!(max_abs_diff(&v[0], &[1.0, 0.0]) < 1e-6, "{:?}", v[0]);
        assert!(max_abs_diff(&v[1], &[0.0, 1.0]) < 1e-6, "{:?}", v[1]);
    }

    #[test]
    fn flops_estimate() {
        // 6 layers × 2 × (4·384² + 2·384·1536) = 21_233_664
        assert_eq!(bert_flops_per_token(6, 384, 1536, 0), 21_233_664.0);
        let at16 = bert_flops_per_token(6, 384, 1536, 16);
        assert!((at16 - 21_381_120.0).abs() < 1.0, "{at16}");
    }
}
