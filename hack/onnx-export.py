"""Export all-MiniLM-L6-v2 to ONNX for datastorage's ONNX Runtime backend (run by hack/python-deps.sh).

    python hack/onnx-export.py MODEL_DIR OUT_DIR

Writes into OUT_DIR (a fresh directory the caller renames into place when this succeeds):
  model.onnx       fp32, exported by torch from MODEL_DIR/model.safetensors, then fused with
                   onnxruntime.transformers.optimizer into EmbedLayerNormalization + Attention + BiasGelu +
                   SkipLayerNormalization kernels. Inputs: input_ids, attention_mask (int64, [batch, seq]);
                   output: last_hidden_state ([batch, seq, 384], before pooling: datastorage mean-pools over the
                   attention mask and L2-normalises itself, exactly as for its candle backend).
  model.int8.onnx  the same graph with dynamic int8 quantization of the weights, per output channel (per-tensor int8
                   drops the cosine to the fp32 vectors to ~0.955; per-channel keeps it >= 0.99).
  export.json      the versions of everything that produced the files, and the fused graph's operators.

Why the TorchScript exporter (dynamo=False): with torch 2.15 the dynamo exporter's graph is not recognised by the
optimizer's attention fusion (it keeps separate Q/K/V MatMuls, Softmax and Where nodes); the TorchScript graph fuses
completely. Both give vectors at cosine >= 0.9999999 to sentence-transformers (measured here).
"""
import json
import os
import sys
import warnings

import torch

# Two cores shared with PostgreSQL and the API server: the export need not be fast.
torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))
warnings.filterwarnings("ignore")


class Encoder(torch.nn.Module):
    """BertModel's last hidden state with token_type_ids fixed at 0 (as datastorage runs it)."""

    def __init__(self, bert):
        super().__init__()
        self.bert = bert

    def forward(self, input_ids, attention_mask):
        return self.bert(
            input_ids=input_ids,
            attention_mask=attention_mask,
            token_type_ids=torch.zeros_like(input_ids),
        ).last_hidden_state


def main() -> None:
    model_dir, out_dir = sys.argv[1], sys.argv[2]
    import onnx
    import onnxruntime
    import onnxscript
    import transformers
    from onnxruntime.quantization import QuantType, quantize_dynamic
    from onnxruntime.transformers.optimizer import optimize_model

    # "eager" attention: the plain matmul-softmax-matmul pattern the optimizer fuses into one Attention kernel.
    bert = transformers.AutoModel.from_pretrained(
        model_dir, dtype=torch.float32, attn_implementation="eager"
    )
    encoder = Encoder(bert).eval()
    ids = torch.tensor([[101, 2000, 3000, 4000, 102], [101, 2001, 102, 0, 0]], dtype=torch.int64)
    mask = (ids != 0).to(torch.int64)
    raw = os.path.join(out_dir, "raw.onnx")
    axes = {0: "batch", 1: "seq"}
    with torch.no_grad():
        torch.onnx.export(
            encoder,
            (ids, mask),
            raw,
            input_names=["input_ids", "attention_mask"],
            output_names=["last_hidden_state"],
            dynamic_axes={"input_ids": axes, "attention_mask": axes, "last_hidden_state": axes},
            opset_version=17,
            dynamo=False,
        )
    cfg = bert.config
    fused = optimize_model(
        raw,
        model_type="bert",
        num_heads=cfg.num_attention_heads,
        hidden_size=cfg.hidden_size,
        opt_level=0,
    )
    fp32 = os.path.join(out_dir, "model.onnx")
    fused.save_model_to_file(fp32)
    os.remove(raw)
    ops = sorted({n.op_type for n in onnx.load(fp32).graph.node})
    if "Attention" not in ops:
        sys.exit(f"onnx-export: the optimizer did not fuse attention (ops: {ops})")
    int8 = os.path.join(out_dir, "model.int8.onnx")
    # The fused contrib operators have no ONNX shape inference; their outputs are fp32.
    quantize_dynamic(
        fp32,
        int8,
        per_channel=True,
        weight_type=QuantType.QInt8,
        extra_options={"DefaultTensorType": onnx.TensorProto.FLOAT},
    )
    with open(os.path.join(out_dir, "export.json"), "w") as f:
        json.dump(
            {
                "torch": torch.__version__,
                "transformers": transformers.__version__,
                "onnx": onnx.__version__,
                "onnxscript": onnxscript.__version__,
                "onnxruntime": onnxruntime.__version__,
                "fp32_ops": ops,
                "int8_ops": sorted({n.op_type for n in onnx.load(int8).graph.node}),
            },
            f,
            indent=2,
        )
    print(f"onnx-export: wrote {fp32} and {int8}", file=sys.stderr)


if __name__ == "__main__":
    main()
