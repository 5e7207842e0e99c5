"""GGUF files (llama.cpp's format) -> IR.

The metadata becomes a `LlamaConfig`, the tensors lazy float32 sources under Hugging Face names
(dequantized with `gguf.quants.dequantize` only when read), and the tokenizer is rebuilt from the
vocabulary in the metadata by transformers' GGUF tokenizer support."""
from __future__ import annotations

import dataclasses
import re
from functools import cache
from pathlib import Path

import numpy as np

from qir import Frontend, LoadedModel, QirError
from qir.frontend import kept_layers
from qir.weights import WeightStore

from frontends.llama import LlamaConfig, hf_tensor_shapes, loaded_llama, unpermute_from_interleaved_rope

GGUF_MAGIC = b"GGUF"
SUPPORTED_ARCHITECTURES = ("llama",)

# llama.cpp tensor name -> Hugging Face name; per-block names take the block index
GLOBAL_TENSORS = {"token_embd": "model.embed_tokens", "output_norm": "model.norm", "output": "lm_head"}
BLOCK_TENSORS = {
    "attn_norm": "input_layernorm", "attn_q": "self_attn.q_proj", "attn_k": "self_attn.k_proj",
    "attn_v": "self_attn.v_proj", "attn_output": "self_attn.o_proj", "ffn_norm": "post_attention_layernorm",
    "ffn_gate": "mlp.gate_proj", "ffn_up": "mlp.up_proj", "ffn_down": "mlp.down_proj",
}
_BLOCK_NAME = re.compile(r"blk\.(\d+)\.([a-z_]+)\.(weight|bias)")
_MISSING = object()


class GGUFTensorSource:
    """One tensor of a GGUF file as a lazy float32 array in Hugging Face orientation ([out, in]).

    `rope_heads` is set for q/k projections: llama.cpp's converter permutes their rows for its
    interleaved RoPE, and reading undoes that so the Hugging Face ("half") layout applies."""

    __slots__ = ("tensor", "shape", "dtype", "rope_heads", "path")

    def __init__(self, tensor, path: Path, rope_heads: int | None = None):
        self.tensor, self.path, self.rope_heads = tensor, path, rope_heads
        self.shape = tuple(int(d) for d in reversed(tensor.shape))  # GGUF lists dimensions innermost first
        self.dtype = np.dtype(np.float32)

    def __call__(self) -> np.ndarray:
        from gguf.quants import dequantize
        try:
            array = dequantize(self.tensor.data, self.tensor.tensor_type)
        except Exception as exc:
            raise QirError(f"cannot dequantize tensor '{self.tensor.name}' ({self.tensor.tensor_type.name}) "
                           f"of {self.path}: {exc}") from None
        array = np.asarray(array).astype(np.float32, copy=False).reshape(self.shape)
        if self.rope_heads is not None:
            array = unpermute_from_interleaved_rope(array, self.rope_heads)
        return array


@cache
def _plain_view_reader():
    from gguf import GGUFReader  # imported on first use: every load_model call instantiates all frontends

    class PlainViewReader(GGUFReader):
        """GGUFReader that slices a plain ndarray view of its memory map. Every slice of a
        np.memmap is itself a memmap with per-view bookkeeping, and parsing the ~100k vocabulary
        strings makes a quarter million of them: this reads the same bytes about 3x faster."""

        def _get(self, offset, dtype, count=1, override_order=None):
            plain = self.__dict__.get("_plain")
            if plain is None:
                plain = self._plain = self.data.view(np.ndarray)
            dtype, count = np.dtype(dtype), int(count)
            array = plain[offset:offset + dtype.itemsize * count].view(dtype)[:count]
            return array.view(array.dtype.newbyteorder(self.byte_order if override_order is None else override_order))

    return PlainViewReader


def open_reader(path: Path):
    try:
        return _plain_view_reader()(str(path))
    except Exception as exc:  # truncated or corrupt files fail in many places inside the reader
        raise QirError(f"{path} is not a readable GGUF file (truncated or corrupt?): "
                       f"{type(exc).__name__}: {exc}") from None


def read_field(reader, key: str, default=_MISSING, path: Path | None = None):
    field = reader.fields.get(key)
    if field is None:
        if default is _MISSING:
            raise QirError(f"{path}: GGUF metadata has no '{key}'")
        return default
    try:
        return field.contents()
    except Exception as exc:
        raise QirError(f"{path}: GGUF metadata '{key}' is unreadable: {exc}") from None


