"""calibrate + quantize on a tiny random llama saved as a Hugging Face folder: which tensors get
which spec, the scales, the text round trip, and fake-quant accuracy per recipe."""
import json

import numpy as np
import pytest
import torch
from transformers import AutoModelForCausalLM, LlamaConfig

import qir
from qir import PassContext, PassManager, QirError, parse_pipeline
from qir.quant_params import block_scales, symmetric_scales

SEQ_LEN = 16
VOCAB = 128


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=VOCAB, num_hidden_layers=2, max_position_embeddings=64, hidden_size=64,
                         intermediate_size=96, num_attention_heads=4, num_key_value_heads=2,
                         tie_word_embeddings=False, attention_bias=True,
                         rope_parameters={"rope_type": "default", "rope_theta": 10000.0})
    model = AutoModelForCausalLM.from_config(config, attn_implementation="eager", dtype=torch.float32)
    with torch.no_grad():  # larger than the default init, so that logits and attention are far from uniform
        for name, param in model.named_parameters():
            if "norm" in name:
                param.copy_(1 + 0.3 * torch.randn_like(param))
            else:
                param.normal_(0.0, 0.15 if param.ndim == 2 else 0.1)
    path = tmp_path_factory.mktemp("tiny-llama")
    model.save_pretrained(path)
    return path


def tokens(count: int, seed: int) -> list[tuple]:
    rng = np.random.default_rng(seed)
    return [(rng.integers(0, VOCAB, (1, SEQ_LEN), dtype=np.int32),) for _ in range(count)]


def quantized(folder, recipe: str, pipeline: str = "canonicalize,dce,calibrate,quantize{{recipe={}}}"):
    module = qir.load_model(folder, seq_len=SEQ_LEN).module
    ctx = PassContext()
    ctx.data["calibration_inputs"] = tokens(4, seed=0)
    PassManager(parse_pipeline(pipeline.format(recipe))).run(module, ctx)  # verifies after each pass
    return module


def float_values(func):
    return [a for a in func.args if a.type.is_float] + [r for op in func.ops for r in op.results if r.type.is_float]


def test_w8a8_specs(folder):
    module = quantized(folder, "w8a8")
    func = module.main
    missing = [v.name for v in float_values(func) if v.quant is None]
    assert missing == []  # every float value carries a spec
    ops = {r.name: op for op in func.ops for r in op.results}
    for v in float_values(func):
        op = ops[v.name]
        wide = any(u.name in ("q.rms_norm", "q.softmax", "q.masked_fill") for u, _ in v.uses) or op.name == "q.softmax"
        assert v.quant.bits == (16 if wide else 8), (v.name, op.name, v.quant)
        assert v.quant.scheme == "per-tensor" and v.quant.signed
        if v.quant.bits == 16:
            assert v.quant.zero_point == (0,)
    assert sum(v.quant.bits == 8 for v in float_values(func)) > 10

    weights = [op.operands[1].name for op in func.ops if op.name == "q.linear"]
    assert len(weights) == 2 * 7 + 1 and "blk.0.attn_q" in weights
    for name in weights + ["token_embd"]:
        spec = module.constants[name].quant
        assert (spec.bits, spec.scheme, spec.axis, spec.scale, spec.zero_point) == \
            (8, "per-channel", 0, f"{name}.scale", (0,))
        np.testing.assert_array_equal(np.asarray(module.weights.get(f"{name}.scale")),
                                      symmetric_scales(np.asarray(module.weights.get(name)), 0, 8))

    biases = [op for op in func.ops if op.name == "q.linear" and len(op.operands) == 3]
    assert len(biases) == 2 * 4  # attention_bias: q, k, v, o
    for op in biases:
        x, w, b = op.operands
        spec = module.constants[b.name].quant
        assert (spec.bits, spec.axis, spec.scale) == (32, 0, f"{b.name}.scale")
        expected = np.float32(x.quant.scale[0]) * np.asarray(module.weights.get(f"{w.name}.scale"))
        np.testing.assert_allclose(np.asarray(module.weights.get(f"{b.name}.scale")), expected, rtol=1e-7)

    # other float constants: norm weights, rope tables, the attention scale: per-tensor symmetric int16
    for name in ("blk.0.attn_norm", "output_norm", "rope_cos", "attn_scale"):
        spec = module.constants[name].quant
        data = np.abs(np.asarray(module.weights.get(name), np.float32)).max()
        assert (spec.bits, spec.scheme, spec.zero_point) == (16, "per-tensor", (0,))
        assert spec.scale[0] == pytest.approx(data / 32767)
    assert module.constants["causal_mask"].quant is None  # not float


