"""The GGUF frontend on small files written here the way llama.cpp's converter writes them (llama
names, Q/K rows permuted for interleaved RoPE, a Q8_0 tensor), and its errors for files it cannot
load: other architectures, missing or misshapen tensors, unsupported RoPE, truncated or corrupt files."""
import gguf
import numpy as np
import pytest
import torch
from transformers import AutoModelForCausalLM, LlamaConfig as HFLlamaConfig

import qir
from frontends.gguf import GGUFFrontend

SEQ_LEN = 16
TOLERANCE = 1e-4
HF_TO_GGUF = {"input_layernorm": "attn_norm", "self_attn.q_proj": "attn_q", "self_attn.k_proj": "attn_k",
              "self_attn.v_proj": "attn_v", "self_attn.o_proj": "attn_output",
              "post_attention_layernorm": "ffn_norm", "mlp.gate_proj": "ffn_gate", "mlp.up_proj": "ffn_up",
              "mlp.down_proj": "ffn_down"}


def tiny_llama(seed: int = 0):
    torch.manual_seed(seed)
    config = HFLlamaConfig(vocab_size=128, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
                           num_attention_heads=4, num_key_value_heads=2, rms_norm_eps=1e-5,
                           max_position_embeddings=64, tie_word_embeddings=False,
                           rope_parameters={"rope_type": "default", "rope_theta": 10000.0})
    model = AutoModelForCausalLM.from_config(config, attn_implementation="eager", dtype=torch.float32).eval()
    with torch.no_grad():  # larger than the default init, so attention and positions matter
        for name, param in model.named_parameters():
            param.copy_(1 + 0.3 * torch.randn_like(param) if "norm" in name else 0.15 * torch.randn_like(param))
    return model


