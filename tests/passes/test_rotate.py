"""rotate: the float function is unchanged (1e-4), the weights are the stated products, the op
inventory grows only with online=true, SmolLM2's linear inputs lose their outlier channels, and
what cannot be rotated is refused in one line."""
import subprocess
import sys
from collections import Counter

import numpy as np
import pytest

import qir
from qir import Builder, Module, PassContext, PassManager, QirError, parse_pipeline
from qir.rotations import rotation
from tests.passes.tiny_llama import tiny_llama, tokens

TOLERANCE = 1e-4

CONFIGS = {
    # grouped-query attention (2 query heads per KV head), head dim 12, widths 48 = 12·4 and 80 = Paley(79)
    "gqa": dict(hidden=48, heads=4, kv_heads=2, intermediate=80),
    # head tied to the embedding table, biases everywhere, head_dim set apart (6 heads of 8 over width 48)
    "tied-biases": dict(hidden=48, heads=6, kv_heads=3, head_dim=8, intermediate=96, tie=True, bias=True),
    # powers of two, one KV head per query head
    "mha": dict(hidden=64, heads=4, kv_heads=4, intermediate=128),
}


def run(module, pipeline):
    ctx = PassContext()
    PassManager(parse_pipeline(pipeline)).run(module, ctx)  # verifies after each pass
    return ctx.data


def max_diff(a, b):
    return float(np.abs(np.asarray(a) - np.asarray(b)).max())


@pytest.mark.parametrize("kind", ["hadamard", "randomized-hadamard", "random"])
@pytest.mark.parametrize("config", list(CONFIGS))
def test_float_outputs_unchanged(config, kind):
    m = tiny_llama(**CONFIGS[config])
    (x,) = tokens(1, seed=1)[0]
    before = qir.interpret(m, x)[0]
    table = m.weights.get("token_embd").copy()
    data = run(m, f"fold-norms,rotate{{kind={kind},seed=7}}")
    assert max_diff(qir.interpret(m, x)[0], before) <= TOLERANCE
    d = table.shape[1]
    np.testing.assert_allclose(m.weights.get("token_embd"), table @ rotation(kind, d, seed=7), atol=1e-6)
    layers = 2
    assert data["rotate"]["readers"] == 5 * layers + 1 and data["rotate"]["writers"] == 2 * layers
    assert data["rotate"]["heads_rotated"] == layers and data["rotate"]["online"] == 0


def test_weights_are_the_stated_products():
    """GQA, biases: E·R1, W·diag(g)·R1 for readers, R2ᵀ per KV head on v rows (then ·R1), R1ᵀ·W·R2
    per query head for o, R1ᵀ·W and R1ᵀ·b for FFN down."""
    m = tiny_llama(hidden=48, heads=4, kv_heads=2, intermediate=80, bias=True)
    w = {name: m.weights.get(name).astype(np.float64) for name in m.constants}
    run(m, "fold-norms,rotate{kind=randomized-hadamard,seed=3}")
    r1, r2 = rotation("randomized-hadamard", 48, 3), rotation("randomized-hadamard", 12, 4)
    g = w["blk.1.attn_norm"]
    got = lambda name: m.weights.get(name).astype(np.float64)
    np.testing.assert_allclose(got("token_embd"), w["token_embd"] @ r1, atol=1e-6)
    np.testing.assert_allclose(got("blk.1.attn_q"), w["blk.1.attn_q"] * g @ r1, atol=1e-6)
    np.testing.assert_allclose(got("blk.1.attn_q.bias"), w["blk.1.attn_q.bias"], atol=0)  # readers keep biases
    v = np.concatenate([r2.T @ w["blk.1.attn_v"][h * 12:(h + 1) * 12] for h in range(2)]) * g @ r1
    np.testing.assert_allclose(got("blk.1.attn_v"), v, atol=1e-6)
    np.testing.assert_allclose(got("blk.1.attn_v.bias"), (w["blk.1.attn_v.bias"].reshape(2, 12) @ r2).ravel(),
                               atol=1e-6)
    o = r1.T @ np.concatenate([w["blk.1.attn_output"][:, h * 12:(h + 1) * 12] @ r2 for h in range(4)], axis=1)
    np.testing.assert_allclose(got("blk.1.attn_output"), o, atol=1e-6)
    np.testing.assert_allclose(got("blk.1.attn_output.bias"), r1.T @ w["blk.1.attn_output.bias"], atol=1e-6)
    np.testing.assert_allclose(got("blk.1.ffn_down"), r1.T @ w["blk.1.ffn_down"], atol=1e-6)
    np.testing.assert_allclose(got("blk.1.ffn_down.bias"), r1.T @ w["blk.1.ffn_down.bias"], atol=1e-6)
    np.testing.assert_allclose(got("output"), w["output"] * w["output_norm"] @ r1, atol=1e-6)


