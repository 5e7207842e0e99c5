"""The llama-family builder against transformers (PyTorch, float32, eager attention) on tiny random
checkpoints saved as Hugging Face folders, and its errors for checkpoints it cannot lower faithfully."""
import dataclasses

import numpy as np
import pytest
import torch
from transformers import AutoModelForCausalLM, LlamaConfig as HFLlamaConfig, Qwen2Config

import qir
from tests.frontends.reference_init import widen_weights
from tests.frontends.checkpoint_edits import delete_tensor, edit_config
from frontends.hf import read_config, read_safetensors
from frontends.llama import (LlamaConfig, build_llama, permute_for_interleaved_rope,
                             unpermute_from_interleaved_rope)
from qir.weights import SafetensorsEntry, WeightStore

SEQ_LEN = 16
TOLERANCE = 1e-4

COMMON = dict(vocab_size=128, num_hidden_layers=2, max_position_embeddings=64, rms_norm_eps=1e-5)
CASES = {
    # SwiGLU MLP, separate lm_head, 2 query heads per KV head
    "llama-swiglu": lambda: HFLlamaConfig(**COMMON, hidden_size=64, intermediate_size=96, num_attention_heads=4,
                                          num_key_value_heads=2, hidden_act="silu", tie_word_embeddings=False,
                                          rope_parameters={"rope_type": "default", "rope_theta": 10000.0}),
    # ReLU-gated MLP, lm_head tied to the embedding, 3 query heads per KV head, all biases
    "llama-relu-tied": lambda: HFLlamaConfig(**COMMON, hidden_size=48, intermediate_size=80, num_attention_heads=6,
                                             num_key_value_heads=2, hidden_act="relu", tie_word_embeddings=True,
                                             attention_bias=True, mlp_bias=True,
                                             rope_parameters={"rope_type": "default", "rope_theta": 500.0}),
    # head_dim set apart from hidden_size / heads (q_proj is [heads * head_dim, hidden])
    "llama-head-dim": lambda: HFLlamaConfig(**COMMON, hidden_size=64, intermediate_size=96, num_attention_heads=4,
                                            num_key_value_heads=2, head_dim=24, tie_word_embeddings=False),
    # Qwen2: biases on q/k/v only; one KV head for all 4 query heads
    "qwen2": lambda: Qwen2Config(**COMMON, hidden_size=64, intermediate_size=96, num_attention_heads=4,
                                 num_key_value_heads=1, tie_word_embeddings=False,
                                 rope_parameters={"rope_type": "default", "rope_theta": 1e6}),
}


def random_model(case: str, seed: int = 0):
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(CASES[case](), attn_implementation="eager", dtype=torch.float32)
    return widen_weights(model, "norm", norm_spread=0.3, matrix_std=0.15).eval()


def random_tokens(vocab: int, seed: int = 1) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, vocab, (1, SEQ_LEN), dtype=np.int32)


