"""LPBQ weights (`"scheme": "lpbq"`): 4-bit blocks whose scale is a float per output channel times
an integer 1..16 per block — how the two levels are derived, carried in the IR, printed, parsed,
verified and fake-quantized, and every malformed request."""
import json

import jax.numpy as jnp
import numpy as np
import pytest

import qir
from qir import PassContext, PassManager, QirError, QuantSpec, parse_pipeline
from qir.fake_quant import fake_quant
from qir.quant_params import LPBQ_LEVELS, lpbq_scales
from qir.quant_recipe import load_recipe, recipe_from_dict
from qir.recipes import recipe_pipeline
from tests.passes.tiny_llama import tiny_llama, tokens

LPBQ = {"weights": {"bits": 4, "scheme": "lpbq", "block": 16}, "activations": {"bits": 16}}


def weight(seed=0):
    w = np.random.default_rng(seed).normal(0, 0.2, (6, 64)).astype(np.float32)
    w[1, 16:32] *= 9   # one block far wider than its channel's others
    w[2, 32:48] = 0    # an all-zero block
    w[4] = 0           # an all-zero channel
    return w


def test_the_two_levels_cover_every_block_without_clipping():
    w = weight()
    channel, k = lpbq_scales(w, 16, 4)
    assert channel.shape == (6,) and channel.dtype == np.float32 and k.shape == (6, 4) and k.dtype == np.uint8
    assert k.min() >= 1 and k.max() <= LPBQ_LEVELS
    per_block = np.abs(w.reshape(6, 4, 16)).max(-1) / 7
    # the widest block of every (non-zero) channel gets k = 16: s_c = max_b s_b / 16
    assert (k[[0, 1, 2, 3, 5]].max(axis=1) == LPBQ_LEVELS).all()
    np.testing.assert_allclose(channel[[0, 1, 2, 3, 5]], per_block[[0, 1, 2, 3, 5]].max(1) / 16, rtol=1e-6)
    # k is rounded up: no block's scale is below its own min/max scale, so nothing clips
    scales = k * channel[:, None]
    assert (scales >= per_block * (1 - 1e-6)).all()
    q = np.round(w.reshape(6, 4, 16) / scales[:, :, None])
    assert np.abs(q).max() <= 7
    # and it is the smallest such integer
    assert ((k - 1) * channel[:, None] < per_block)[k > 1].all()
    assert k[2, 2] == 1 and (k[4] == 1).all() and channel[4] == pytest.approx(1 / 16)
    assert k[1, 1] == 16 and k[1, 0] <= 3  # the other blocks of channel 1 keep only 1..2 steps of 16


def test_quantize_carries_both_levels_and_the_text_round_trips(tmp_path):
    recipe = tmp_path / "lpbq.json"
    recipe.write_text(json.dumps(LPBQ))
    m = tiny_llama()
    PassManager(parse_pipeline(f"calibrate{{histogram=false}},quantize{{recipe={recipe}}}")).run(
        m, PassContext(data={"calibration_inputs": tokens(2)}))
    spec = m.constants["blk.0.attn_q"].quant
    assert spec == QuantSpec(4, True, scale="blk.0.attn_q.scale", zero_point=(0,), axis=1, block_size=16,
                             block_scale="blk.0.attn_q.block_scale")
    assert spec.scheme == "lpbq" and str(spec) == "!q<i4 axis=1 block=16 s=@blk.0.attn_q.scale " \
        "k=@blk.0.attn_q.block_scale z=0>"
    assert m.constants["blk.0.attn_q.scale"].type == qir.TensorType((48,), "f32")
    assert m.constants["blk.0.attn_q.block_scale"].type == qir.TensorType((48, 3), "u8")
    text = qir.print_module(m)
    again = qir.parse(text)
    again.weights = m.weights
    assert qir.print_module(again) == text
    qir.verify(again)
    # dce keeps the block scales (only a quant spec names them)
    PassManager(parse_pipeline("dce")).run(m, PassContext())
    assert "blk.0.attn_q.block_scale" in m.constants


def test_fake_quant_is_int4_times_k_times_the_channel_scale():
    w = weight()
    channel, k = lpbq_scales(w, 16, 4)
    spec = QuantSpec(4, True, scale="s", zero_point=(0,), axis=1, block_size=16, block_scale="k")
    got = np.asarray(fake_quant(jnp.asarray(w), spec, jnp.asarray(channel), jnp.asarray((0,)), jnp.asarray(k)))
    scales = (k.astype(np.float32) * channel[:, None]).astype(np.float32)
    q = np.clip(np.round(w.reshape(6, 4, 16) / scales[:, :, None]), -8, 7)
    np.testing.assert_array_equal(got, (q * scales[:, :, None]).reshape(w.shape))