def op_inventory(module):
    return Counter(op.name for op in module.main.ops)


def test_no_op_is_added_unless_online_is_asked_for():
    m = tiny_llama()
    before = op_inventory(m)
    run(m, "fold-norms,rotate")
    assert op_inventory(m) == before
    assert not any(name.startswith("online_rotation") for name in m.constants)


def test_online_rotation_is_one_explicit_linear_per_ffn_down():
    m = tiny_llama()
    (x,) = tokens(1, seed=1)[0]
    want = qir.interpret(m, x)[0]
    before = op_inventory(m)
    data = run(m, "fold-norms,rotate{online=true}")
    assert op_inventory(m) == before + Counter({"q.linear": 2})
    assert data["rotate"]["online"] == 2
    rotations = [op for op in m.main.ops if op.name == "q.linear" and op.operands[1].name == "online_rotation.80"]
    assert [op.result.uses[0][0].result.name for op in rotations] == ["blk0.ffn_out", "blk1.ffn_out"]
    np.testing.assert_allclose(m.weights.get("online_rotation.80"), rotation("hadamard", 80, 2).T, atol=1e-7)
    assert max_diff(qir.interpret(m, x)[0], want) <= TOLERANCE


def test_functions_sharing_weights_are_rotated_once():
    """Two functions (as a prefill and a decode graph would) read the same constants."""
    text = qir.print_module(tiny_llama(seq_len=8, layers=1))
    m = tiny_llama(seq_len=8, layers=1)
    func = text[text.index("func @prefill"):].replace("func @prefill", "func @again")
    m2 = qir.parse(text + "\n" + func)
    for name in m.weights.names():
        m2.weights.set(name, m.weights.get(name))
    (x,) = tokens(1, seq_len=8, seed=1)[0]
    want = qir.interpret(m2, x)[0]
    run(m2, "fold-norms,rotate")
    for name in ("prefill", "again"):
        assert max_diff(qir.interpret(m2, x, function=name)[0], want) <= TOLERANCE


# -- SmolLM2 -------------------------------------------------------------------------------------

def smollm2_check(layers):
    loaded = qir.load_model("smollm2", seq_len=64, layers=layers)
    m = loaded.module
    text = "The interpreter reads a line, parses it into tokens and executes the statement it forms. " * 6
    x = np.asarray([loaded.tokenizer.encode(text).ids[:64]], np.int32)

    def spread(module):  # max |x| / rms of every linear's input: what int8 activation scales must span
        return qir.Interpreter(module).run_observed(
            x, key="spread", observe=lambda name, v: abs(v).max() / (v * v).mean() ** 0.5)

    before, observed = spread(m)
    run(m, "fold-norms,rotate")
    after, rotated = spread(m)
    assert max_diff(after[0], before[0]) <= TOLERANCE * float(np.abs(before[0]).max())
    assert (after[0].argmax(-1) == before[0].argmax(-1)).all()
    readers = [f"blk{i}.{v}" for i in range(layers) for v in ("attn_norm", "ffn_norm")] + ["output_norm"]
    worst = max(float(observed[n]) for n in readers), max(float(rotated[n]) for n in readers)
    print(f"SmolLM2 {layers} layers: max |x| / rms of norm outputs {worst[0]:.1f} -> {worst[1]:.1f}")
    assert worst[1] < 0.5 * worst[0]


def test_smollm2_two_layers():
    smollm2_check(2)


@pytest.mark.slow
def test_smollm2_full_model():
    smollm2_check(None)


# -- what cannot be rotated --------------------------------------------------------------------------

def test_norms_must_be_folded_first():
    with pytest.raises(QirError, match="rotate: %blk0.attn_norm has a norm weight @blk.0.attn_norm that is not 1; "
                                       "run fold-norms first"):
        run(tiny_llama(), "rotate")


