"""The llama family (Llama, SmolLM2, Qwen2, ...) as one IR graph: tokens -> logits.

`build_llama` takes a `LlamaConfig` and weights keyed by Hugging Face tensor names; the Hugging
Face and GGUF frontends both feed it. Attention is written with plain ops an NPU runs: rotary
tables and the causal mask are constants, grouped-query attention is a reshape (no K/V copies),
and masking is a select with a finite value so every tensor stays quantizable."""
from __future__ import annotations

import json
import math
import re
import struct
from dataclasses import asdict, dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np

from qir import Builder, LoadedModel, Module, QirError
from qir.weights import SafetensorsEntry, WeightStore

# What a masked attention score becomes. Finite, so the mask and scores get a usable quantization
# range (-inf gives an infinite scale); exp(-1e4 - max) is exactly 0 in float32 all the same.
MASK_VALUE = -1e4

ACTIVATIONS = {"silu": "silu", "swish": "silu", "relu": "relu"}
ROPE_TYPES_SUPPORTED = ("default",)  # plain RoPE; scaled variants change the frequency tables


@dataclass(frozen=True)
class LlamaConfig:
    """The shape of a llama-family decoder. `activation` gates the MLP: down(act(gate(x)) * up(x))."""

    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    rms_eps: float = 1e-6
    rope_theta: float = 10000.0
    tie_embeddings: bool = False
    qkv_bias: bool = False  # Qwen2 has biases on q/k/v only
    o_bias: bool = False  # Llama's attention_bias adds one to o_proj as well
    mlp_bias: bool = False
    activation: str = "silu"  # "silu" (SwiGLU) or "relu" (ReLU-gated)
    rope_layout: str = "half"  # "half" (Hugging Face rows) or "interleaved" (llama.cpp rows)
    max_positions: int | None = None
    architecture: str = "llama"

    def __post_init__(self):
        for field in ("vocab_size", "hidden_size", "intermediate_size", "num_layers", "num_heads",
                      "num_kv_heads", "head_dim"):
            value = getattr(self, field)
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                raise QirError(f"llama config: {field} must be a positive integer, got {value!r}")
        if self.num_heads % self.num_kv_heads:
            raise QirError(f"llama config: {self.num_heads} attention heads cannot be shared evenly by "
                           f"{self.num_kv_heads} key/value heads")
        if self.head_dim % 2:
            raise QirError(f"llama config: head_dim {self.head_dim} must be even for rotary embeddings")
        if self.activation not in ("silu", "relu"):
            raise QirError(f"llama config: activation {self.activation!r} is not supported; supported: silu, relu")
        if self.rope_layout not in ("half", "interleaved"):
            raise QirError(f"llama config: rope_layout {self.rope_layout!r} must be 'half' or 'interleaved'")

    @property
    def group_size(self) -> int:
        """Query heads served by each key/value head."""
        return self.num_heads // self.num_kv_heads

    @classmethod
    def from_hf(cls, config: dict) -> "LlamaConfig":
        """Read a Hugging Face config.json (model_type llama or qwen2); reject what the graph
        would silently get wrong."""
        model_type = config.get("model_type", "llama")
        if model_type not in ("llama", "qwen2"):
            raise QirError(f"the llama family builder does not handle model_type '{model_type}'; "
                           f"supported: llama, qwen2")

        def need(key):
            if config.get(key) is None:
                raise QirError(f"config.json has no '{key}' (needed for a {model_type} model)")
            return config[key]

        hidden, heads = need("hidden_size"), need("num_attention_heads")
        act = config.get("hidden_act", "silu")
        if act not in ACTIVATIONS:
            raise QirError(f"config.json: hidden_act '{act}' is not supported; supported: {', '.join(ACTIVATIONS)}")
        theta = rope_theta_of(config)
        if config.get("use_sliding_window"):
            raise QirError("config.json: sliding-window attention (use_sliding_window) is not supported")
        partial = config.get("partial_rotary_factor", 1.0)
        if partial not in (None, 1, 1.0):
            raise QirError(f"config.json: partial_rotary_factor {partial} is not supported (only full rotary)")
        if model_type == "qwen2":
            qkv_bias, o_bias, mlp_bias = True, False, False
        else:
            qkv_bias = o_bias = bool(config.get("attention_bias", False))
            mlp_bias = bool(config.get("mlp_bias", False))
        head_dim = config.get("head_dim") or (hidden // heads if heads and hidden % heads == 0 else None)
        if head_dim is None:
            raise QirError(f"config.json: hidden_size {hidden} is not divisible by num_attention_heads {heads} "
                           f"and no head_dim is given")
        return cls(
            vocab_size=need("vocab_size"), hidden_size=hidden, intermediate_size=need("intermediate_size"),
            num_layers=need("num_hidden_layers"), num_heads=heads,
            num_kv_heads=config.get("num_key_value_heads") or heads, head_dim=head_dim,
            rms_eps=float(config.get("rms_norm_eps", 1e-6)), rope_theta=theta,
            tie_embeddings=bool(config.get("tie_word_embeddings", False)),
            qkv_bias=qkv_bias, o_bias=o_bias, mlp_bias=mlp_bias, activation=ACTIVATIONS[act],
            max_positions=config.get("max_position_embeddings"), architecture=model_type,
        )


def rope_theta_of(config: dict) -> float:
    """The RoPE base from a config in either the transformers 5 form (`rope_parameters`) or the
    older one (`rope_theta` + `rope_scaling`); scaled RoPE variants are refused by name."""
    params = config.get("rope_parameters") or {}
    scaling = config.get("rope_scaling") or {}
    for source in (params, scaling):
        rope_type = source.get("rope_type", source.get("type", "default"))
        if rope_type not in ROPE_TYPES_SUPPORTED:
            raise QirError(f"config.json: rope scaling type '{rope_type}' is not supported; "
                           f"supported: none, {', '.join(ROPE_TYPES_SUPPORTED)}")
    return float(params.get("rope_theta", config.get("rope_theta", 10000.0)))


# -- weights: names and shapes ------------------------------------------------------------------

def hf_tensor_shapes(config: LlamaConfig) -> dict[str, tuple[int, ...]]:
    """Every tensor the graph reads, by Hugging Face name, with the shape the config implies."""
    h, d, inter = config.hidden_size, config.head_dim, config.intermediate_size
    q_rows, kv_rows = config.num_heads * d, config.num_kv_heads * d
    shapes = {"model.embed_tokens.weight": (config.vocab_size, h)}
    for i in range(config.num_layers):
        p = f"model.layers.{i}."
        shapes[p + "input_layernorm.weight"] = (h,)
        for proj, rows in (("q_proj", q_rows), ("k_proj", kv_rows), ("v_proj", kv_rows)):
            shapes[f"{p}self_attn.{proj}.weight"] = (rows, h)
            if config.qkv_bias:
                shapes[f"{p}self_attn.{proj}.bias"] = (rows,)
        shapes[p + "self_attn.o_proj.weight"] = (h, q_rows)
        if config.o_bias:
            shapes[p + "self_attn.o_proj.bias"] = (h,)
        shapes[p + "post_attention_layernorm.weight"] = (h,)
        for proj, shape in (("gate_proj", (inter, h)), ("up_proj", (inter, h)), ("down_proj", (h, inter))):
            shapes[f"{p}mlp.{proj}.weight"] = shape
            if config.mlp_bias:
                shapes[f"{p}mlp.{proj}.bias"] = shape[:1]
    shapes["model.norm.weight"] = (h,)
    if not config.tie_embeddings:
        shapes["lm_head.weight"] = (config.vocab_size, h)
    return shapes


SAFETENSORS_DTYPES = {"F32": "f32", "F16": "f16", "BF16": "bf16", "F64": "f64"}


@lru_cache(maxsize=64)
def _safetensors_header(path: str, mtime_ns: int, size: int) -> dict:
    with open(path, "rb") as f:
        (length,) = struct.unpack("<Q", f.read(8))
        if length > size - 8:
            raise QirError(f"{path} is truncated: its header claims {length} bytes")
        return json.loads(f.read(length))


def lazy_shape_dtype(source) -> tuple[tuple[int, ...], str]:
    """Shape and IR dtype of a weight source without reading its data where the source allows:
    arrays and sources with `.shape`/`.dtype` attributes answer directly, safetensors entries from
    the file header; any other callable is read once."""
    if isinstance(source, SafetensorsEntry):
        stat = source.path.stat()
        try:
            entry = _safetensors_header(str(source.path), stat.st_mtime_ns, stat.st_size)[source.key]
        except (KeyError, ValueError, struct.error) as exc:
            raise QirError(f"cannot read the header of {source.path}: {exc}") from None
        dtype = SAFETENSORS_DTYPES.get(entry["dtype"])
        if dtype is None:
            raise QirError(f"tensor '{source.key}' in {source.path} has dtype {entry['dtype']}; "
                           f"supported: {', '.join(SAFETENSORS_DTYPES)}")
        return tuple(entry["shape"]), dtype
    if hasattr(source, "shape") and hasattr(source, "dtype"):
        from qir.types import dtype_name
        return tuple(source.shape), dtype_name(source.dtype)
    array = np.asarray(source() if callable(source) else source)
    from qir.types import dtype_name
    return tuple(array.shape), dtype_name(array.dtype)


def check_weights(config: LlamaConfig, weights: WeightStore) -> dict[str, tuple[tuple[int, ...], str]]:
    """Shape and dtype of every tensor the graph needs; QirError on a missing or misshapen one."""
    expected = hf_tensor_shapes(config)
    missing = [name for name in expected if not weights.has(name)]
    if missing:
        more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
        raise QirError(f"the weights have no tensor '{missing[0]}'{more}, which a {config.architecture} model "
                       f"with this config needs")
    found = {}
    for name, shape in expected.items():
        actual, dtype = lazy_shape_dtype(weights.source(name))
        if actual != shape:
            raise QirError(f"tensor '{name}' has shape {list(actual)}, but the config implies {list(shape)}")
        if dtype not in ("f32", "f16", "bf16", "f64"):
            raise QirError(f"tensor '{name}' has dtype {dtype}; a float checkpoint is expected")
        found[name] = (actual, dtype)
    return found


def permute_for_interleaved_rope(w: np.ndarray, heads: int) -> np.ndarray:
    """Reorder q/k projection rows (or biases) of each head from the Hugging Face layout, where
    dimension i pairs with i + D/2, to the interleaved one, where 2i pairs with 2i + 1 (what
    llama.cpp's converter writes to GGUF)."""
    d = w.shape[0] // heads
    return w.reshape(heads, 2, d // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def unpermute_from_interleaved_rope(w: np.ndarray, heads: int) -> np.ndarray:
    """Inverse of `permute_for_interleaved_rope`: llama.cpp rows back to the Hugging Face layout."""
    d = w.shape[0] // heads
    return w.reshape(heads, d // 2, 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


# -- the graph ------------------------------------------------------------------------------------

def rope_tables(config: LlamaConfig, seq_len: int) -> tuple[np.ndarray, np.ndarray]:
    """cos/sin [L, head_dim], each frequency twice, in the layout of `config.rope_layout`."""
    d = config.head_dim
    inv_freq = 1.0 / (config.rope_theta ** (np.arange(0, d, 2, dtype=np.float64) / d))
    angles = np.arange(seq_len, dtype=np.float64)[:, None] * inv_freq[None, :]  # [L, D/2]
    if config.rope_layout == "half":
        angles = np.concatenate([angles, angles], axis=-1)
    else:
        angles = np.repeat(angles, 2, axis=-1)
    return np.cos(angles).astype(np.float32), np.sin(angles).astype(np.float32)


def causal_mask(config: LlamaConfig, seq_len: int) -> np.ndarray:
    """[group * L, L]: row r is query position r % L (queries of one KV group are stacked)."""
    query_pos = np.tile(np.arange(seq_len), config.group_size)
    return np.arange(seq_len)[None, :] <= query_pos[:, None]


def gguf_style_names(config: LlamaConfig) -> dict[str, str]:
    """Hugging Face tensor name -> short constant name (llama.cpp's vocabulary, '.bias' for biases)."""
    names = {"model.embed_tokens.weight": "token_embd", "model.norm.weight": "output_norm",
             "lm_head.weight": "output"}
    short = {"input_layernorm": "attn_norm", "self_attn.q_proj": "attn_q", "self_attn.k_proj": "attn_k",
             "self_attn.v_proj": "attn_v", "self_attn.o_proj": "attn_output",
             "post_attention_layernorm": "ffn_norm", "mlp.gate_proj": "ffn_gate", "mlp.up_proj": "ffn_up",
             "mlp.down_proj": "ffn_down"}
    for i in range(config.num_layers):
        for hf, name in short.items():
            names[f"model.layers.{i}.{hf}.weight"] = f"blk.{i}.{name}"
            names[f"model.layers.{i}.{hf}.bias"] = f"blk.{i}.{name}.bias"
    return names


def build_llama(config: LlamaConfig, weights: WeightStore, seq_len: int, name: str = "llama") -> Module:
    """One function `@prefill(%tokens: i32[1,L]) -> f32[1,L,V]`. Weights stay lazy: the module's
    store refers to the same sources as `weights`, under short names."""
    if not isinstance(seq_len, int) or seq_len <= 0:
        raise QirError(f"seq_len must be a positive integer, got {seq_len!r}")
    if config.max_positions is not None and seq_len > config.max_positions:
        raise QirError(f"seq_len {seq_len} is longer than the {config.max_positions} positions this model "
                       f"was trained for")
    found = check_weights(config, weights)
    module = Module(sanitize_name(name), attrs={"kind": "causal-lm", "architecture": config.architecture})
    b = Builder.new_function(module, "prefill")
    short = gguf_style_names(config)

    def weight(hf_name: str):
        shape, dtype = found[hf_name]
        return b.const(short[hf_name], weights.source(hf_name), shape=shape, dtype=dtype)

    def linear(x, hf_prefix: str, has_bias: bool, out: str):
        operands = [x, weight(hf_prefix + ".weight")]
        if has_bias:
            operands.append(weight(hf_prefix + ".bias"))
        return b.linear(*operands, name=out)

    L, H, KV, D, G = seq_len, config.num_heads, config.num_kv_heads, config.head_dim, config.group_size
    cos_table, sin_table = rope_tables(config, L)
    cos = b.const("rope_cos", cos_table)
    sin = b.const("rope_sin", sin_table)
    mask = b.const("causal_mask", causal_mask(config, L))
    scale = b.const("attn_scale", np.float32(1.0 / math.sqrt(D)))

    tokens = b.arg("tokens", (1, L), "i32")
    x = b.gather(weight("model.embed_tokens.weight"), tokens, axis=0, name="embd")
    if x.type.dtype != "f32":  # half-precision checkpoints: the residual stream is computed in f32
        x = b.cast(x, dtype="f32", name="embd_f32")

    for i in range(config.num_layers):
        p, v = f"model.layers.{i}.", f"blk{i}."
        n = b.rms_norm(x, weight(p + "input_layernorm.weight"), eps=config.rms_eps, name=v + "attn_norm")
        q = linear(n, p + "self_attn.q_proj", config.qkv_bias, v + "q")
        k = linear(n, p + "self_attn.k_proj", config.qkv_bias, v + "k")
        val = linear(n, p + "self_attn.v_proj", config.qkv_bias, v + "v")

        # [1, L, heads*D] -> [1, heads, L, D]
        q = b.transpose(b.reshape(q, shape=[1, L, H, D], name=v + "q_split"), perm=[0, 2, 1, 3], name=v + "q_heads")
        k = b.transpose(b.reshape(k, shape=[1, L, KV, D], name=v + "k_split"), perm=[0, 2, 1, 3], name=v + "k_heads")
        val = b.transpose(b.reshape(val, shape=[1, L, KV, D], name=v + "v_split"), perm=[0, 2, 1, 3],
                          name=v + "v_heads")
        q = b.rope(q, cos, sin, layout=config.rope_layout, name=v + "q_rope")
        k = b.rope(k, cos, sin, layout=config.rope_layout, name=v + "k_rope")
        # Grouped-query attention without copying K/V: the G query heads of a KV head are
        # consecutive, so [1, H, L, D] reads as [1, KV, G*L, D] and one batched matmul per KV head
        # serves its whole group.
        q = b.reshape(q, shape=[1, KV, G * L, D], name=v + "q_groups")
        scores = b.matmul(q, k, transpose_b=True, name=v + "scores")
        scores = b.mul(scores, scale, name=v + "scores_scaled")
        scores = b.masked_fill(scores, mask, value=MASK_VALUE, name=v + "scores_masked")
        probs = b.softmax(scores, axis=-1, name=v + "probs")
        ctx = b.matmul(probs, val, name=v + "context")  # [1, KV, G*L, D]
        ctx = b.reshape(ctx, shape=[1, H, L, D], name=v + "context_heads")
        ctx = b.transpose(ctx, perm=[0, 2, 1, 3], name=v + "context_seq")
        ctx = b.reshape(ctx, shape=[1, L, H * D], name=v + "context_flat")
        attn = linear(ctx, p + "self_attn.o_proj", config.o_bias, v + "attn_out")
        x = b.add(x, attn, name=v + "attn_resid")

        n = b.rms_norm(x, weight(p + "post_attention_layernorm.weight"), eps=config.rms_eps, name=v + "ffn_norm")
        gate = linear(n, p + "mlp.gate_proj", config.mlp_bias, v + "gate")
        gate = getattr(b, config.activation)(gate, name=v + "gate_act")
        up = linear(n, p + "mlp.up_proj", config.mlp_bias, v + "up")
        hidden = b.mul(gate, up, name=v + "ffn_hidden")
        down = linear(hidden, p + "mlp.down_proj", config.mlp_bias, v + "ffn_out")
        x = b.add(x, down, name=v + "out")

    x = b.rms_norm(x, weight("model.norm.weight"), eps=config.rms_eps, name="output_norm")
    head = "model.embed_tokens.weight" if config.tie_embeddings else "lm_head.weight"
    b.ret(b.linear(x, weight(head), name="logits"))
    return module


def sanitize_name(name: str) -> str:
    """A module name the IR text accepts."""
    return re.sub(r"[^A-Za-z0-9_.$-]", "_", name) or "llama"


# -- the LoadedModel ------------------------------------------------------------------------------

def tokenizer_adds_bos(tokenizer, bos_token_id) -> bool:
    """Whether the tokenizer puts BOS in front of a text by itself (its post-processor does)."""
    if tokenizer is None or bos_token_id is None:
        return False
    ids = tokenizer.encode("a", add_special_tokens=True).ids
    return bool(ids) and ids[0] == bos_token_id


def loaded_llama(config: LlamaConfig, weights: WeightStore, seq_len: int, tokenizer, name: str,
                 bos_token_id: int | None, add_bos: bool, eos_token_id=None,
                 extra_info: dict | None = None) -> LoadedModel:
    """The module plus what evaluating it needs; BOS facts also go into the module's attributes,
    so a saved .qir file evaluates the same way."""
    module = build_llama(config, weights, seq_len, name)
    if bos_token_id is not None:
        module.attrs.update({"bos_token_id": int(bos_token_id), "add_bos": bool(add_bos)})
    info = {"architecture": config.architecture, "layers": config.num_layers, "hidden": config.hidden_size,
            "intermediate": config.intermediate_size, "heads": config.num_heads, "kv_heads": config.num_kv_heads,
            "head_dim": config.head_dim, "vocab": config.vocab_size, "rope_theta": config.rope_theta,
            "rms_eps": config.rms_eps, "activation": config.activation,
            "tied_embeddings": config.tie_embeddings, "bos_token_id": bos_token_id, "add_bos": bool(add_bos),
            "eos_token_id": eos_token_id, "config": asdict(config)}
    info.update(extra_info or {})
    return LoadedModel(module, "causal-lm", tokenizer, info)


def from_hf_config(config: dict, weights: WeightStore, seq_len: int, tokenizer) -> LoadedModel:
    """The Hugging Face folder entry point (model_type llama and qwen2)."""
    if "tie_word_embeddings" not in config:  # older configs leave it out: the checkpoint decides
        config = dict(config, tie_word_embeddings=not weights.has("lm_head.weight"))
    llama = LlamaConfig.from_hf(config)
    bos = config.get("bos_token_id")
    name = Path(str(config.get("_name_or_path") or "")).name or llama.architecture
    return loaded_llama(llama, weights, seq_len, tokenizer, name, bos, tokenizer_adds_bos(tokenizer, bos),
                        config.get("eos_token_id"))
