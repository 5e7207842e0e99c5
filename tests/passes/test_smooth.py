"""smooth: which pairs it finds and skips, the scales it folds (golden IR), float outputs unchanged on
tiny random llama and BERT and on real SmolLM2, and the per-pair alpha search on real statistics."""
from pathlib import Path

import numpy as np
import pytest

import qir
from qir import PassContext, PassManager, QirError, parse_pipeline
from qir.calibration_data import calibration_inputs
from qir.weights import WeightStore
from frontends import bert
from frontends.llama import LlamaConfig, build_llama, hf_tensor_shapes
from passes.smooth import find_pairs
from tests.passes.tiny_llama import tiny_llama as shared_tiny_llama

GOLDEN = Path(__file__).parent / "golden"
L = 16


def run_smooth(module, inputs, pipeline="smooth"):
    ctx = PassContext(data={"calibration_inputs": inputs})
    PassManager(parse_pipeline(pipeline)).run(module, ctx)  # verifies after the pass
    return ctx.data["smooth"]


# -- golden IR -------------------------------------------------------------------------------------

def golden_calibration():
    """Rows of ±1 make rms_norm (eps 0) exact: max|X_j| is |attn_norm_j| = [4, 1, 1/4, 1], and the
    columns of wq, wk peak at [1, 4, 1, 1/4], so alpha 0.5 gives s = [2, 1/2, 1/2, 2]: exact folds."""
    x = np.array([[[1, -1, 1, -1], [-1, -1, 1, 1]]], np.float32)
    y = np.random.default_rng(0).standard_normal((1, 2, 4)).astype(np.float32)
    return [(x, y)]


def test_golden_norm_pair_is_folded_and_the_post_norm_pair_left_alone():
    source = (GOLDEN / "smooth.qir").read_text()
    run_line, _, text = source.partition("\n")
    assert run_line == "// RUN: smooth{alpha=0.5}"
    module = qir.parse(text)
    report = run_smooth(module, golden_calibration(), run_line.removeprefix("// RUN:").strip())
    expected = (GOLDEN / "smooth.expected.qir").read_text()
    assert qir.print_module(module) == expected
    assert list(report) == ["attn_norm -> wq, wk"]  # %p also feeds the residual add: not a pair
    assert qir.print_module(qir.parse(expected)) == expected
    before, after = qir.parse(text), qir.parse(expected)
    for seed in range(3):
        rng = np.random.default_rng(seed)
        inputs = [rng.standard_normal((1, 2, 4)).astype(np.float32) for _ in range(2)]
        for want, got in zip(qir.interpret(before, *inputs), qir.interpret(after, *inputs)):
            np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6)


# -- tiny random models ------------------------------------------------------------------------------

def tiny_llama(outlier: float = 1.0):
    """2 layers, 4 query heads sharing 2 key/value heads, biases; `outlier` scales channel 5 of every
    norm weight, the kind of channel smoothing is for."""
    return shared_tiny_llama(hidden=32, intermediate=48, head_dim=8, bias=True, mlp_bias=False, outlier=outlier,
                             spread=0.2, rms_eps=1e-6, name=None, seq_len=L)


def llama_tokens(count, seed=0):
    rng = np.random.default_rng(seed)
    return [(rng.integers(0, 64, (1, L)).astype(np.int32),) for _ in range(count)]


def tiny_bert():
    H, F, V, P = 32, 48, 101, 40
    config = dict(hidden_size=H, num_attention_heads=4, num_hidden_layers=2, intermediate_size=F, vocab_size=V,
                  max_position_embeddings=P, type_vocab_size=2, hidden_act="gelu", layer_norm_eps=1e-12)
    rng = np.random.default_rng(0)
    weights = WeightStore()

    def put(key, shape):
        norm = key.endswith("LayerNorm.weight")
        weights.set(key, (1 + 0.2 * rng.standard_normal(shape) if norm else 0.3 * rng.standard_normal(shape))
                    .astype(np.float32))

    put("embeddings.word_embeddings.weight", (V, H))
    put("embeddings.position_embeddings.weight", (P, H))
    put("embeddings.token_type_embeddings.weight", (2, H))
    put("embeddings.LayerNorm.weight", (H,))
    put("embeddings.LayerNorm.bias", (H,))
    for i in range(2):
        p = f"encoder.layer.{i}."
        for key, shape in ((f"attention.self.{n}", (H, H)) for n in ("query", "key", "value")):
            put(p + key + ".weight", shape)
            put(p + key + ".bias", shape[:1])
        for key, shape in (("attention.output.dense", (H, H)), ("intermediate.dense", (F, H)),
                           ("output.dense", (H, F))):
            put(p + key + ".weight", shape)
            put(p + key + ".bias", shape[:1])
        for key in ("attention.output.LayerNorm", "output.LayerNorm"):
            put(p + key + ".weight", (H,))
            put(p + key + ".bias", (H,))
    return bert.from_hf_config(config, weights, L).module