def reference_logits(model, tokens: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        return model(torch.from_numpy(tokens).long()).logits.numpy()


@pytest.fixture(scope="module", params=list(CASES))
def case(request, tmp_path_factory):
    model = random_model(request.param)
    folder = tmp_path_factory.mktemp(request.param)
    model.save_pretrained(folder)
    return request.param, model, folder


def test_logits_match_transformers(case):
    name, model, folder = case
    loaded = qir.load_model(folder, seq_len=SEQ_LEN)
    qir.verify(loaded.module)
    tokens = random_tokens(model.config.vocab_size)
    ours = qir.Interpreter(loaded.module).run(tokens)[0]
    ref = reference_logits(model, tokens)
    diff = float(np.abs(ours - ref).max())
    print(f"{name}: max |logit diff| vs transformers = {diff:.2e} (|logits| up to {np.abs(ref).max():.2f})")
    assert ours.shape == (1, SEQ_LEN, model.config.vocab_size)
    assert diff <= TOLERANCE


def test_loaded_model_describes_itself(case):
    name, model, folder = case
    loaded = qir.load_model(folder, seq_len=SEQ_LEN)
    hf = model.config
    assert loaded.kind == "causal-lm" and loaded.seq_len == SEQ_LEN and loaded.tokenizer is None
    assert loaded.module.attrs["kind"] == "causal-lm"
    assert loaded.module.attrs["architecture"] == loaded.info["architecture"] == hf.model_type
    assert (loaded.info["layers"], loaded.info["hidden"], loaded.info["heads"], loaded.info["kv_heads"]) == (
        hf.num_hidden_layers, hf.hidden_size, hf.num_attention_heads, hf.num_key_value_heads)
    assert loaded.info["tied_embeddings"] == hf.tie_word_embeddings
    assert "add_bos" in loaded.info and "bos_token_id" in loaded.info
    constants = loaded.module.constants
    assert "token_embd" in constants and "blk.0.attn_q" in constants and "output_norm" in constants
    assert ("output" in constants) != hf.tie_word_embeddings  # a tied head reads token_embd


def test_ir_text_is_readable_and_round_trips(case):
    _, _, folder = case
    text = str(qir.load_model(folder, seq_len=SEQ_LEN).module)
    assert "%blk0.scores = q.matmul" in text and "q.masked_fill" in text and "-inf" not in text
    assert qir.print_module(qir.parse(text)) == text


def test_lowering_reads_no_weight_data(case, monkeypatch):
    _, _, folder = case

    def refuse(self):
        raise AssertionError(f"tensor {self.key} was read while lowering")

    monkeypatch.setattr(SafetensorsEntry, "__call__", refuse)
    loaded = qir.load_model(folder, seq_len=SEQ_LEN)
    assert loaded.module.constants["blk.0.ffn_up"].type.shape == (
        loaded.info["intermediate"], loaded.info["hidden"])


def test_interleaved_rope_with_llama_cpp_rows_matches_half_layout(tmp_path):
    """llama.cpp stores q/k rows permuted for its interleaved RoPE: the interleaved layout on those
    rows must compute the same model as the half layout on Hugging Face rows."""
    model = random_model("llama-swiglu")
    model.save_pretrained(tmp_path)
    config = LlamaConfig.from_hf(read_config(tmp_path))
    hf_weights = read_safetensors(tmp_path)
    cpp_weights, plain_weights = WeightStore(), WeightStore()
    for name in hf_weights.names():
        array = hf_weights.get(name)
        plain_weights.set(name, array)
        if ".q_proj." in name:
            array = permute_for_interleaved_rope(array, config.num_heads)
        elif ".k_proj." in name:
            array = permute_for_interleaved_rope(array, config.num_kv_heads)
        cpp_weights.set(name, array)
    interleaved = dataclasses.replace(config, rope_layout="interleaved")
    tokens = random_tokens(config.vocab_size)
    half_logits = qir.interpret(build_llama(config, hf_weights, SEQ_LEN), tokens)[0]
    interleaved_logits = qir.interpret(build_llama(interleaved, cpp_weights, SEQ_LEN), tokens)[0]
    mismatched_logits = qir.interpret(build_llama(interleaved, plain_weights, SEQ_LEN), tokens)[0]
    diff = float(np.abs(half_logits - interleaved_logits).max())
    print(f"interleaved rope on llama.cpp rows vs half rope on HF rows: max |logit diff| = {diff:.2e}")
    assert diff <= TOLERANCE
    assert np.abs(half_logits - mismatched_logits).max() > 100 * TOLERANCE  # the permutation matters


def test_unpermute_inverts_permute():
    w = np.arange(6 * 8 * 3, dtype=np.float32).reshape(6 * 8, 3)
    permuted = permute_for_interleaved_rope(w, heads=6)
    assert not np.array_equal(permuted, w)
    np.testing.assert_array_equal(unpermute_from_interleaved_rope(permuted, heads=6), w)


# -- bad input ---------------------------------------------------------------------------------------

@pytest.fixture
def folder(tmp_path):
    random_model("llama-swiglu").save_pretrained(tmp_path)
    return tmp_path


def test_missing_tensor_is_named(folder):
    delete_tensor(folder, "model.layers.1.self_attn.k_proj.weight")
    with pytest.raises(qir.QirError, match=r"no tensor 'model\.layers\.1\.self_attn\.k_proj\.weight'"):
        qir.load_model(folder, seq_len=SEQ_LEN)


def test_tensor_shape_contradicting_config_is_named(folder):
    edit_config(folder, intermediate_size=100)
    with pytest.raises(qir.QirError, match=r"'model\.layers\.0\.mlp\.gate_proj\.weight' has shape \[96, 64\], "
                                           r"but the config implies \[100, 64\]"):
        qir.load_model(folder, seq_len=SEQ_LEN)


@pytest.mark.parametrize("changes, message", [
    ({"rope_parameters": {"rope_type": "yarn", "factor": 4.0, "rope_theta": 10000.0}}, "rope scaling type 'yarn'"),
    ({"rope_parameters": None, "rope_theta": 10000.0, "rope_scaling": {"type": "linear", "factor": 2.0}},
     "rope scaling type 'linear'"),
    ({"hidden_act": "gelu"}, "hidden_act 'gelu' is not supported"),
    ({"num_key_value_heads": 3}, "4 attention heads cannot be shared evenly by 3 key/value heads"),
    ({"partial_rotary_factor": 0.5}, "partial_rotary_factor"),
    ({"num_hidden_layers": None}, "no 'num_hidden_layers'"),
])
def test_unsupported_config_is_refused_by_name(folder, changes, message):
    edit_config(folder, **changes)
    with pytest.raises(qir.QirError, match=message):
        qir.load_model(folder, seq_len=SEQ_LEN)


def test_sequence_longer_than_trained_positions_is_refused(folder):
    with pytest.raises(qir.QirError, match="seq_len 100 is longer than the 64 positions"):
        qir.load_model(folder, seq_len=100)