def test_round_trip_through_text_and_safetensors(folder, tmp_path):
    from qir.weights import save_weights
    module = quantized(folder, "w4a8", "canonicalize,dce,calibrate,quantize{{recipe={}}}")
    module.attrs["weights"] = "model.safetensors"
    save_weights(module, tmp_path / "model.safetensors")
    text = qir.print_module(module)
    assert "!q<i4 axis=0 s=@blk.0.attn_q.scale z=0>" in text and "!q<i32 axis=0 s=@blk.0.attn_q.bias.scale z=0>" in text
    (tmp_path / "model.qir").write_text(text)
    parsed = qir.parse_file(tmp_path / "model.qir")
    qir.verify(parsed)
    assert qir.print_module(parsed) == text
    x = tokens(1, seed=9)[0]
    a = qir.Interpreter(module, mode="fake-quant").run(*x)[0]
    b = qir.Interpreter(parsed, mode="fake-quant").run(*x)[0]
    np.testing.assert_array_equal(a, b)


def test_per_block_int4_weights(folder, tmp_path):
    path = tmp_path / "w4-block.json"
    path.write_text(json.dumps({"weights": {"bits": 4, "block": 16}, "activations": {"bits": 16},
                                "overrides": [{"match": "output", "weights": {"bits": 8}},  # lm_head per channel
                                              {"match": "output|logits", "skip": True}]}))  # then float
    module = quantized(folder, str(path))
    spec = module.constants["blk.0.ffn_down"].quant  # [64, 96]: 6 blocks of 16 along the input dim
    assert (spec.bits, spec.scheme, spec.axis, spec.block_size, spec.scale) == (4, "per-block", 1, 16, "blk.0.ffn_down.scale")
    scales = np.asarray(module.weights.get("blk.0.ffn_down.scale"))
    assert scales.shape == (64, 6)
    np.testing.assert_array_equal(scales, block_scales(np.asarray(module.weights.get("blk.0.ffn_down")), 1, 16, 4))
    assert module.constants["output"].quant is None  # skip wins over the earlier override
    assert module.main.outputs[0].quant is None
    # per-block weights leave their bias float (no single per-channel weight scale to multiply)
    assert module.constants["blk.0.attn_q.bias"].quant is None
    qir.verify(module)


def test_block_that_does_not_divide_the_input_dim(folder, tmp_path):
    path = tmp_path / "w4-block24.json"
    path.write_text(json.dumps({"weights": {"bits": 4, "block": 24}}))  # 64 % 24 != 0
    with pytest.raises(QirError, match=r"input dimension 64 is not a multiple of block 24"):
        quantized(folder, str(path))


def test_fake_quant_error_grows_as_bits_shrink(folder):
    held_out = tokens(3, seed=5)
    errors = {}
    for recipe in ("a16w8", "w8a8", "w4a16", "w4a8"):
        module = quantized(folder, recipe)
        float_run, fake_run = qir.Interpreter(module), qir.Interpreter(module, mode="fake-quant")
        ref = np.concatenate([float_run.run(*x)[0] for x in held_out])
        out = np.concatenate([fake_run.run(*x)[0] for x in held_out])
        errors[recipe] = float(np.linalg.norm(out - ref) / np.linalg.norm(ref))
    print("relative logit error vs float: " + ", ".join(f"{k} {v:.4f}" for k, v in errors.items()))
    assert 0 < errors["a16w8"] < 0.1
    assert errors["a16w8"] < errors["w8a8"] < errors["w4a8"]
    assert errors["a16w8"] < errors["w4a16"] < errors["w4a8"]
    assert errors["w4a8"] < 0.5


