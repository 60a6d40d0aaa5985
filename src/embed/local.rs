//! all-MiniLM-L6-v2 run in-process with candle (CPU), with request coalescing.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;
use candle_transformers::models::bert::{BertModel, Config as BertConfig, DTYPE};
use tokenizers::{Encoding, Tokenizer, TruncationParams};
use tokio::sync::oneshot;

use super::{EmbedError, Embedder, l2_normalize};

/// Tuning of [`LocalEmbedder`].
#[derive(Debug, Clone)]
pub struct LocalOptions {
    /// Most texts run through the model in one forward pass (default 32).
    pub max_batch: usize,
    /// How long the worker waits for more concurrent requests before running a batch that is not
    /// full (default 2 ms). Adds at most this much latency to a lone request.
    pub max_wait: Duration,
    /// Texts are truncated to this many tokens, [CLS]/[SEP] included (default 256, the length
    /// all-MiniLM-L6-v2 was trained with; at most 512).
    pub max_tokens: usize,
    /// Threads of the private rayon pool that runs the matmuls, reductions and tokenizer;
    /// `None` = all available cores. candle's large element-wise kernels (GELU, adds) also use
    /// candle's own process-wide pool, sized once by the env vars `CANDLE_NUM_THREADS` /
    /// `RAYON_NUM_THREADS` (default: physical cores): set those at process start to cap the
    /// embedder's total CPU use.
    pub threads: Option<usize>,
}

impl Default for LocalOptions {
    fn default() -> Self {
        Self {
            max_batch: 32,
            max_wait: Duration::from_millis(2),
            max_tokens: 256,
            threads: None,
        }
    }
}

/// Name the model is stored under in [`Embedder::model_id`].
const MODEL_NAME: &str = "all-MiniLM-L6-v2";

/// all-MiniLM-L6-v2 sentence embeddings (384 dims, mean pooling, L2-normalised), computed on the
/// CPU with candle.
///
/// Inference runs on a dedicated OS thread (plus a private rayon pool for the matmuls), never on
/// the async runtime's workers. Concurrent [`Embedder::embed`] calls are queued and merged into
/// batches of up to `max_batch` texts (waiting at most `max_wait` for more to arrive); texts of a
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

/// What the worker thread owns.
struct Model {
    bert: BertModel,
    tokenizer: Tokenizer,
    device: Device,
}

impl LocalEmbedder {
    /// Loads `model.safetensors`, `config.json` and `tokenizer.json` from `model_dir` and starts
    /// the worker thread. Blocking (reads ~90 MB): at startup, or via `spawn_blocking`.
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
        let config_path = model_dir.join("config.json");
        let weights_path = model_dir.join("model.safetensors");
        let tokenizer_path = model_dir.join("tokenizer.json");
        for p in [&config_path, &weights_path, &tokenizer_path] {
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
        // `forward_chunk`) and truncate at max_tokens.
        tokenizer.with_padding(None);
        tokenizer
            .with_truncation(Some(TruncationParams {
                max_length: opts.max_tokens,
                ..Default::default()
            }))
            .map_err(|e| load_error(&tokenizer_path, e))?;

        let device = Device::Cpu;
        let weights = std::fs::read(&weights_path).map_err(|e| load_error(&weights_path, e))?;
        let vb = VarBuilder::from_buffered_safetensors(weights, DTYPE, &device)
            .map_err(|e| load_error(&weights_path, e))?;
        let bert = BertModel::load(vb, &config).map_err(|e| load_error(&weights_path, e))?;

        let threads = opts
            .threads
            .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .thread_name(|i| format!("embed-compute-{i}"))
            .build()
            .map_err(|e| EmbedError::Load(format!("cannot start compute threads: {e}")))?;

        let dims = config.hidden_size;
        let model = Model {
            bert,
            tokenizer,
            device,
        };
        // Fail at load time, not on the first request, if the weights do not run.
        let probe = pool
            .install(|| model.embed_chunk(&[&model.encode(&["warm up"])?[0]]))
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

        let stats = Arc::new(Stats::default());
        let (tx, rx) = mpsc::channel::<Job>();
        let worker_stats = stats.clone();
        let worker_opts = opts.clone();
        std::thread::Builder::new()
            .name("embed-worker".into())
            .spawn(move || worker_loop(model, pool, rx, worker_opts, worker_stats))
            .map_err(|e| EmbedError::Load(format!("cannot start embedding worker thread: {e}")))?;

        Ok(Self {
            tx,
            model_id: format!("local:{MODEL_NAME}:{dims}"),
            dims,
            config,
            stats,
        })
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

fn load_error(path: &Path, err: impl std::fmt::Display) -> EmbedError {
    EmbedError::Load(format!(
        "{}: {err}. The all-MiniLM-L6-v2 model files are installed by `make setup`; \
         `hack/python-deps.sh model-dir` prints the directory that holds them",
        path.display()
    ))
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
        &self,
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
            let vectors = self.embed_chunk(&encs)?;
            stats.batches.fetch_add(1, Ordering::Relaxed);
            stats.texts.fetch_add(chunk.len() as u64, Ordering::Relaxed);
            for (&i, v) in chunk.iter().zip(vectors) {
                out[i] = v;
            }
        }
        Ok(out)
    }