def test_a_width_no_construction_covers():
    with pytest.raises(QirError, match="no Hadamard construction covers size 52"):
        run(tiny_llama(hidden=52, heads=2, intermediate=96), "fold-norms,rotate")
    m = tiny_llama(hidden=52, heads=2, intermediate=96)  # head dim 26: random rotations have any size
    (x,) = tokens(1, seed=1)[0]
    want = qir.interpret(m, x)[0]
    run(m, "fold-norms,rotate{kind=random}")
    assert max_diff(qir.interpret(m, x)[0], want) <= TOLERANCE


def residual_graph(op_on_stream: str) -> Module:
    m = Module("stream")
    b = Builder.new_function(m, "main")
    t = b.arg("tokens", (1, 3), "i32")
    x = b.gather(b.const("table", np.ones((5, 4), np.float32)), t, axis=0, name="x")
    ones, w = b.const("ones", np.ones(4, np.float32)), b.const("w", np.eye(4, dtype=np.float32))
    if op_on_stream == "layer_norm":
        n = b.layer_norm(x, ones, b.const("zeros", np.zeros(4, np.float32)), eps=1e-5, name="n")
        b.ret(b.linear(n, w, name="y"))
    elif op_on_stream == "relu":
        b.ret(b.linear(b.relu(x, name="r"), w, name="y"))
    elif op_on_stream == "norm_to_mul":
        n = b.rms_norm(x, ones, eps=1e-5, name="n")
        b.ret(b.mul(n, n, name="sq"))
    elif op_on_stream == "returned":
        b.ret(b.add(x, b.linear(b.rms_norm(x, ones, eps=1e-5, name="n"), w, name="y"), name="h"))
    elif op_on_stream == "add_of_non_linear":
        b.ret(b.linear(b.add(x, b.arg("z", (1, 3, 4)), name="h"), w, name="y"))
    return m


@pytest.mark.parametrize("graph, message", [
    ("layer_norm", "%n is a LayerNorm on the residual stream; it subtracts the mean"),
    ("relu", "%x on the residual stream feeds q.relu \\(%r\\), which has no rotated form"),
    ("norm_to_mul", "the norm %n feeds q.mul \\(%sq\\); after a rotated norm only linears can read"),
    ("returned", "@main returns %h, which is on the residual stream"),
    ("add_of_non_linear", "%h adds %z to the residual stream; only the output of a linear"),
])
def test_what_cannot_be_rotated_is_named(graph, message):
    with pytest.raises(QirError, match="rotate: " + message):
        run(residual_graph(graph), "rotate")


def test_a_layer_norm_encoder_is_refused_with_the_reason():
    from tests.passes.test_smooth import tiny_bert
    with pytest.raises(QirError, match="rotate: .* to the residual stream; .*this model normalizes with LayerNorm, "
                                       "which does not commute with a rotation"):
        run(tiny_bert(), "fold-norms,rotate")


def test_no_embedding_lookup():
    m = Module("plain")
    b = Builder.new_function(m, "main")
    b.ret(b.linear(b.arg("x", (2, 4)), b.const("w", np.eye(4, dtype=np.float32)), name="y"))
    with pytest.raises(QirError, match="rotate: @main has no embedding lookup"):
        run(m, "rotate")


def test_options_are_checked():
    with pytest.raises(QirError, match="rotate: unknown kind 'givens' \\(kinds: hadamard, randomized-hadamard, random\\)"):
        run(tiny_llama(), "fold-norms,rotate{kind=givens}")
    with pytest.raises(QirError, match="seed must be >= 0"):
        run(tiny_llama(), "rotate{seed=-1}")
    m = tiny_llama()
    ctx = PassContext(data={"calibration_inputs": tokens(1)})
    PassManager(parse_pipeline("fold-norms,calibrate{histogram=false},quantize{recipe=w8a8}")).run(m, ctx)
    with pytest.raises(QirError, match="rotate: the module is already quantized"):
        run(m, "rotate")


def test_command_line_error_is_one_line(tmp_path):
    path = tmp_path / "m.qir"
    path.write_text(qir.print_module(residual_graph("layer_norm")))
    proc = subprocess.run([sys.executable, "-m", "qir.cli.opt", str(path), "-p", "rotate{kind=givens}"],
                          capture_output=True, text=True)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert proc.stderr.strip().splitlines() == [
        "error: rotate: unknown kind 'givens' (kinds: hadamard, randomized-hadamard, random)"]