def llama_config(reader, path: Path, arch: str, tensor_names: set[str]) -> LlamaConfig:
    def meta(key, default=_MISSING):
        value = read_field(reader, f"{arch}.{key}", default, path)
        if isinstance(value, list):
            raise QirError(f"{path}: '{arch}.{key}' varies per layer ({value[:4]}...), which is not supported")
        return value

    hidden, heads = int(meta("embedding_length")), int(meta("attention.head_count"))
    head_dim = int(meta("attention.key_length", hidden // heads))
    rope_dims = int(meta("rope.dimension_count", head_dim))
    if rope_dims != head_dim:
        raise QirError(f"{path}: rotary embedding on {rope_dims} of {head_dim} head dimensions (partial RoPE) "
                       f"is not supported")
    scaling = meta("rope.scaling.type", "none")
    if scaling not in ("none", "", None):
        raise QirError(f"{path}: rope scaling type '{scaling}' is not supported; supported: none")
    if "rope_freqs.weight" in tensor_names:
        raise QirError(f"{path}: per-frequency RoPE factors (tensor rope_freqs.weight, Llama 3.1 style) "
                       f"are not supported")
    vocab = meta("vocab_size", None)
    if vocab is None:
        tokens = reader.fields.get("tokenizer.ggml.tokens")
        vocab = len(tokens.data) if tokens is not None else None
    if vocab is None:
        raise QirError(f"{path}: GGUF metadata gives no vocabulary size ({arch}.vocab_size or tokenizer.ggml.tokens)")
    context = meta("context_length", None)
    return LlamaConfig(
        vocab_size=int(vocab), hidden_size=hidden, intermediate_size=int(meta("feed_forward_length")),
        num_layers=int(meta("block_count")), num_heads=heads, num_kv_heads=int(meta("attention.head_count_kv", heads)),
        head_dim=head_dim, rms_eps=f32_value(meta("attention.layer_norm_rms_epsilon")),
        rope_theta=f32_value(meta("rope.freq_base", 10000.0)), tie_embeddings="output.weight" not in tensor_names,
        qkv_bias="blk.0.attn_q.bias" in tensor_names, o_bias="blk.0.attn_output.bias" in tensor_names,
        mlp_bias="blk.0.ffn_up.bias" in tensor_names, activation="silu",
        max_positions=int(context) if context is not None else None, architecture=arch,
    )


def f32_value(value) -> float:
    """A float32 metadata value as the decimal it was written from (1e-05, not 9.999999747378752e-06)."""
    return float(str(np.float32(value)))


def hf_name(gguf_name: str, path: Path) -> str:
    stem, _, kind = gguf_name.rpartition(".")
    if stem in GLOBAL_TENSORS and kind == "weight":
        return f"{GLOBAL_TENSORS[stem]}.weight"
    match = _BLOCK_NAME.fullmatch(gguf_name)
    if match and match.group(2) in BLOCK_TENSORS:
        return f"model.layers.{match.group(1)}.{BLOCK_TENSORS[match.group(2)]}.{match.group(3)}"
    raise QirError(f"{path}: tensor '{gguf_name}' is not part of the llama architecture as qir knows it")


def llama_weights(reader, path: Path, config: LlamaConfig) -> WeightStore:
    """Lazy sources under Hugging Face names, checked against the metadata; errors name the GGUF tensor."""
    store, gguf_names = WeightStore(), {}
    for tensor in reader.tensors:
        name = hf_name(tensor.name, path)
        match = _BLOCK_NAME.fullmatch(tensor.name)
        if match and int(match.group(1)) >= config.num_layers:
            raise QirError(f"{path}: tensor '{tensor.name}' belongs to a block past "
                           f"{config.architecture}.block_count = {config.num_layers}")
        heads = None
        if ".self_attn.q_proj." in name:
            heads = config.num_heads
        elif ".self_attn.k_proj." in name:
            heads = config.num_kv_heads
        store.set(name, GGUFTensorSource(tensor, path, heads))
        gguf_names[name] = tensor.name
    for name, shape in hf_tensor_shapes(config).items():
        if not store.has(name):
            raise QirError(f"{path}: no tensor '{gguf_name_of(name)}', which a {config.architecture} model "
                           f"with this metadata needs")
        actual = store.source(name).shape
        if actual != shape:
            raise QirError(f"{path}: tensor '{gguf_names[name]}' is {list(actual)} as [out, in], but the metadata "
                           f"implies {list(shape)}")
    return store


def gguf_name_of(hf: str) -> str:
    """The llama.cpp name of a Hugging Face tensor name (for messages)."""
    stem, _, kind = hf.rpartition(".")
    for gguf_stem, hf_stem in GLOBAL_TENSORS.items():
        if stem == hf_stem:
            return f"{gguf_stem}.{kind}"
    layer, _, part = stem.removeprefix("model.layers.").partition(".")
    short = {v: k for k, v in BLOCK_TENSORS.items()}[part]
    return f"blk.{layer}.{short}.{kind}"


def gguf_tokenizer(reader, path: Path, arch: str):
    """The tokenizer the metadata describes, built as transformers builds it for
    `AutoTokenizer.from_pretrained(..., gguf_file=...)`, from the fields already read (the file is
    not parsed a second time). Returns (tokenizers.Tokenizer or None, add_bos)."""
    if "tokenizer.ggml.model" not in reader.fields:
        return None, False
    from transformers.integrations.gguf.gguf_tokenizer_mapping import GGUF_TOKENIZER_MAPPING, convert_gguf_tokenizer
    from transformers.tokenization_utils_tokenizers import TokenizersBackend
    fields = {}
    for group, renames in GGUF_TOKENIZER_MAPPING.items():
        fields[group] = {name: read_field(reader, f"tokenizer.{key}", None, path) for key, name in renames.items()}
        fields[group] = {k: v for k, v in fields[group].items() if v is not None}
    tokenizer_dict, tokenizer_config = fields["tokenizer"], fields["tokenizer_config"]
    # llama.cpp adds BOS to a sentencepiece ("llama") vocabulary unless the file says otherwise
    add_bos = bool(tokenizer_config.get("add_bos_token", tokenizer_dict.get("tokenizer_type") == "llama"))
    tokens = tokenizer_dict.get("tokens", [])
    special = {name: tokens[tokenizer_dict[key]] for name, key in
               (("bos_token", "bos_token_id"), ("eos_token", "eos_token_id"), ("unk_token", "unk_token_id"),
                ("pad_token", "pad_token_id")) if key in tokenizer_dict and 0 <= tokenizer_dict[key] < len(tokens)}
    try:
        backend, _ = convert_gguf_tokenizer(arch, tokenizer_dict)
        # the wrapper applies add_bos_token / add_eos_token to the post-processor, as from_pretrained does
        wrapped = TokenizersBackend(tokenizer_object=backend, add_bos_token=add_bos,
                                    add_eos_token=bool(tokenizer_config.get("add_eos_token", False)), **special)
    except Exception as exc:
        raise QirError(f"{path}: cannot build the tokenizer from the GGUF metadata: {exc}") from None
    return wrapped.backend_tokenizer, add_bos


class GGUFFrontend(Frontend):
    name = "gguf"
    description = f"llama.cpp GGUF file ({', '.join(SUPPORTED_ARCHITECTURES)})"

    def can_load(self, path: Path) -> bool:
        if not path.is_file():
            return False
        if path.suffix.lower() == ".gguf":
            return True
        with open(path, "rb") as f:
            return f.read(4) == GGUF_MAGIC

    def load(self, path: Path, seq_len: int = 256, layers: int | None = None) -> LoadedModel:
        path = Path(path)
        reader = open_reader(path)
        arch = read_field(reader, "general.architecture", path=path)
        if arch not in SUPPORTED_ARCHITECTURES:
            raise QirError(f"{path}: GGUF architecture '{arch}' is not supported; supported: "
                           f"{', '.join(SUPPORTED_ARCHITECTURES)}")
        tensor_names = {t.name for t in reader.tensors}
        config = llama_config(reader, path, arch, tensor_names)
        weights = llama_weights(reader, path, config)
        config = dataclasses.replace(config, num_layers=kept_layers(config.num_layers, layers, path))
        tokenizer, add_bos = gguf_tokenizer(reader, path, arch)
        bos = read_field(reader, "tokenizer.ggml.bos_token_id", None, path)
        eos = read_field(reader, "tokenizer.ggml.eos_token_id", None, path)
        extra = {"format": "gguf", "file_type": read_field(reader, "general.file_type", None, path),
                 "name": read_field(reader, "general.name", None, path), "context_length": config.max_positions}
        return loaded_llama(config, weights, seq_len, tokenizer, path.stem, bos, add_bos, eos, extra)