def llama_cpp_permute(w: np.ndarray, heads: int) -> np.ndarray:
    """What llama.cpp's convert_hf_to_gguf.py does to q/k rows (LlamaModel.permute)."""
    return w.reshape(heads, 2, w.shape[0] // heads // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def gguf_name(hf: str) -> str:
    globals_ = {"model.embed_tokens.weight": "token_embd.weight", "model.norm.weight": "output_norm.weight",
                "lm_head.weight": "output.weight"}
    if hf in globals_:
        return globals_[hf]
    layer, _, rest = hf.removeprefix("model.layers.").partition(".")
    stem, _, kind = rest.rpartition(".")
    return f"blk.{layer}.{HF_TO_GGUF[stem]}.{kind}"


def write_gguf(path, model, arch="llama", drop=(), reshape=None, metadata_skip=(), extra=None, rope_scaling=None):
    """A llama.cpp-style GGUF of `model`; the knobs make broken files for the error tests.
    ffn_down of block 0 is stored as Q8_0 blocks; returns the weights as the file holds them."""
    c = model.config
    writer = gguf.GGUFWriter(str(path), arch)
    meta = {"block_count": c.num_hidden_layers, "context_length": c.max_position_embeddings,
            "embedding_length": c.hidden_size, "feed_forward_length": c.intermediate_size,
            "head_count": c.num_attention_heads, "head_count_kv": c.num_key_value_heads,
            "layer_norm_rms_eps": c.rms_norm_eps, "rope_freq_base": c.rope_parameters["rope_theta"],
            "vocab_size": c.vocab_size, "rope_dimension_count": c.head_dim}
    for key, value in meta.items():
        if key not in metadata_skip:
            getattr(writer, f"add_{key}")(value)
    if rope_scaling is not None:
        writer.add_rope_scaling_type(rope_scaling)
    stored = {}
    for hf, tensor in model.state_dict().items():
        name = gguf_name(hf)
        if name in drop:
            continue
        w = tensor.numpy().copy()
        if name.endswith("attn_q.weight"):
            w = llama_cpp_permute(w, c.num_attention_heads)
        elif name.endswith("attn_k.weight"):
            w = llama_cpp_permute(w, c.num_key_value_heads)
        if reshape and name in reshape:
            w = np.resize(w, reshape[name])
        if name == "blk.0.ffn_down.weight":
            blocks = gguf.quants.quantize(w, gguf.GGMLQuantizationType.Q8_0)
            writer.add_tensor(name, blocks, raw_dtype=gguf.GGMLQuantizationType.Q8_0)
            stored[hf] = gguf.quants.dequantize(blocks, gguf.GGMLQuantizationType.Q8_0)
        else:
            writer.add_tensor(name, w)
            stored[hf] = tensor.numpy()
    for name, array in (extra or {}).items():
        writer.add_tensor(name, array)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return stored


@pytest.fixture(scope="module")
def model():
    return tiny_llama()


def test_written_gguf_matches_transformers(model, tmp_path):
    path = tmp_path / "tiny.gguf"
    stored = write_gguf(path, model)
    # the reference runs the weights the file holds (ffn_down of block 0 went through Q8_0)
    model.load_state_dict({k: torch.from_numpy(np.asarray(v)) for k, v in stored.items()})
    loaded = qir.load_model(path, seq_len=SEQ_LEN)
    qir.verify(loaded.module)
    tokens = np.random.default_rng(1).integers(0, 128, (1, SEQ_LEN), dtype=np.int32)
    ours = qir.Interpreter(loaded.module).run(tokens)[0]
    with torch.no_grad():
        ref = model(torch.from_numpy(tokens).long()).logits.numpy()
    diff = float(np.abs(ours - ref).max())
    print(f"tiny GGUF (permuted q/k, one Q8_0 tensor): max |logit diff| vs transformers = {diff:.2e}")
    assert diff <= TOLERANCE
    assert loaded.tokenizer is None and loaded.info["tied_embeddings"] is False
    assert loaded.module.constants["blk.0.ffn_down"].type.dtype == "f32"


def test_can_load_by_suffix_or_magic(tmp_path):
    frontend = GGUFFrontend()
    (tmp_path / "model.bin").write_bytes(b"GGUF" + bytes(12))
    (tmp_path / "notes.txt").write_text("not a model")
    assert frontend.can_load(tmp_path / "model.bin")
    assert not frontend.can_load(tmp_path / "notes.txt")
    assert not frontend.can_load(tmp_path)


@pytest.mark.parametrize("knobs, message", [
    ({"arch": "gpt2"}, r"GGUF architecture 'gpt2' is not supported; supported: llama"),
    ({"drop": ["blk.1.attn_k.weight"]}, r"no tensor 'blk\.1\.attn_k\.weight'"),
    ({"reshape": {"blk.0.ffn_up.weight": (90, 64)}}, r"'blk\.0\.ffn_up\.weight' is \[90, 64\] as \[out, in\], "
                                                     r"but the metadata implies \[96, 64\]"),
    ({"metadata_skip": ["feed_forward_length"]}, r"no 'llama\.feed_forward_length'"),
    ({"rope_scaling": gguf.RopeScalingType.YARN}, r"rope scaling type 'yarn' is not supported"),
    ({"extra": {"blk.0.attn_sinks.weight": np.zeros(4, np.float32)}}, r"tensor 'blk\.0\.attn_sinks\.weight' is not"),
    ({"extra": {"rope_freqs.weight": np.ones(8, np.float32)}}, r"rope_freqs\.weight"),
])
def test_unsupported_file_is_refused_by_name(model, tmp_path, knobs, message):
    path = tmp_path / "bad.gguf"
    write_gguf(path, model, **knobs)
    with pytest.raises(qir.QirError, match=message):
        qir.load_model(path, seq_len=SEQ_LEN)


@pytest.mark.parametrize("keep", [0.5, 0.01, 100])
def test_truncated_real_file_is_refused(tmp_path, keep):
    """Cut inside the tensor data, inside the metadata, and inside the header."""
    source = qir.frontend.embedded_model_path("smollm2")
    path = tmp_path / "cut.gguf"
    size = source.stat().st_size
    with open(source, "rb") as f:
        path.write_bytes(f.read(int(size * keep) if keep < 1 else keep))
    with pytest.raises(qir.QirError, match="not a readable GGUF file"):
        qir.load_model(path, seq_len=SEQ_LEN)


def test_garbage_bytes_are_refused(tmp_path):
    path = tmp_path / "garbage.gguf"
    path.write_bytes(np.random.default_rng(0).bytes(4096))
    with pytest.raises(qir.QirError, match="not a readable GGUF file"):
        qir.load_model(path, seq_len=SEQ_LEN)
    magic = tmp_path / "magic.bin"  # recognised by its magic, then found corrupt
    magic.write_bytes(b"GGUF" + np.random.default_rng(1).bytes(4096))
    with pytest.raises(qir.QirError, match="not a readable GGUF file"):
        qir.load_model(magic, seq_len=SEQ_LEN)
