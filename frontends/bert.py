"""BERT-family encoders (BERT, MiniLM, sentence-transformers checkpoints) -> IR.

One function:

    @encode(%input_ids: i32[1,L], %attention_mask: i32[1,L]) -> (f32[1,L,H], f32[1,H])

returning the last hidden state and the masked mean of it over the real tokens (the sentence
embedding of sentence-transformers' mean pooling, not normalised). Token type is always 0.
Sequences are padded on the right to the static length L; the mask hides the padding from
attention and from the pooling."""
from __future__ import annotations

import json
import math
import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from qir import Builder, LoadedModel, Module, QirError, verify
from qir.types import FLOAT_DTYPES, dtype_name
from qir.weights import SafetensorsEntry, WeightStore

# A finite fill for masked attention scores: exp(-1e4 - max) is exactly 0 in f32, and unlike
# -inf it leaves the scores tensor with a range that quantizes.
MASK_FILL = -1e4

ACTIVATIONS = {"gelu": "none", "gelu_new": "tanh", "gelu_pytorch_tanh": "tanh", "relu": None}
SAFETENSORS_DTYPES = {"F64": "f64", "F32": "f32", "F16": "f16", "BF16": "bf16"}
# Checkpoints of task heads (BertForMaskedLM, ...) nest the encoder under a prefix
PREFIXES = ("", "bert.", "model.")


@dataclass(frozen=True)
class BertSettings:
    hidden: int
    layers: int
    heads: int
    intermediate: int
    vocab: int
    positions: int
    token_types: int
    eps: float
    activation: str
    pad_token_id: int

    @property
    def head_dim(self) -> int:
        return self.hidden // self.heads


def read_config(config: dict, seq_len: int) -> BertSettings:
    """The settings the graph depends on, checked; anything the graph would get wrong is an error."""
    def required(key):
        value = config.get(key)
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise QirError(f"config.json: '{key}' must be a positive integer, got {value!r}")
        return value

    hidden, heads = required("hidden_size"), required("num_attention_heads")
    if hidden % heads:
        raise QirError(f"config.json: hidden_size {hidden} is not divisible by num_attention_heads {heads}")
    position_type = config.get("position_embedding_type", "absolute")
    if position_type != "absolute":
        raise QirError(f"config.json: position_embedding_type '{position_type}' is not supported "
                       f"(only 'absolute')")
    if config.get("is_decoder"):
        raise QirError("config.json: is_decoder = true (a causal BERT) is not supported; only encoders")
    activation = config.get("hidden_act", "gelu")
    if activation not in ACTIVATIONS:
        raise QirError(f"config.json: hidden_act '{activation}' is not supported "
                       f"(supported: {', '.join(ACTIVATIONS)})")
    positions = required("max_position_embeddings")
    if not isinstance(seq_len, int) or not 1 <= seq_len <= positions:
        raise QirError(f"seq_len {seq_len} is not supported: this model has max_position_embeddings = "
                       f"{positions}, so seq_len must be 1..{positions}")
    pad = config.get("pad_token_id")
    return BertSettings(
        hidden=hidden, layers=required("num_hidden_layers"), heads=heads,
        intermediate=required("intermediate_size"), vocab=required("vocab_size"), positions=positions,
        token_types=required("type_vocab_size"), eps=float(config.get("layer_norm_eps", 1e-12)),
        activation=activation, pad_token_id=0 if pad is None else int(pad))


def _safetensors_header(path: Path) -> dict:
    """The JSON header of a .safetensors file: name -> {dtype, shape, data_offsets}; no data is read."""
    try:
        with open(path, "rb") as f:
            (length,) = struct.unpack("<Q", f.read(8))
            return json.loads(f.read(length))
    except (OSError, struct.error, ValueError) as exc:
        raise QirError(f"cannot read the header of {path}: {exc}") from None


class Checkpoint:
    """Looks tensors up by their Hugging Face name and checks their shapes against config.json
    from the file headers, so nothing is loaded while the graph is built."""

    def __init__(self, weights: WeightStore):
        self.weights = weights
        self._headers: dict[Path, dict] = {}
        anchor = "embeddings.word_embeddings.weight"
        self.prefix = next((p for p in PREFIXES if weights.has(p + anchor)), "")

    def source(self, key: str):
        name = self.prefix + key
        if not self.weights.has(name):
            raise QirError(f"the checkpoint has no tensor '{name}' (needed by the BERT graph)")
        return self.weights.source(name)

    def shape_and_dtype(self, key: str) -> tuple[tuple[int, ...], str]:
        source = self.source(key)
        if isinstance(source, SafetensorsEntry):
            if source.path not in self._headers:
                self._headers[source.path] = _safetensors_header(source.path)
            entry = self._headers[source.path].get(source.key)
            if entry is None:
                raise QirError(f"the checkpoint has no tensor '{source.key}' in {source.path}")
            shape, dtype = tuple(entry["shape"]), SAFETENSORS_DTYPES.get(entry["dtype"], entry["dtype"])
        else:  # an array, or a callable that has to be evaluated to know its shape
            array = _evaluate(source)
            shape, dtype = tuple(array.shape), str(array.dtype)
            if dtype in ("float64", "float32", "float16", "bfloat16"):
                dtype = dtype_name(array.dtype)
        if dtype not in FLOAT_DTYPES:
            raise QirError(f"tensor '{self.prefix + key}' has dtype {dtype}; BERT weights must be floating point")
        return shape, dtype

    def tensor(self, key: str, expected: tuple[int, ...], why: str):
        """The lazy source and dtype of `key`, after checking its shape is `expected` (`why` names
        the config.json settings the expectation comes from)."""
        shape, dtype = self.shape_and_dtype(key)
        if shape != tuple(expected):
            raise QirError(f"tensor '{self.prefix + key}' has shape {list(shape)}, but config.json implies "
                           f"{list(expected)} ({why})")
        return self.source(key), dtype


