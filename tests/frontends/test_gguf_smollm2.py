"""The real SmolLM2-135M-Instruct GGUF (Q4_1 blocks, Q8_0 embedding) through the GGUF frontend,
against transformers' own loader of the same file: the same architecture, the same tokens, the
same perplexity and next-token choices on real text (Python's pydoc prose)."""
import math
import time

import numpy as np
import pytest
import torch

import qir
from qir.frontend import embedded_model_path
from qir.text import pydoc_text

CONTEXT = 256
MAX_PPL_RELATIVE_DIFF = 1e-3  # 0.1 %
MIN_TOP1_AGREEMENT = 0.999


@pytest.fixture(scope="module")
def gguf_path():
    return embedded_model_path("smollm2")


@pytest.fixture(scope="module")
def loaded(gguf_path):
    start = time.perf_counter()
    model = qir.load_model(gguf_path, seq_len=CONTEXT)
    print(f"\nqir loaded {gguf_path.name} in {time.perf_counter() - start:.2f} s")
    return model


@pytest.fixture(scope="module")
def reference(gguf_path):
    """transformers' float32 model of the same file, eager attention.

    `AutoModelForCausalLM.from_pretrained(folder, gguf_file=...)` insists on the accelerate package,
    which qir does not depend on; for a llama GGUF it runs these same steps (config from the
    metadata, then `load_gguf_checkpoint`: dequantize, undo llama.cpp's Q/K row permutation)."""
    from transformers import AutoConfig, AutoModelForCausalLM
    from transformers.modeling_gguf_pytorch_utils import load_gguf_checkpoint
    config = AutoConfig.from_pretrained(gguf_path.parent, gguf_file=gguf_path.name)
    model = AutoModelForCausalLM.from_config(config, attn_implementation="eager", dtype=torch.float32)
    tensors = load_gguf_checkpoint(str(gguf_path), return_tensors=True, model_to_load=model)["tensors"]
    missing, unexpected = model.load_state_dict(tensors, strict=False)
    assert not unexpected and missing == ["lm_head.weight"]
    assert model.lm_head.weight.data_ptr() == model.model.embed_tokens.weight.data_ptr()  # tied
    return model.eval()


def test_architecture_is_smollm2_135m(loaded):
    info = loaded.info
    assert (info["architecture"], info["layers"], info["hidden"], info["intermediate"]) == ("llama", 30, 576, 1536)
    assert (info["heads"], info["kv_heads"], info["head_dim"], info["vocab"]) == (9, 3, 64, 49152)
    assert info["rope_theta"] == 1e5 and info["tied_embeddings"] is True
    assert info["bos_token_id"] == 1 and info["add_bos"] is False  # the file says add_bos_token = false
    assert loaded.kind == "causal-lm" and loaded.seq_len == CONTEXT
    assert loaded.module.constants["token_embd"].type.shape == (49152, 576)
    assert "output" not in loaded.module.constants


def test_architecture_agrees_with_transformers(loaded, reference):
    c, info = reference.config, loaded.info
    assert (c.num_hidden_layers, c.hidden_size, c.intermediate_size, c.num_attention_heads,
            c.num_key_value_heads, c.vocab_size) == (info["layers"], info["hidden"], info["intermediate"],
                                                      info["heads"], info["kv_heads"], info["vocab"])
    assert np.float32(c.rms_norm_eps) == np.float32(info["rms_eps"])  # the file stores it as float32
    assert c.rope_parameters["rope_theta"] == info["rope_theta"]


def test_tokenizer_matches_transformers(loaded, gguf_path):
    from transformers import AutoTokenizer
    theirs = AutoTokenizer.from_pretrained(str(gguf_path.parent), gguf_file=gguf_path.name)
    text = pydoc_text()
    assert loaded.tokenizer.encode(text, add_special_tokens=False).ids == theirs(text, add_special_tokens=False).input_ids
    chat = "<|im_start|>user\nWhat is a generator?<|im_end|>\n"
    assert loaded.tokenizer.encode(chat).ids == theirs(chat).input_ids


def text_windows(loaded, count: int) -> list[np.ndarray]:
    """Non-overlapping windows of CONTEXT tokens of the pydoc text (BOS first if the model wants it)."""
    ids = loaded.tokenizer.encode(pydoc_text(), add_special_tokens=False).ids
    bos = [loaded.info["bos_token_id"]] if loaded.info["add_bos"] else []
    per_window = CONTEXT - len(bos)
    assert len(ids) >= count * per_window
    return [np.asarray(bos + ids[i * per_window:(i + 1) * per_window], np.int32)[None] for i in range(count)]


def log_softmax(logits: np.ndarray) -> np.ndarray:
    shifted = logits - logits.max(-1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(-1, keepdims=True))


def compare_on_text(loaded, reference, windows: int) -> None:
    interpreter = qir.Interpreter(loaded.module)
    nll = {"qir": 0.0, "transformers": 0.0}
    predicted = agree = 0
    max_diff = 0.0
    for window in text_windows(loaded, windows):
        ours = interpreter.run(window)[0][0].astype(np.float64)
        with torch.no_grad():
            theirs = reference(torch.from_numpy(window).long()).logits[0].numpy().astype(np.float64)
        max_diff = max(max_diff, float(np.abs(ours - theirs).max()))
        agree += int((ours.argmax(-1) == theirs.argmax(-1)).sum())
        targets = window[0, 1:]
        for who, logits in (("qir", ours), ("transformers", theirs)):
            nll[who] -= float(log_softmax(logits[:-1])[np.arange(len(targets)), targets].sum())
        predicted += len(targets)
    ppl = {who: math.exp(total / predicted) for who, total in nll.items()}
    relative = abs(ppl["qir"] - ppl["transformers"]) / ppl["transformers"]
    agreement = agree / (windows * CONTEXT)
    print(f"\nSmolLM2-135M Q4_1, {windows} x {CONTEXT} tokens: perplexity qir {ppl['qir']:.4f} vs transformers "
          f"{ppl['transformers']:.4f} (relative diff {relative:.2e}); top-1 agreement {agreement:.2%} "
          f"({agree}/{windows * CONTEXT}); max |logit diff| {max_diff:.2e}")
    assert relative <= MAX_PPL_RELATIVE_DIFF
    assert agreement >= MIN_TOP1_AGREEMENT


def test_text_predictions_match_transformers(loaded, reference):
    compare_on_text(loaded, reference, windows=2)


@pytest.mark.slow
def test_text_predictions_match_transformers_on_4096_tokens(loaded, reference):
    compare_on_text(loaded, reference, windows=16)
