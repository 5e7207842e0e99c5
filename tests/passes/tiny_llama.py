"""Tiny random llama-family modules (built directly, no checkpoint) for shape and equivalence tests."""
from __future__ import annotations

import numpy as np

from frontends.llama import LlamaConfig, build_llama, hf_tensor_shapes
from qir.weights import WeightStore

VOCAB = 64


def tiny_llama(hidden=48, heads=4, kv_heads=2, head_dim=None, intermediate=80, layers=2, tie=False, bias=False,
               seq_len=16, seed=0):
    """Norm weights around 1 (spread 0.3), matrices N(0, 0.15)."""
    cfg = LlamaConfig(vocab_size=VOCAB, hidden_size=hidden, intermediate_size=intermediate, num_layers=layers,
                      num_heads=heads, num_kv_heads=kv_heads, head_dim=head_dim or hidden // heads,
                      tie_embeddings=tie, qkv_bias=bias, o_bias=bias, mlp_bias=bias, rms_eps=1e-5)
    rng = np.random.default_rng(seed)
    weights = WeightStore()
    for name, shape in hf_tensor_shapes(cfg).items():
        data = 1 + 0.3 * rng.standard_normal(shape) if "norm" in name else rng.normal(0, 0.15, shape)
        weights.set(name, data.astype(np.float32))
    return build_llama(cfg, weights, seq_len, name="tiny_llama")


def tokens(count: int, seq_len: int = 16, seed: int = 0) -> list[tuple[np.ndarray]]:
    rng = np.random.default_rng(seed)
    return [(rng.integers(0, VOCAB, (1, seq_len)).astype(np.int32),) for _ in range(count)]