def test_int16_activations_alone_are_nearly_exact_on_the_calibration_data(folder, tmp_path):
    """Weights left float: what remains is int16 activations (and int16 constants), whose ranges
    cover the calibration inputs exactly, so nothing clips there."""
    path = tmp_path / "a16-only.json"
    path.write_text(json.dumps({"activations": {"bits": 16},
                                "overrides": [{"match": r"blk\..*|token_embd|output", "skip": True}]}))
    module = quantized(folder, str(path))
    assert module.constants["blk.0.attn_q"].quant is None and module.main.outputs[0].quant.bits == 16
    float_run, fake_run = qir.Interpreter(module), qir.Interpreter(module, mode="fake-quant")
    ref = np.concatenate([float_run.run(*x)[0] for x in tokens(4, seed=0)])
    out = np.concatenate([fake_run.run(*x)[0] for x in tokens(4, seed=0)])
    error = float(np.linalg.norm(out - ref) / np.linalg.norm(ref))
    print(f"int16 activations only, on the calibration inputs: relative logit error {error:.2e}")
    assert 0 < error < 2e-3


def test_quantize_needs_calibrate(folder):
    module = qir.load_model(folder, seq_len=SEQ_LEN).module
    with pytest.raises(QirError, match="put 'calibrate' before it"):
        PassManager(parse_pipeline("quantize{recipe=w8a8}")).run(module, PassContext())


def test_quantize_twice_is_an_error(folder):
    module = quantized(folder, "w8a8")
    ctx = PassContext()
    ctx.data["calibration_inputs"] = tokens(2, seed=0)
    with pytest.raises(QirError, match="already quantized"):
        PassManager(parse_pipeline("calibrate,quantize{recipe=w8a8}")).run(module, ctx)


def test_quantize_observer_option(folder):
    a = quantized(folder, "a16w8", "canonicalize,dce,calibrate,quantize{{recipe={},observer=percentile}}")
    b = quantized(folder, "a16w8")
    scales = lambda m: [v.quant.scale[0] for v in float_values(m.main)]  # noqa: E731
    assert sum(x < y for x, y in zip(scales(a), scales(b))) > 0  # percentile clips some ranges
    with pytest.raises(QirError, match="unknown observer 'kl'"):
        quantized(folder, "a16w8", "canonicalize,dce,calibrate,quantize{{recipe={},observer=kl}}")


@pytest.mark.parametrize("recipe", ["w4a8", "w4a16"])
def test_4bit_configurations_keep_the_output_head_int8(folder, recipe):
    module = quantized(folder, recipe)
    head = module.constants["output"].quant  # picked by {"feeds": "logits"}, not by its name
    assert (head.bits, head.scheme, head.block_size) == (8, "per-channel", None)
    assert module.constants["token_embd"].quant.bits == 4  # untied: the embedding table is not the head
    assert {module.constants[f"blk.{i}.{w}"].quant.bits for i in range(2) for w in ("attn_q", "ffn_down")} == {4}


def test_weights_selected_by_the_op_reading_them(folder, tmp_path):
    path = tmp_path / "gather8.json"  # block null: this weight is per channel although the default has blocks
    path.write_text(json.dumps({"weights": {"bits": 4, "block": 16}, "activations": {"bits": 16},
                                "overrides": [{"consumer": "q.gather", "weights": {"bits": 8, "block": None}}]}))
    module = quantized(folder, str(path))
    table, down = module.constants["token_embd"].quant, module.constants["blk.0.ffn_down"].quant
    assert (table.bits, table.scheme) == (8, "per-channel") and (down.bits, down.scheme) == (4, "per-block")
