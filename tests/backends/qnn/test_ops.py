"""One op at a time, in 8- and 16-bit activations: HTP (simulator) against the QDQ graph on
onnxruntime's CPU EP against qir's fake-quant interpreter of the legalized module.

The CPU EP runs the QDQ graph as written (float between QuantizeLinear / DequantizeLinear), so
it must agree with fake-quant to within one step (float summation order). HTP computes each op
in its own fixed point; the bound per op is the largest difference measured here, stated in
docs/qnn-backend.md, and a change in HTP or in qir's lowering that widens it fails the test."""
import numpy as np
import pytest

from qir import Builder, Module

from tests.backends.qnn.helpers import fidelity, quantize

L, D = 8, 16


def graph(build, *arg_shapes, ids=None):
    rng = np.random.default_rng(0)
    m = Module("case")
    b = Builder.new_function(m, "main")
    args = [b.arg(f"x{i}", shape) for i, shape in enumerate(arg_shapes)]
    if ids is not None:
        args.append(b.arg("ids", (1, L), "i32"))
    w = lambda name, *shape: b.const(name, rng.normal(0, 0.3, shape).astype(np.float32))  # noqa: E731
    b.ret(build(b, w, *args))

    def sample(seed):
        r = np.random.default_rng(seed)
        values = [r.normal(0, 2, shape).astype(np.float32) for shape in arg_shapes]
        if ids is not None:
            values.append(r.integers(0, ids, (1, L)).astype(np.int32))
        return tuple(values)
    return m, sample


def rope_tables():
    pos = np.arange(L)[:, None] / (10000 ** (np.arange(0, D, 2) / D))[None, :]
    angles = np.concatenate([pos, pos], axis=-1)
    return np.cos(angles).astype(np.float32), np.sin(angles).astype(np.float32)


CASES = {
    "linear": (lambda b, w, x: b.linear(x, w("w", 24, D), name="y"), [(1, L, D)], None),
    "linear_bias": (lambda b, w, x: b.linear(x, w("w", 24, D), w("bias", 24), name="y"), [(1, L, D)], None),
    "matmul_transpose_b": (lambda b, w, x, y: b.matmul(x, y, transpose_b=True, name="y"),
                           [(1, 2, L, D), (1, 2, L, D)], None),
    "add": (lambda b, w, x, y: b.add(x, y, name="y"), [(1, L, D), (1, L, D)], None),
    "mul": (lambda b, w, x, y: b.mul(x, y, name="y"), [(1, L, D), (1, L, D)], None),
    "mul_constant": (lambda b, w, x: b.mul(x, b.const("c", np.float32(0.125)), name="y"), [(1, L, D)], None),
    "relu": (lambda b, w, x: b.relu(x, name="y"), [(1, L, D)], None),
    "silu": (lambda b, w, x: b.silu(x, name="y"), [(1, L, D)], None),
    "gelu": (lambda b, w, x: b.gelu(x, name="y"), [(1, L, D)], None),
    "gelu_tanh": (lambda b, w, x: b.gelu(x, approximate="tanh", name="y"), [(1, L, D)], None),
    "tanh": (lambda b, w, x: b.tanh(x, name="y"), [(1, L, D)], None),
    "softmax": (lambda b, w, x: b.softmax(x, name="y"), [(1, 2, L, L)], None),
    "masked_softmax": (lambda b, w, x: b.softmax(b.masked_fill(x, b.const("mask", np.tril(np.ones((L, L), bool))),
                                                               value=-1e4, name="masked"), name="y"),
                       [(1, 2, L, L)], None),
    "gather": (lambda b, w, ids: b.gather(w("table", 32, D), ids, name="y"), [], 32),
    "data_movement": (lambda b, w, x, y: b.concat(
        b.transpose(b.reshape(x, shape=(1, L, 2, D // 2), name="r"), perm=(0, 2, 1, 3), name="t"),
        b.slice(y, begin=(0, 0, 0, 0), end=(1, 1, L, D // 2), name="s"), axis=1, name="y"),
        [(1, L, D), (1, 2, L, D)], None),
    "rope_half": (lambda b, w, x: b.rope(x, b.const("cos", rope_tables()[0]), b.const("sin", rope_tables()[1]),
                                         name="y"), [(1, 2, L, D)], None),
    "rms_norm": (lambda b, w, x: b.rms_norm(x, b.const("gamma", np.linspace(0.2, 2.0, D, dtype=np.float32)),
                                            eps=1e-5, name="y"), [(1, L, D)], None),
    "layer_norm": (lambda b, w, x: b.layer_norm(x, b.const("gamma", np.linspace(0.2, 2.0, D, dtype=np.float32)),
                                                w("beta", D), eps=1e-5, name="y"), [(1, L, D)], None),
    "rope_interleaved": (lambda b, w, x: b.rope(x, b.const("cos", rope_tables()[0]), b.const("sin", rope_tables()[1]),
                                                layout="interleaved", name="y"), [(1, 2, L, D)], None),
}

# The largest |HTP - QDQ on CPU| measured, in LSB of the output (onnxruntime-qnn 2.7.0, QNN 2.51, SM8650)
# (1 where not listed). Dequantized float32 outputs carry a little rounding: SLACK absorbs it.
HTP_BOUND = {
    "w8a8": {"relu": 2, "silu": 2, "gelu": 2, "gelu_tanh": 2, "softmax": 4, "masked_softmax": 6},
    "a16w8": {"linear": 2, "linear_bias": 2, "matmul_transpose_b": 3, "gelu": 5, "gelu_tanh": 7, "tanh": 3.4,
              "softmax": 4, "masked_softmax": 6},
}
SLACK = 0.01


@pytest.mark.parametrize("recipe", ["w8a8", "a16w8"])
@pytest.mark.parametrize("case", list(CASES))
def test_op_on_htp(case, recipe):
    build, shapes, ids = CASES[case]
    module, sample = graph(build, *shapes, ids=ids)
    quantize(module, recipe, [sample(seed) for seed in range(4)])
    result = fidelity(module, [sample(seed) for seed in (10, 11)])
    print(f"{case} {recipe}: {result}")
    assert result.cpu_vs_fake_quant <= 1 + SLACK, str(result)
    assert result.htp_vs_cpu <= HTP_BOUND[recipe].get(case, 1) + SLACK, str(result)
