"""Real SmolLM2-135M, truncated to its first blocks, quantized on real text, legalized and run on the
HTP simulator, against the QDQ graph on onnxruntime's CPU EP and qir's fake-quant interpreter.

The token embedding and the tied head are 49152 x 576 = 28M weights each. The default tests cut
the graph to the blocks (input: the embedding of real tokens; output: the final RMS norm, the
hidden state the head reads) to keep simulator graphs under 10M parameters. The simulator does
take the whole truncated model, embedding and logits included (one layer: 32M parameters, ~17 s
per run): that is the slow test. Bounds are the largest differences measured, in LSB of the
output's spec (docs/qnn-backend.md)."""
import numpy as np
import pytest

import qir
from qir.calibration_data import calibration_inputs
from qir.text import pydoc_text

from tests.backends.qnn.helpers import cut, fidelity, quantize

SEQ_LEN = 64
# measured max |HTP - QDQ on CPU|, |QDQ on CPU - fake-quant|, |HTP - fake-quant| in output LSB,
# and the least SQNR of HTP's output against the float model (dB)
BLOCK_BOUNDS = {(1, "w8a8"): (6, 0, 6, 19), (2, "w8a8"): (9, 0, 9, 16),
                (1, "a16w8"): (10, 4, 10, 36), (2, "a16w8"): (19, 10, 19, 36)}
LOGIT_BOUNDS = {"w8a8": (12, 1, 12, 26), "a16w8": (19, 9, 22, 41)}
SLACK = 0.01  # dequantized float32 outputs carry a little rounding


def evaluation_windows(loaded, count):
    """Windows of real text from the first half of Python's docs (calibration reads the second)."""
    ids = loaded.tokenizer.encode(pydoc_text(), add_special_tokens=False).ids
    bos = loaded.info["bos_token_id"] if loaded.info.get("add_bos") else None
    per = SEQ_LEN - (bos is not None)
    return [np.asarray(([bos] if bos is not None else []) + ids[i * per:(i + 1) * per], np.int32)[None]
            for i in range(count)]


def quantized_smollm2(layers, recipe):
    loaded = qir.load_model("smollm2", seq_len=SEQ_LEN, layers=layers)
    quantize(loaded.module, recipe, calibration_inputs(loaded, 4))
    return loaded


def check(result, bounds):
    htp_cpu, cpu_fake, htp_fake, sqnr = bounds
    assert result.htp_vs_cpu <= htp_cpu + SLACK, str(result)
    assert result.cpu_vs_fake_quant <= cpu_fake + SLACK, str(result)
    assert result.htp_vs_fake_quant <= htp_fake + SLACK, str(result)
    assert result.htp_sqnr_db >= sqnr, str(result)


@pytest.mark.parametrize("layers", [1, pytest.param(2, marks=pytest.mark.slow)])
@pytest.mark.parametrize("recipe", ["w8a8", "a16w8"])
def test_smollm2_blocks_on_htp(layers, recipe):
    loaded = quantized_smollm2(layers, recipe)
    module = loaded.module
    gather = next(op for op in module.main.ops if op.name == "q.gather")
    table = np.asarray(module.weights.get(gather.operands[0].name), np.float32)
    windows = evaluation_windows(loaded, 2)
    blocks = cut(module, gather.results[0].name, "output_norm")
    assert blocks.parameter_count() < 10_000_000
    assert sum(op.name == "q.rms_norm" for op in blocks.main.ops) == 2 * layers + 1
    result = fidelity(blocks, [(table[w[0]][None],) for w in windows])
    print(f"SmolLM2 {layers} layer(s), {recipe}, output_norm: {result}")
    check(result, BLOCK_BOUNDS[layers, recipe])


@pytest.mark.slow
@pytest.mark.parametrize("recipe", ["w8a8", "a16w8"])
def test_smollm2_one_layer_logits_on_htp(recipe):
    loaded = quantized_smollm2(1, recipe)
    result = fidelity(loaded.module, [(w,) for w in evaluation_windows(loaded, 2)])
    print(f"SmolLM2 1 layer, {recipe}, logits: {result}")
    check(result, LOGIT_BOUNDS[recipe])
