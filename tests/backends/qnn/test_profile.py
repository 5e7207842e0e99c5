"""Cycles per HTP op from the simulator's detailed profile, and qir-eval --profile's prefill estimate."""
import json

import pytest

from backends.qnn.profile import op_name, profile_htp
from qir.backend import CycleProfile, OpCycles, load_artifact
from qir.cli import compile as compile_cli
from qir.cli import eval as eval_cli
from qir.cycles import summarize
from tests.backends.tflite.test_compile_tflite import write_model
from tests.backends.tflite.test_legalize import token_batches


@pytest.fixture(scope="module")
def small_compiled(tmp_path_factory):
    folder = tmp_path_factory.mktemp("small")
    model = write_model(folder)
    assert compile_cli.main([str(model), "--recipe", "a16w8", "--target", "qnn", "--report-samples", "0",
                             "--calibration-data", str(folder / "calibration.npz"), "-o", str(folder / "out")]) == 0
    return folder / "out" / "model.onnx"


def test_one_run_per_op_cycles_add_up_to_the_total(small_compiled):
    (tokens,) = token_batches(1, seed=5)[0]
    profile = profile_htp(small_compiled.read_bytes(), {"tokens": tokens}, runs=1)
    assert profile.total_cycles > 0
    assert sum(op.cycles for op in profile.ops) == profile.total_cycles
    kinds = {op.name: op.kind for op in profile.ops}
    # QNN ops keep the names of the values they compute, and the JSON dump gives their types
    assert kinds["gate"] == "FullyConnected" and kinds["scores"] == "MatMul" and kinds["probs"] == "Softmax"
    assert kinds["Input"] == kinds["Output"] == "transfer"


def test_artifact_profile_is_the_median_run(small_compiled):
    (tokens,) = token_batches(1, seed=5)[0]
    profile = load_artifact(small_compiled, "reference").profile(tokens=tokens)
    assert profile.runs == len(profile.run_totals) == 3 and "SM8650" in profile.source
    assert profile.total_cycles == sorted(profile.run_totals)[1]
    assert sum(op.cycles for op in profile.ops) == profile.total_cycles
    assert any(op.kind == "FullyConnected" and op.cycles > 0 for op in profile.ops)


def test_profile_identifiers():
    assert op_name("gate:OpId_22 (cycles)") == "gate"
    assert op_name("blk0.q_rope.sin:OpId_101 (cycles)") == "blk0.q_rope.sin"
    assert op_name("OpId_62 (cycles)") == "OpId_62"
    assert op_name("Input OpId_2 (cycles)") == "Input"


def test_prefill_estimate_is_tokens_over_cycles_at_the_clock():
    profile = CycleProfile([OpCycles("a", "FullyConnected", 3e6), OpCycles("b", "Softmax", 1e6)], 4e6, 1, "test", [4e6])
    summary = summarize(profile, tokens=256, clock_mhz=1000)
    assert summary["prefill_ms"] == pytest.approx(4.0)
    assert summary["prefill_tokens_per_s"] == pytest.approx(64_000)
    assert summary["by_kind"] == {"FullyConnected": 3e6, "Softmax": 1e6}
    assert [op["name"] for op in summary["top_ops"]] == ["a", "b"]


def test_profile_needs_a_compiled_model(capsys):
    assert eval_cli.main(["smollm2", "--profile"]) == 2
    assert "--profile needs --compiled FILE" in capsys.readouterr().err


@pytest.mark.slow
def test_eval_profile_of_smollm2_one_layer(tmp_path, capsys):
    out = tmp_path / "out"
    assert compile_cli.main(["smollm2", "--layers", "1", "--seq-len", "32", "--recipe", "a16w8", "--target", "qnn",
                             "--calibration-samples", "4", "--report-samples", "0", "-o", str(out)]) == 0
    capsys.readouterr()
    assert eval_cli.main(["smollm2", "--layers", "1", "--compiled", str(out / "model.onnx"), "--profile",
                          "--clock-mhz", "500", "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["tokens"] == 32 and summary["clock_mhz"] == 500
    assert summary["prefill_tokens_per_s"] == pytest.approx(32 / (summary["total_cycles"] / 500e6))
    assert "RmsNorm" in summary["by_kind"] and summary["top_ops"][0]["name"].startswith("logits")