def _evaluate(source) -> np.ndarray:
    return np.asarray(source() if callable(source) else source)


class EncoderBuilder:
    """Emits the ops of @encode; constants get short names (`blk.0.attn_q`), values readable ones
    (`blk0.scores`)."""

    def __init__(self, module: Module, cfg: BertSettings, ckpt: Checkpoint, seq_len: int):
        self.b = Builder.new_function(module, "encode")
        self.cfg, self.ckpt, self.L = cfg, ckpt, seq_len

    def weight(self, name: str, key: str, expected, why: str):
        source, dtype = self.ckpt.tensor(key, expected, why)
        return self.b.const(name, source, shape=expected, dtype=dtype)

    def linear(self, x, name: str, key: str, n_out: int, n_in: int, why: str, value_name: str):
        w = self.weight(name, f"{key}.weight", (n_out, n_in), why)
        bias = self.weight(f"{name}.bias", f"{key}.bias", (n_out,), why.split(" x ")[0])
        return self.b.linear(x, w, bias, name=value_name)

    def layer_norm(self, x, name: str, key: str, value_name: str):
        H = self.cfg.hidden
        w = self.weight(name, f"{key}.weight", (H,), "hidden_size")
        bias = self.weight(f"{name}.bias", f"{key}.bias", (H,), "hidden_size")
        return self.b.layer_norm(x, w, bias, eps=self.cfg.eps, name=value_name)

    def embeddings(self, input_ids):
        b, cfg, L, H = self.b, self.cfg, self.L, self.cfg.hidden
        words = b.gather(self.weight("word_embd", "embeddings.word_embeddings.weight", (cfg.vocab, H),
                                     "vocab_size x hidden_size"), input_ids, axis=0, name="embd.words")
        if words.type.dtype != "f32":
            words = b.cast(words, dtype="f32", name="embd.words.f32")
        # Position ids are 0..L-1 and the token type is 0 for every token: both lookups are
        # constant rows, cut from the tables when the data is first read.
        pos_src, pos_dtype = self.ckpt.tensor("embeddings.position_embeddings.weight", (cfg.positions, H),
                                              "max_position_embeddings x hidden_size")
        type_src, type_dtype = self.ckpt.tensor("embeddings.token_type_embeddings.weight", (cfg.token_types, H),
                                                "type_vocab_size x hidden_size")
        positions = b.const("pos_embd", lambda: _evaluate(pos_src)[:L], shape=(L, H), dtype=pos_dtype)
        token_type = b.const("type_embd", lambda: _evaluate(type_src)[0], shape=(H,), dtype=type_dtype)
        x = b.add(words, token_type, name="embd.typed")  # HF's order: (words + type) + positions
        x = b.add(x, positions, name="embd.sum")
        return self.layer_norm(x, "embd_norm", "embeddings.LayerNorm", "embd")

    def split_heads(self, x, name: str):
        cfg, L = self.cfg, self.L
        x = self.b.reshape(x, shape=[1, L, cfg.heads, cfg.head_dim], name=f"{name}.split")
        return self.b.transpose(x, perm=[0, 2, 1, 3], name=f"{name}.heads")

    def layer(self, x, key_mask, i: int):
        b, cfg, L, H, F = self.b, self.cfg, self.L, self.cfg.hidden, self.cfg.intermediate
        key, blk, v = f"encoder.layer.{i}", f"blk.{i}", f"blk{i}"
        hh = "hidden_size x hidden_size"
        def projection(short: str, hf_name: str):
            y = self.linear(x, f"{blk}.attn_{short}", f"{key}.attention.self.{hf_name}", H, H, hh, f"{v}.{short}")
            return self.split_heads(y, f"{v}.{short}")

        q, k, vv = projection("q", "query"), projection("k", "key"), projection("v", "value")
        scores = b.matmul(q, k, transpose_b=True, name=f"{v}.scores")
        scores = b.mul(scores, b.const("attn_scale"), name=f"{v}.scores.scaled")
        scores = b.masked_fill(scores, key_mask, value=MASK_FILL, name=f"{v}.scores.masked")
        probs = b.softmax(scores, axis=-1, name=f"{v}.probs")
        context = b.matmul(probs, vv, name=f"{v}.context.heads")
        context = b.transpose(context, perm=[0, 2, 1, 3], name=f"{v}.context.tokens")
        context = b.reshape(context, shape=[1, L, H], name=f"{v}.context")
        attn = self.linear(context, f"{blk}.attn_out", f"{key}.attention.output.dense", H, H, hh, f"{v}.attn_out")
        x = self.layer_norm(b.add(attn, x, name=f"{v}.attn_res"), f"{blk}.attn_norm",
                            f"{key}.attention.output.LayerNorm", f"{v}.attn_norm")
        up = self.linear(x, f"{blk}.ffn_up", f"{key}.intermediate.dense", F, H,
                         "intermediate_size x hidden_size", f"{v}.ffn_up")
        approximate = ACTIVATIONS[cfg.activation]
        act = (b.relu(up, name=f"{v}.ffn_act") if approximate is None
               else b.gelu(up, approximate=approximate, name=f"{v}.ffn_act"))
        down = self.linear(act, f"{blk}.ffn_down", f"{key}.output.dense", H, F,
                           "hidden_size x intermediate_size", f"{v}.ffn_down")
        return self.layer_norm(b.add(down, x, name=f"{v}.ffn_res"), f"{blk}.ffn_norm",
                               f"{key}.output.LayerNorm", f"{v}.out")

    def mean_pool(self, hidden, attention_mask):
        """The mean of the real tokens' states as one matmul by pooling weights: a softmax over a
        row of zeros with the padding masked to MASK_FILL is exactly 1/count on real tokens and 0
        on padding. Integer runtimes have no division and a broken quantized SUM; a softmax and a
        matmul they run well, and an error in 1/count, the same for every token, leaves the
        embedding's direction unchanged. (A row with no real token pools to the mean of all.)"""
        b, L = self.b, self.L
        mask = b.reshape(attention_mask, shape=[1, 1, L], name="pool.mask")
        logits = b.masked_fill(b.const("pool_logits"), mask, value=MASK_FILL, name="pool.logits")
        weights = b.softmax(logits, axis=-1, name="pool.weights")
        pooled = b.matmul(weights, hidden, name="pool.mean")
        return b.reshape(pooled, shape=[1, self.cfg.hidden], name="embedding")

    def build(self):
        b, L = self.b, self.L
        input_ids = b.arg("input_ids", (1, L), "i32")
        attention_mask = b.arg("attention_mask", (1, L), "i32")
        b.const("attn_scale", np.float32(1 / math.sqrt(self.cfg.head_dim)))  # HF scales the scores, not q
        b.const("pool_logits", np.zeros((1, 1, L), np.float32))
        # Padding hides keys only: every query row still sees its real tokens, as in Hugging Face.
        key_mask = b.reshape(attention_mask, shape=[1, 1, 1, L], name="key_mask")
        x = self.embeddings(input_ids)
        for i in range(self.cfg.layers):
            x = self.layer(x, key_mask, i)
        b.ret(x, self.mean_pool(x, attention_mask))


