"""qir-eval --compiled OUT/model.onnx: the QDQ model on onnxruntime's CPU EP (--kernels reference) or on
the HTP simulator (--kernels optimized), compared with the float model it was compiled from."""
import json

import numpy as np
import pytest

from backends.qnn.runner import run_cpu, run_htp
from qir.backend import load_artifact
from qir.cli import compile as compile_cli
from qir.cli import eval as eval_cli
from qir.errors import QirError
from tests.backends.tflite.test_compile_tflite import write_model
from tests.backends.tflite.test_legalize import token_batches

L = 32


@pytest.fixture(scope="module")
def smollm2_one_layer(tmp_path_factory):
    out = tmp_path_factory.mktemp("a16w8")
    assert compile_cli.main(["smollm2", "--layers", "1", "--seq-len", str(L), "--recipe", "a16w8",
                             "--calibration-samples", "4", "--report-samples", "0", "--target", "qnn",
                             "-o", str(out)]) == 0
    return out / "model.onnx"


@pytest.mark.parametrize("kernels", ["reference", pytest.param("optimized", marks=pytest.mark.slow)])
def test_eval_compiled_smollm2_against_float(smollm2_one_layer, kernels, capsys):
    assert eval_cli.main(["smollm2", "--layers", "1", "--compiled", str(smollm2_one_layer), "--kernels", kernels,
                          "--tokens", "64", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["context"] == L and result["predicted_tokens"] == 62
    assert ("CPU EP" if kernels == "reference" else "HTP") in result["mode"]
    # one block of SmolLM2 in a16w8 (measured: KL 0.0013, top-1 0.98 at L = 64)
    assert 0 < result["kl_to_float"] < 0.01 and result["top1_agreement"] > 0.9


def test_eval_compiled_refuses_a_different_context(smollm2_one_layer, capsys):
    assert eval_cli.main(["smollm2", "--layers", "1", "--compiled", str(smollm2_one_layer), "--context", "64"]) == 2
    assert "does not match the compiled model, which takes L = 32" in capsys.readouterr().err


@pytest.fixture(scope="module")
def small_compiled(tmp_path_factory):
    folder = tmp_path_factory.mktemp("small")
    model = write_model(folder)
    assert compile_cli.main([str(model), "--recipe", "a16w8", "--target", "qnn", "--report-samples", "0",
                             "--calibration-data", str(folder / "calibration.npz"), "-o", str(folder / "out")]) == 0
    return folder / "out" / "model.onnx"


def test_artifact_runs_what_the_runners_run(small_compiled):
    model = small_compiled.read_bytes()
    (tokens,) = token_batches(1, seed=5)[0]
    for kernels, expected in (("reference", run_cpu(model, {"tokens": tokens})),
                              ("optimized", run_htp(model, {"tokens": tokens}).outputs)):
        artifact = load_artifact(small_compiled, kernels)
        assert artifact.inputs == {"tokens": (tokens.shape, "int32")}
        got = artifact.run(tokens=tokens)
        assert got.keys() == expected.keys()
        assert all(np.array_equal(got[k], expected[k]) for k in got)


def test_artifact_errors_are_readable(small_compiled, tmp_path):
    with pytest.raises(QirError, match="unknown kernels 'fast'"):
        load_artifact(small_compiled, "fast")
    with pytest.raises(QirError, match=r"takes inputs \['tokens'\], got \['ids'\]"):
        load_artifact(small_compiled, "reference").run(ids=np.zeros((1, 8), np.int32))
    broken = tmp_path / "broken.onnx"
    broken.write_bytes(b"not a model")
    with pytest.raises(QirError, match="broken.onnx: not an ONNX model"):
        load_artifact(broken, "reference")