def test_the_interpreter_reads_the_block_scales(tmp_path):
    recipe = tmp_path / "lpbq.json"
    recipe.write_text(json.dumps(LPBQ))
    m = tiny_llama(layers=1)
    PassManager(parse_pipeline(f"calibrate{{histogram=false}},quantize{{recipe={recipe}}}")).run(
        m, PassContext(data={"calibration_inputs": tokens(2)}))
    (ids,) = tokens(1, seed=3)[0]
    before = qir.Interpreter(m, mode="fake-quant").run(ids)[0]
    m.weights.set("blk.0.ffn_down.block_scale", np.full((48, 5), 16, np.uint8))  # coarser blocks
    after = qir.Interpreter(m, mode="fake-quant").run(ids)[0]
    assert not np.array_equal(before, after)


@pytest.mark.parametrize("section,message", [
    ({"bits": 4, "scheme": "lpbq"}, 'weights are 4-bit blocks: give the block size \\("block": 64\\)'),
    ({"bits": 8, "scheme": "lpbq", "block": 32}, "weights are 4-bit, not 8-bit"),
    ({"scheme": "lpbq-ish", "block": 32}, "weight scheme must be one of per-channel, per-tensor, lpbq"),
])
def test_malformed_lpbq_recipes(section, message):
    with pytest.raises(QirError, match=message):
        recipe_from_dict("r", {"weights": section})


def test_lpbq_bits_from_an_override_are_checked_when_quantizing(tmp_path):
    recipe = tmp_path / "r.json"
    recipe.write_text(json.dumps({"weights": {"bits": 8, "block": 16},
                                  "overrides": [{"match": ".*attn_q", "weights": {"scheme": "lpbq"}}]}))
    with pytest.raises(QirError, match="@blk.0.attn_q: \"scheme\": \"lpbq\" weights are 4-bit, not 8-bit"):
        PassManager(parse_pipeline(f"calibrate{{histogram=false}},quantize{{recipe={recipe}}}")).run(
            tiny_llama(), PassContext(data={"calibration_inputs": tokens(1)}))


def test_builtin_lpbq_recipes_and_methods():
    for bits, acts in (("w4a8-lpbq", 8), ("w4a16-lpbq", 16)):
        recipe = load_recipe(bits)
        assert recipe.weights == {"bits": 4, "scheme": "lpbq", "block": 64}
        assert recipe.activations["bits"] == acts
        assert f"quantize{{recipe={bits}}}" in recipe_pipeline(bits)
        assert f"quantize{{recipe={bits},weight_observer=mse}}" in recipe_pipeline(f"quarot-{bits}")
    with pytest.raises(QirError, match="recipe 'mobilequant-w4a16-lpbq': mobilequant learns weight transforms"):
        recipe_pipeline("mobilequant-w4a16-lpbq")


def test_the_verifier_checks_the_block_scales():
    text = """module @m
const @w.scale : f32[4]
const @w.block_scale : u8[4,3]
const @w : f32[4,48] !q<i4 axis=1 block=16 s=@w.scale k=@w.block_scale z=0>

func @main(%x: f32[2,48]) -> f32[2,4] {
  %y = q.linear %x, @w : f32[2,4]
  return %y
}
"""
    qir.verify(qir.parse(text))
    with pytest.raises(QirError, match="LPBQ quant needs 12 block scale\\(s\\) in @w.block_scale, has 8"):
        qir.verify(qir.parse(text.replace("u8[4,3]", "u8[4,2]")))
    with pytest.raises(QirError, match="LPBQ block scales @w.block_scale must be integers"):
        qir.verify(qir.parse(text.replace("u8[4,3]", "f32[4,3]")))
    with pytest.raises(QirError, match="lpbq quant needs 4 scale"):
        qir.verify(qir.parse(text.replace("f32[4]", "f32[12]")))
    with pytest.raises(QirError, match="k=@name"):
        qir.parse(text.replace("k=@w.block_scale", "k=3"))
    with pytest.raises(QirError, match="LPBQ quant spec .* needs axis >= 1"):
        qir.parse(text.replace("axis=1 block=16", "axis=0 block=1"))


def test_learning_passes_refuse_lpbq_weights(tmp_path):
    recipe = tmp_path / "lpbq.json"
    recipe.write_text(json.dumps(LPBQ))
    m = tiny_llama(layers=1)
    ctx = PassContext(data={"calibration_inputs": tokens(2)})
    PassManager(parse_pipeline(f"calibrate{{histogram=false}},quantize{{recipe={recipe}}}")).run(m, ctx)
    with pytest.raises(QirError, match="@blk.0.attn_q has LPBQ scales .* learning passes do not transform or "
                                       "clip LPBQ weights yet"):
        PassManager(parse_pipeline("learn{epochs=1}")).run(m, ctx)
