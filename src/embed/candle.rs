//! The candle runtime of [`super::LocalEmbedder`]: all-MiniLM-L6-v2's BERT encoder in pure Rust.

use std::path::Path;

use candle_core::{Device, Tensor};
use candle_nn::VarBuilder;
use candle_transformers::models::bert::{BertModel, Config as BertConfig, DTYPE};

use super::EmbedError;
use super::local::{Batch, load_error};

/// The BERT encoder loaded from `model.safetensors` + `config.json`, with a private rayon pool for its matmuls.
pub(super) struct CandleEncoder {
    bert: BertModel,
    device: Device,
    pool: rayon::ThreadPool,
    hidden: usize,
}

impl CandleEncoder {
    pub(super) fn load(
        model_dir: &Path,
        config: &BertConfig,
        threads: usize,
    ) -> Result<Self, EmbedError> {
        let weights_path = model_dir.join("model.safetensors");
        if !weights_path.is_file() {
            return Err(load_error(&weights_path, "file not found"));
        }
        let device = Device::Cpu;
        let weights = std::fs::read(&weights_path).map_err(|e| load_error(&weights_path, e))?;
        let vb = VarBuilder::from_buffered_safetensors(weights, DTYPE, &device)
            .map_err(|e| load_error(&weights_path, e))?;
        let bert = BertModel::load(vb, config).map_err(|e| load_error(&weights_path, e))?;
        // candle's large element-wise kernels (GELU, adds) also use candle's own process-wide pool, sized once by
        // the env vars `CANDLE_NUM_THREADS` / `RAYON_NUM_THREADS` (default: physical cores).
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .thread_name(|i| format!("embed-candle-{i}"))
            .build()
            .map_err(|e| EmbedError::Load(format!("cannot start compute threads: {e}")))?;
        Ok(Self {
            bert,
            device,
            pool,
            hidden: config.hidden_size,
        })
    }

    /// The last hidden state, `[b, seq, hidden]` row-major.
    pub(super) fn forward(&mut self, batch: &Batch) -> Result<Vec<f32>, EmbedError> {
        let (b, seq) = (batch.rows, batch.seq);
        let ids: Vec<u32> = batch.ids.iter().map(|&x| x as u32).collect();
        let mask: Vec<u32> = batch.mask.iter().map(|&x| x as u32).collect();
        let run = || -> candle_core::Result<Vec<f32>> {
            let ids = Tensor::from_vec(ids, (b, seq), &self.device)?;
            let mask = Tensor::from_vec(mask, (b, seq), &self.device)?;
            let type_ids = ids.zeros_like()?;
            self.bert
                .forward(&ids, &type_ids, Some(&mask))?
                .flatten_all()?
                .to_vec1::<f32>()
        };
        let out = self
            .pool
            .install(run)
            .map_err(|e| EmbedError::Inference(e.to_string()))?;
        if out.len() != b * seq * self.hidden {
            return Err(EmbedError::Inference(format!(
                "candle returned {} values for a [{b}, {seq}, {}] output",
                out.len(),
                self.hidden
            )));
        }
        Ok(out)
    }
}
