"""A tiny random llama (2 layers, RMS norms, GQA, RoPE, causal mask, SwiGLU), quantized, legalized
and run on the HTP simulator.

HTP and the QDQ reference differ by about one step on single ops (FullyConnected rounds a few
values the other way); across two layers a one-step difference of an 8-bit value is 257 steps of
the 16-bit residual it is added to, and each RMS norm rescales it, so the logits' bound below is
what that propagation gives, measured value by value in docs/qnn-backend.md."""
import numpy as np
import pytest

import qir
from backends.qnn.emit import emit_onnx
from backends.qnn.legalize import legalize_qnn
from backends.qnn.runner import run_htp
from frontends.llama import LlamaConfig, build_llama, hf_tensor_shapes
from qir.weights import WeightStore

from tests.backends.qnn.helpers import fidelity, quantize

SEQ_LEN, VOCAB = 8, 64
CONFIG = LlamaConfig(vocab_size=VOCAB, hidden_size=32, intermediate_size=48, num_layers=2, num_heads=4,
                     num_kv_heads=2, head_dim=8)
# the largest |HTP - QDQ on CPU| measured on the logits, in LSB (see docs/qnn-backend.md)
HTP_BOUND = {"w8a8": 14, "a16w8": 48}


def tiny_llama() -> qir.Module:
    rng = np.random.default_rng(0)
    weights = WeightStore()
    for name, shape in hf_tensor_shapes(CONFIG).items():
        # norm weights near one, as trained models have them
        data = rng.uniform(0.5, 1.5, shape) if "norm" in name else rng.normal(0, 0.2, shape)
        weights.set(name, data.astype(np.float32))
    return build_llama(CONFIG, weights, SEQ_LEN, name="tiny")


def tokens(count, seed):
    rng = np.random.default_rng(seed)
    return [(rng.integers(0, VOCAB, (1, SEQ_LEN)).astype(np.int32),) for _ in range(count)]


@pytest.mark.parametrize("recipe", ["w8a8", "a16w8"])
def test_tiny_llama_on_htp(recipe):
    module = quantize(tiny_llama(), recipe, tokens(8, seed=0))
    assert sum(op.name == "q.rms_norm" for op in legalize_qnn(module).main.ops) == 5
    result = fidelity(module, tokens(2, seed=5))
    print(f"tiny llama {recipe}: {result}")
    # float32 summation order (jax against onnxruntime), compounded over two layers and five norms
    assert result.cpu_vs_fake_quant <= 14.01
    assert result.htp_vs_cpu <= HTP_BOUND[recipe] + 0.01, str(result)


def test_htp_logits_track_the_float_model():
    """SQNR of HTP's logits against the float model: 16-bit activations must beat 8-bit."""
    float_model = tiny_llama()
    sqnr = {}
    for recipe in ("w8a8", "a16w8"):
        legal = legalize_qnn(quantize(tiny_llama(), recipe, tokens(8, seed=0)))
        model = emit_onnx(legal).SerializeToString()
        signal = noise = 0.0
        for (ids,) in tokens(2, seed=5):
            reference = qir.interpret(float_model, ids)[0].astype(np.float64)
            got = run_htp(model, {"tokens": ids}).outputs["logits.out"].astype(np.float64)
            signal += float((reference ** 2).sum())
            noise += float(((got - reference) ** 2).sum())
        sqnr[recipe] = 10 * np.log10(signal / noise)
    print("SQNR of HTP logits against the float model (dB):", {k: round(v, 1) for k, v in sqnr.items()})
    assert sqnr["a16w8"] > sqnr["w8a8"] > 15


def test_mixed_precision_runs_on_htp():
    """quantize{min_sqnr=...} puts some activations of a w8a8 graph in 16 bits: HTP runs the mixed
    graph (int8 and int16 operands meeting at muls, adds and linears) with no fallback, the QDQ
    graph on CPU matches the fake-quant interpreter, and the logits move closer to float."""
    results = {}
    for least in (0, 42):
        module = tiny_llama()
        ctx = qir.PassContext(data={"calibration_inputs": tokens(8, seed=0)})
        qir.PassManager(qir.parse_pipeline(f"calibrate,quantize{{recipe=w8a8,min_sqnr={least}}}")).run(module, ctx)
        results[least] = (ctx.data["quantize"]["widened"], fidelity(module, tokens(2, seed=5)))
        print(f"min_sqnr={least}: {len(results[least][0])} widened; {results[least][1]}")
    widened, mixed = results[42]
    assert not results[0][0] and {"blk0.ffn_hidden", "blk1.ffn_hidden"} <= set(widened)
    assert mixed.cpu_vs_fake_quant <= 14.01
    assert mixed.htp_vs_cpu <= HTP_BOUND["w8a8"] + 0.01, str(mixed)
    assert mixed.htp_sqnr_db > results[0][1].htp_sqnr_db