def from_hf_config(config: dict, weights: WeightStore, seq_len: int, tokenizer=None) -> LoadedModel:
    """A Hugging Face BERT folder's config.json + lazy weights -> LoadedModel(kind="encoder")."""
    cfg = read_config(config, seq_len)
    pad_token_id = cfg.pad_token_id
    module = Module("bert", attrs={"kind": "encoder", "architecture": "bert", "pad_token_id": pad_token_id})
    EncoderBuilder(module, cfg, Checkpoint(weights), seq_len).build()
    verify(module)
    if tokenizer is not None:
        # tokenizer.json may pad or truncate on its own (all-MiniLM pads to 128): callers pad to
        # the graph's static length themselves and must see the real token count.
        tokenizer.no_padding()
        tokenizer.no_truncation()
    info = {"architecture": "bert", "pad_token_id": pad_token_id, "hidden_size": cfg.hidden,
            "layers": cfg.layers, "heads": cfg.heads, "intermediate_size": cfg.intermediate,
            "vocab_size": cfg.vocab, "max_position_embeddings": cfg.positions}
    return LoadedModel(module, "encoder", tokenizer, info)


def encode_batch_static(tokenizer, texts: list[str], seq_len: int, pad_id: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Token ids and attention masks, i32[N, seq_len] each, right-padded with `pad_id`.

    A text longer than seq_len is an error rather than silently cut."""
    ids = np.full((len(texts), seq_len), pad_id, dtype=np.int32)
    mask = np.zeros((len(texts), seq_len), dtype=np.int32)
    for row, (text, encoding) in enumerate(zip(texts, tokenizer.encode_batch(list(texts)))):
        # Keep only real tokens, in case the tokenizer still pads on its own
        tokens = [t for t, m in zip(encoding.ids, encoding.attention_mask) if m]
        if encoding.overflowing or len(tokens) > seq_len:
            raise QirError(f"text {row} has more than {seq_len} tokens ({text[:40]!r}...); "
                           f"load the model with a larger seq_len")
        ids[row, :len(tokens)] = tokens
        mask[row, :len(tokens)] = 1
    return ids, mask