    /// One forward pass: pads to the longest text of the chunk (masked), mean-pools over the
    /// attention mask and L2-normalises.
    fn embed_chunk(&self, encs: &[&Encoding]) -> Result<Vec<Vec<f32>>, EmbedError> {
        let b = encs.len();
        let seq = encs
            .iter()
            .map(|e| e.get_ids().len())
            .max()
            .unwrap_or(0)
            .max(1);
        let mut ids = vec![0u32; b * seq];
        let mut mask = vec![0u32; b * seq];
        for (row, e) in encs.iter().enumerate() {
            for (col, (&id, &m)) in e.get_ids().iter().zip(e.get_attention_mask()).enumerate() {
                ids[row * seq + col] = id;
                mask[row * seq + col] = m;
            }
        }
        let run = || -> candle_core::Result<Vec<Vec<f32>>> {
            let ids = Tensor::from_vec(ids, (b, seq), &self.device)?;
            let mask = Tensor::from_vec(mask, (b, seq), &self.device)?;
            let type_ids = ids.zeros_like()?;
            let hidden = self.bert.forward(&ids, &type_ids, Some(&mask))?; // (b, seq, h)
            let maskf = mask.to_dtype(DType::F32)?.unsqueeze(2)?; // (b, seq, 1)
            let summed = hidden.broadcast_mul(&maskf)?.sum(1)?; // (b, h)
            let counts = maskf.sum(1)?.clamp(1e-9f32, f32::MAX)?; // (b, 1)
            summed.broadcast_div(&counts)?.to_vec2::<f32>()
        };
        let mut rows = run().map_err(|e| EmbedError::Inference(e.to_string()))?;
        for r in &mut rows {
            l2_normalize(r);
        }
        Ok(rows)
    }
}

fn worker_loop(
    model: Model,
    pool: rayon::ThreadPool,
    rx: mpsc::Receiver<Job>,
    opts: LocalOptions,
    stats: Arc<Stats>,
) {
    while let Ok(first) = rx.recv() {
        let mut queued = first.texts.len();
        let mut jobs = vec![first];
        let deadline = Instant::now() + opts.max_wait;
        while queued < opts.max_batch {
            let next = match deadline.checked_duration_since(Instant::now()) {
                Some(left) if !left.is_zero() => rx.recv_timeout(left).ok(),
                _ => rx.try_recv().ok(),
            };
            match next {
                Some(job) => {
                    queued += job.texts.len();
                    jobs.push(job);
                }
                None => break,
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
            pool.install(|| model.embed_all(&texts, opts.max_batch, &stats))
        }))
        .unwrap_or_else(|panic| {
            let msg = panic
                .downcast_ref::<String>()
                .map(String::as_str)
                .or_else(|| panic.downcast_ref::<&str>().copied())
                .unwrap_or("unknown panic");
            Err(EmbedError::Inference(format!("model panicked: {msg}")))
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
            .field("batches_run", &self.batches_run())
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::embed::cosine;
    use crate::embed::test_util::{max_abs_diff, model_dir, norm, strings};

    fn load() -> LocalEmbedder {
        LocalEmbedder::load(&model_dir(), LocalOptions::default()).expect("load model")
    }

    #[tokio::test]
    async fn unit_length_deterministic_and_batch_invariant() {
        let e = load();
        assert_eq!(e.model_id(), "local:all-MiniLM-L6-v2:384");
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
            let d = max_abs_diff(&alone[0], &vs[idx]);
            assert!(d <= 1e-5, "alone vs batch position {idx}: max diff {d}");
        }
        // A text longer than max_tokens is truncated, not rejected.
        let huge = vec!["memory ".repeat(2000)];
        assert_eq!(e.embed(&huge).await.unwrap()[0].len(), 384);
        assert!(e.embed(&[]).await.unwrap().is_empty());
    }

    #[tokio::test]
    async fn paraphrases_are_closer_than_unrelated() {
        let e = load();
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
        let e = Arc::new(load());
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
        let err = LocalEmbedder::load(Path::new("/nonexistent/model"), LocalOptions::default())
            .unwrap_err();
        let msg = err.to_string();
        assert!(matches!(err, EmbedError::Load(_)));
        assert!(msg.contains("/nonexistent/model"), "{msg}");
        assert!(msg.contains("make setup"), "{msg}");
    }

    #[test]
    fn flops_estimate() {
        // 6 layers × 2 × (4·384² + 2·384·1536) = 21_233_664
        assert_eq!(bert_flops_per_token(6, 384, 1536, 0), 21_233_664.0);
        let at16 = bert_flops_per_token(6, 384, 1536, 16);
        assert!((at16 - 21_381_120.0).abs() < 1.0, "{at16}");
    }
}
