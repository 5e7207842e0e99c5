"""Real SmolLM2 truncated to its first two blocks, compiled to integer TFLite: every output bit as
qir's integer rules predict, and `qir-eval --compiled` on the artifact."""
import json

import numpy as np
import pytest

from backends.tflite.legalize import legalize_tflite
from backends.tflite.reference import run_integer
from backends.tflite.runner import run_tflite
from qir.calibration_data import calibration_inputs
from qir.cli import compile as compile_cli
from qir.cli import eval as eval_cli
from qir.frontend import load_model

L = 32


MAX_KL = {"a16w8": 0.05, "w8a8": 0.2}  # two blocks; the full-model numbers are in docs/benchmarks.md


@pytest.fixture(scope="module", params=["a16w8", pytest.param("w8a8", marks=pytest.mark.slow)])
def compiled(request, tmp_path_factory):
    out = tmp_path_factory.mktemp(request.param)
    assert compile_cli.main(["smollm2", "--layers", "2", "--seq-len", str(L), "--recipe", request.param,
                             "--calibration-samples", "4", "--report-samples", "0", "--target", "tflite",
                             "-o", str(out)]) == 0
    return out, request.param


def test_every_logit_is_bit_exact_with_litert(compiled):
    compiled, _ = compiled
    tokens = calibration_inputs(load_model("smollm2", seq_len=L, layers=2), 6)[-1][0]
    runtime = run_tflite((compiled / "model.tflite").read_bytes(), {"tokens": tokens})["logits.out"]
    ours = run_integer(legalize_tflite(load_model(compiled / "model.qir").module), tokens)[0]
    assert runtime.shape == (1, L, 49152)
    assert np.count_nonzero(runtime != ours) == 0


def test_eval_compiled_compares_with_the_float_model(compiled, capsys):
    compiled, recipe = compiled
    for kernels in ("reference", "optimized"):
        assert eval_cli.main(["smollm2", "--layers", "2", "--compiled", str(compiled / "model.tflite"),
                              "--kernels", kernels, "--tokens", "96", "--json"]) == 0
        result = json.loads(capsys.readouterr().out)
        assert result["context"] == L and result["predicted_tokens"] == 93
        assert kernels in result["mode"] or "XNNPACK" in result["mode"]
        assert 0 < result["kl_to_float"] < MAX_KL[recipe] and result["top1_agreement"] > 0.8


def test_eval_compiled_refuses_a_different_context(compiled, capsys):
    compiled, _ = compiled
    assert eval_cli.main(["smollm2", "--compiled", str(compiled / "model.tflite"), "--context", "64"]) == 2
    assert "does not match the compiled model, which takes L = 32" in capsys.readouterr().err
