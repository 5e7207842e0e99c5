"""Tiny random llama-family modules (built directly, no checkpoint) for shape and equivalence tests."""
from __future__ import annotations

import numpy as np

from frontends.llama import LlamaConfig, build_llama, hf_tensor_shapes
from qir.weights import WeightStore

VOCAB = 64


def tiny_llama(hidden=48, heads=4, kv_heads=2, head_dim=None, intermediate=80, layers=2, tie=False, bias=False,
               seq_len=16, seed=0, mlp_bias=None, outlier=1.0, spread=0.15, rms_eps=1e-5, name="tiny_llama"):
    """Norm weights around 1 (spread 0.3), channel 5 of each times `outlier` (the kind of channel
    smoothing and learned transformations are for); matrices N(0, spread)."""
    cfg = LlamaConfig(vocab_size=VOCAB, hidden_size=hidden, intermediate_size=intermediate, num_layers=layers,
                      num_heads=heads, num_kv_heads=kv_heads, head_dim=head_dim or hidden // heads,
                      tie_embeddings=tie, qkv_bias=bias, o_bias=bias, mlp_bias=bias if mlp_bias is None else mlp_bias,
                      rms_eps=rms_eps)
    rng = np.random.default_rng(seed)
    weights = WeightStore()
    for tensor, shape in hf_tensor_shapes(cfg).items():
        if "norm" in tensor:
            data = 1 + 0.3 * rng.standard_normal(shape)
            data[5] *= outlier
        else:
            data = rng.normal(0, spread, shape)
        weights.set(tensor, data.astype(np.float32))
    return build_llama(cfg, weights, seq_len, **({"name": name} if name else {}))


def tokens(count: int, seq_len: int = 16, seed: int = 0) -> list[tuple[np.ndarray]]:
    rng = np.random.default_rng(seed)
    return [(rng.integers(0, VOCAB, (1, seq_len)).astype(np.int32),) for _ in range(count)]
