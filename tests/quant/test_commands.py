"""qir-compile --recipe and qir-eval on quantized models: a tiny llama folder (with and without a
tokenizer), the real MiniLM (w8a8) and the real SmolLM2 (a16w8)."""
import json
import subprocess
import sys

import pytest
import torch
from transformers import AutoModelForCausalLM, LlamaConfig

import qir
from qir.text import pydoc_text


def run(command, *args):
    proc = subprocess.run([sys.executable, "-m", f"qir.cli.{command}", *map(str, args)], capture_output=True, text=True)
    return proc.returncode, proc.stdout, proc.stderr


def tiny_llama(folder, with_tokenizer: bool):
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=128, num_hidden_layers=1, max_position_embeddings=64, hidden_size=32,
                         intermediate_size=48, num_attention_heads=2, num_key_value_heads=1)
    AutoModelForCausalLM.from_config(config, dtype=torch.float32).save_pretrained(folder)
    if with_tokenizer:  # a 128-token BPE learned from the same text calibration reads
        from tokenizers import Tokenizer, models, pre_tokenizers, trainers
        tokenizer = Tokenizer(models.BPE(unk_token="[UNK]"))
        tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
        tokenizer.train_from_iterator([pydoc_text()[:50_000]], trainers.BpeTrainer(
            vocab_size=128, limit_alphabet=90, special_tokens=["[UNK]"], show_progress=False))
        assert tokenizer.get_vocab_size() <= 128
        tokenizer.save(str(folder / "tokenizer.json"))
    return folder


def test_quantizing_a_model_without_a_tokenizer_needs_calibration_data(tmp_path):
    folder = tiny_llama(tmp_path / "tiny", with_tokenizer=False)
    code, _, err = run("compile", folder, "--recipe", "w8a8", "--seq-len", "16", "-o", tmp_path / "out")
    assert code == 2 and "Traceback" not in err, err
    assert "calibration needs a tokenizer" in err, err
    assert not (tmp_path / "out").exists()
    # the float recipe needs no calibration
    code, _, err = run("compile", folder, "--seq-len", "16", "-o", tmp_path / "float")
    assert code == 0, err


def test_compile_and_eval_a_tiny_llama_with_a_json_recipe(tmp_path):
    folder = tiny_llama(tmp_path / "tiny", with_tokenizer=True)
    recipe = tmp_path / "mine.json"
    recipe.write_text(json.dumps({"weights": {"bits": 4, "block": 16}, "activations": {"bits": 8},
                                  "overrides": [{"consumer": "q.rms_norm", "activations": {"bits": 16}},
                                                {"consumer": "q.softmax", "activations": {"bits": 16}},
                                                {"producer": "q.softmax", "activations": {"bits": 16}},
                                                {"match": "logits", "skip": True}]}))
    out = tmp_path / "out"
    code, stdout, err = run("compile", folder, "--recipe", recipe, "--seq-len", "16",
                            "--calibration-samples", "4", "-o", out)
    assert code == 0, err
    assert sorted(p.name for p in out.iterdir()) == ["model.qir", "model.safetensors", "report.json",
                                                     "report.png", "tokenizer.json"]
    assert "pass calibrate" in stdout and "pass quantize" in stdout and "SQNR dB" in stdout
    module = qir.parse_file(out / "model.qir")
    qir.verify(module)
    assert module.constants["blk.0.ffn_down"].quant.block_size == 16 and module.main.outputs[0].quant is None
    report = json.loads((out / "report.json").read_text())
    assert {r["value"] for r in report} == {r.name for op in module.main.ops for r in op.results if r.quant}
    assert all(r["sqnr_db"] > 0 for r in report)
    assert (out / "report.png").read_bytes()[:4] == b"\x89PNG"

    code, stdout, err = run("eval", out / "model.qir", "--context", "16", "--tokens", "256", "--json")
    assert code == 0, err
    result = json.loads(stdout)
    print({k: result[k] for k in ("perplexity", "float_perplexity", "kl_to_float", "top1_agreement")})
    assert result["mode"] == "fake-quant" and result["kl_to_float"] > 0 and 0 < result["top1_agreement"] <= 1
    code, stdout, err = run("eval", out / "model.qir", "--context", "16", "--tokens", "256", "--json", "--mode", "float")
    assert code == 0, err
    as_float = json.loads(stdout)
    assert as_float["mode"] == "float" and "kl_to_float" not in as_float
    assert as_float["perplexity"] == pytest.approx(result["float_perplexity"], rel=1e-6)


def test_minilm_w8a8(tmp_path):
    out = tmp_path / "minilm"
    code, _, err = run("compile", "minilm", "--recipe", "w8a8", "--seq-len", "32", "--calibration-samples", "4",
                       "-o", out)
    assert code == 0, err
    assert {"model.qir", "report.json", "report.png"} <= {p.name for p in out.iterdir()}
    code, stdout, err = run("eval", out / "model.qir", "--sentences", "8", "--json")
    assert code == 0, err
    result = json.loads(stdout)
    print(f"minilm w8a8: cosine to float mean {result['cosine_to_float_mean']:.6f}, "
          f"min {result['cosine_to_float_min']:.6f}")
    assert result["mode"] == "fake-quant" and len(result["embeddings"]) == 8
    assert 0.9 < result["cosine_to_float_min"] <= result["cosine_to_float_mean"] < 1.0


def test_smollm2_a16w8(tmp_path):
    out = tmp_path / "smollm2"
    code, _, err = run("compile", "smollm2", "--recipe", "a16w8", "--seq-len", "64", "--calibration-samples", "2",
                       "--report-samples", "0", "-o", out)
    assert code == 0, err
    code, stdout, err = run("eval", out / "model.qir", "--context", "64", "--tokens", "256", "--json")
    assert code == 0, err
    result = json.loads(stdout)
    print("smollm2 a16w8: " + ", ".join(f"{k} {result[k]:.4f}" for k in
                                         ("perplexity", "float_perplexity", "kl_to_float", "top1_agreement")))
    assert result["mode"] == "fake-quant" and result["windows"] == 4
    assert result["kl_to_float"] > 0 and 0.5 < result["top1_agreement"] <= 1
    assert 5 < result["float_perplexity"] < 100 and result["perplexity"] < 2 * result["float_perplexity"]