def bert_inputs(count, seed=0):
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(count):
        ids = rng.integers(1, 101, (1, L)).astype(np.int32)
        mask = np.zeros((1, L), np.int32)
        mask[0, :rng.integers(4, L + 1)] = 1
        out.append((ids, mask))
    return out


def weight_snapshot(module):
    return {name: module.weights.get(name).copy() for name in module.constants}


def test_llama_pairs_and_the_gqa_channel_map():
    module = tiny_llama()
    pairs = {p.name: p for p in find_pairs(module, module.main)}
    expected = []
    for i in range(2):
        expected += [f"blk.{i}.attn_norm -> blk.{i}.attn_q, blk.{i}.attn_k, blk.{i}.attn_v",
                     f"blk.{i}.attn_v -> blk.{i}.attn_output",
                     f"blk.{i}.ffn_norm -> blk.{i}.ffn_gate, blk.{i}.ffn_up",
                     f"blk.{i}.ffn_up -> blk.{i}.ffn_down"]
    assert sorted(pairs) == sorted(expected + ["output_norm -> output"])
    # o input channel (head h, dim d) reads v channel (h // group, d): 4 heads over 2 KV heads of 8
    channels = pairs["blk.0.attn_v -> blk.0.attn_output"].channels
    want = [(h // 2) * 8 + d for h in range(4) for d in range(8)]
    assert channels.tolist() == want
    assert pairs["blk.1.ffn_up -> blk.1.ffn_down"].activation.name == "blk1.ffn_hidden"


def test_tied_embeddings_are_not_scaled_twice():
    """The output head reads the token embedding: a constant used twice is never changed."""
    cfg = LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=48, num_layers=1, num_heads=4,
                      num_kv_heads=2, head_dim=8, tie_embeddings=True)
    rng = np.random.default_rng(0)
    weights = WeightStore()
    for name, shape in hf_tensor_shapes(cfg).items():
        weights.set(name, rng.standard_normal(shape).astype(np.float32))
    module = build_llama(cfg, weights, L)
    names = [p.name for p in find_pairs(module, module.main)]
    assert len(names) == 4 and not any("output" == n.split(" -> ")[1] for n in names)


def test_llama_float_outputs_unchanged():
    module = tiny_llama(outlier=8.0)
    held_out = llama_tokens(3, seed=7)
    before = [qir.interpret(module, *x)[0] for x in held_out]
    weights = weight_snapshot(module)
    report = run_smooth(module, llama_tokens(4))
    assert all(r["alpha"] is not None for r in report.values())  # each pair was smoothed...
    changed = [n for n, w in weights.items() if not np.array_equal(module.weights.get(n), w)]
    assert "blk.0.attn_norm" in changed and "blk.1.ffn_down" in changed  # ...and its weights changed
    for x, want in zip(held_out, before):
        np.testing.assert_allclose(qir.interpret(module, *x)[0], want, rtol=1e-4, atol=1e-4)


def test_bert_smooths_v_to_o_only_and_keeps_its_outputs():
    """Post-norm BERT: every LayerNorm output also feeds a residual add, and the FFN's down input
    comes through GELU, which no scale passes through; only v -> o is a pair."""
    module = tiny_bert()
    held_out = bert_inputs(3, seed=7)
    before = [qir.interpret(module, *x) for x in held_out]
    report = run_smooth(module, bert_inputs(4), "smooth{alpha=0.5}")
    assert sorted(report) == ["blk.0.attn_v -> blk.0.attn_out", "blk.1.attn_v -> blk.1.attn_out"]
    for x, want in zip(held_out, before):
        for w, g in zip(want, qir.interpret(module, *x)):
            np.testing.assert_allclose(g, w, rtol=1e-4, atol=1e-4)


def relative_error(module, float_module, inputs):
    fake, ref = qir.Interpreter(module, "fake-quant"), qir.Interpreter(float_module)
    num = sum(float(np.square(fake.run(*x)[0] - ref.run(*x)[0]).sum()) for x in inputs)
    return num / sum(float(np.square(ref.run(*x)[0]).sum()) for x in inputs)


def test_smoothquant_recipe_beats_rtn_where_an_outlier_channel_dominates():
    from qir.recipes import recipe_pipeline
    held_out = llama_tokens(4, seed=9)
    errors = {}
    for method in ("rtn", "smoothquant"):
        module = tiny_llama(outlier=20.0)
        ctx = PassContext(data={"calibration_inputs": llama_tokens(4)})
        PassManager(parse_pipeline(recipe_pipeline(f"{method}-w8a8"))).run(module, ctx)
        errors[method] = relative_error(module, tiny_llama(outlier=20.0), held_out)
    assert errors["smoothquant"] < 0.8 * errors["rtn"], errors  # measured: 0.033 against 0.046


# -- bad input ---------------------------------------------------------------------------------------

def test_smooth_without_calibration_inputs_is_an_error():
    with pytest.raises(QirError, match="smooth needs calibration inputs"):
        PassManager(parse_pipeline("smooth")).run(tiny_llama())


@pytest.mark.parametrize("options, message", [
    ("alpha=1.5", "alpha <= 1"), ("steps=0", "steps >= 1"), ("search_samples=0", "search_samples >= 1"),
    ("recipe=w3a8", "w3a8"),
])
def test_bad_options_are_named(options, message):
    with pytest.raises(QirError, match=message):
        run_smooth(tiny_llama(), llama_tokens(1), f"smooth{{{options}}}")


def test_smoothing_a_quantized_module_is_an_error():
    module = tiny_llama()
    ctx = PassContext(data={"calibration_inputs": llama_tokens(1)})
    PassManager(parse_pipeline("calibrate{histogram=false},quantize")).run(module, ctx)
    with pytest.raises(QirError, match="already quantized"):
        PassManager(parse_pipeline("smooth")).run(module, ctx)


# -- real SmolLM2 (two blocks) -----------------------------------------------------------------------

@pytest.fixture(scope="module")
def smollm2_smoothed():
    loaded = qir.load_model("smollm2", seq_len=64, layers=2)
    inputs = calibration_inputs(loaded, 6)
    held_out = inputs[4:]
    before = [qir.interpret(loaded.module, *x)[0] for x in held_out]
    report = run_smooth(loaded.module, inputs[:4])
    after = [qir.interpret(loaded.module, *x)[0] for x in held_out]
    return before, after, report


def test_smollm2_float_outputs_unchanged(smollm2_smoothed):
    before, after, report = smollm2_smoothed
    assert len(report) == 8  # 4 pairs per block; the tied output head is left alone
    for want, got in zip(before, after):
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)


def test_smollm2_alpha_differs_per_layer_and_every_pair_gains(smollm2_smoothed):
    """On real statistics the best alpha differs between pairs, and smoothing reduces every pair's
    fake-quantized output error (the search could keep s = 1 for any of them)."""
    _, _, report = smollm2_smoothed
    chosen = [r["alpha"] for r in report.values()]
    assert len(set(chosen)) >= 3, chosen
    assert all(r["alpha"] is not None and r["error"] < r["error_unsmoothed"] for r in report.values()), report


def test_smoothquant_recipes_search_with_the_bits_they_quantize_with():
    from qir.recipes import BITS, recipe_pipeline
    for bits in BITS:
        passes = parse_pipeline(recipe_pipeline(f"smoothquant-{bits}"))
        names = [p.name for p in passes]
        assert names.index("smooth") < names.index("calibrate") < names.index("quantize")
        assert passes[names.index("smooth")].recipe == passes[names.index("quantize")].recipe == bits
