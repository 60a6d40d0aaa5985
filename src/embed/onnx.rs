//! The ONNX Runtime runtime of [`super::LocalEmbedder`]: all-MiniLM-L6-v2 exported to ONNX at `make setup`
//! (hack/onnx-export.py: fp32 fused graph, optional int8 per-channel), run by the `libonnxruntime.so` of the pinned
//! PyPI `onnxruntime` wheel, loaded at run time (the `ort` crate's `load-dynamic`).

use std::path::{Path, PathBuf};
use std::sync::{Mutex, OnceLock};

use ort::environment::Environment;
use ort::session::Session;
use ort::session::builder::GraphOptimizationLevel;
use ort::value::Tensor;

use super::EmbedError;
use super::local::{Batch, load_error};

/// The file name of ONNX Runtime's library, looked for in the model directory unless `ORT_DYLIB_PATH` names it.
pub const ONNXRUNTIME_LIBRARY: &str = "libonnxruntime.so";

/// ONNX Runtime allows one environment per process, for the life of the process; the first successful load keeps
/// it (and its library) here.
static ENVIRONMENT: OnceLock<Environment> = OnceLock::new();
static ENVIRONMENT_INIT: Mutex<()> = Mutex::new(());

/// The ONNX Runtime library for `model_dir`: `$ORT_DYLIB_PATH` when set, else `<model_dir>/libonnxruntime.so`.
pub fn runtime_library(model_dir: &Path) -> PathBuf {
    match std::env::var_os("ORT_DYLIB_PATH") {
        Some(p) if !p.is_empty() => PathBuf::from(p),
        _ => model_dir.join(ONNXRUNTIME_LIBRARY),
    }
}

/// Loads the library once per process. Never calls another `ort` API before the library is loaded: those panic
/// when it is missing, this returns an error naming the file.
fn environment(library: &Path) -> Result<Environment, EmbedError> {
    if let Some(env) = ENVIRONMENT.get() {
        return Ok(env.clone());
    }
    let _guard = ENVIRONMENT_INIT.lock().unwrap_or_else(|p| p.into_inner());
    if let Some(env) = ENVIRONMENT.get() {
        return Ok(env.clone());
    }
    if !library.is_file() {
        return Err(load_error(library, "file not found"));
    }
    let builder = ort::init_from(library).map_err(|e| load_error(library, e))?;
    let env = builder
        .with_name("datastorage")
        .build()
        .map_err(|e| load_error(library, e))?;
    Ok(ENVIRONMENT.get_or_init(|| env).clone())
}

/// One ONNX Runtime session of the exported encoder.
pub(super) struct OnnxEncoder {
    session: Session,
    hidden: usize,
}

impl OnnxEncoder {
    /// `model_file` is `model.onnx` or `model.int8.onnx` in `model_dir`.
    pub(super) fn load(
        model_dir: &Path,
        model_file: &str,
        hidden: usize,
        threads: usize,
    ) -> Result<Self, EmbedError> {
        let model_path = model_dir.join(model_file);
        if !model_path.is_file() {
            return Err(load_error(&model_path, "file not found"));
        }
        // Checked even when this process loaded the library before: the directory is what gets deployed.
        let library = runtime_library(model_dir);
        if !library.is_file() {
            return Err(load_error(&library, "file not found"));
        }
        let env = environment(&library)?;
        let fail = |e: &dyn std::fmt::Display| load_error(&model_path, e);
        // One inference at a time (the worker thread), `threads` for each operator, no busy-waiting between
        // operators: the cores are shared with PostgreSQL and the API server.
        let session = Session::builder(&env)
            .map_err(|e| fail(&e))?
            .with_optimization_level(GraphOptimizationLevel::All)
            .map_err(|e| fail(&e))?
            .with_intra_threads(threads)
            .map_err(|e| fail(&e))?
            .with_inter_threads(1)
            .map_err(|e| fail(&e))?
            .with_parallel_execution(false)
            .map_err(|e| fail(&e))?
            .with_intra_op_spinning(false)
            .map_err(|e| fail(&e))?
            .with_inter_op_spinning(false)
            .map_err(|e| fail(&e))?
            .commit_from_file(&model_path)
            .map_err(|e| fail(&e))?;
        let names: Vec<&str> = session.inputs().iter().map(|i| i.name()).collect();
        if names != ["input_ids", "attention_mask"] {
            return Err(fail(&format!(
                "expected the inputs input_ids, attention_mask (hack/onnx-export.py), found {names:?}"
            )));
        }
        Ok(Self { session, hidden })
    }

    /// The last hidden state, `[b, seq, hidden]` row-major.
    pub(super) fn forward(&mut self, batch: &Batch) -> Result<Vec<f32>, EmbedError> {
        let (b, seq) = (batch.rows, batch.seq);
        let err = |e: ort::Error| EmbedError::Inference(format!("onnxruntime: {e}"));
        let ids = Tensor::from_array(([b, seq], batch.ids.clone())).map_err(err)?;
        let mask = Tensor::from_array(([b, seq], batch.mask.clone())).map_err(err)?;
        let outputs = self.session.run(ort::inputs![ids, mask]).map_err(err)?;
        let (shape, data) = outputs[0].try_extract_tensor::<f32>().map_err(err)?;
        let expected = [b as i64, seq as i64, self.hidden as i64];
        if **shape != expected {
            return Err(EmbedError::Inference(format!(
                "onnxruntime returned shape {shape:?}, expected {expected:?}"
            )));
        }
        Ok(data.to_vec())
    }
}
