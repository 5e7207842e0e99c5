"""qir-compile --target qnn --soc SOC: the offline context binary (model_ctx.onnx + model_ctx_qnn.bin)
QNN builds for that SoC, loaded back and run on the HTP simulator; bad SoCs are refused early."""
import numpy as np
import pytest

from backends.qnn.context import binary_soc
from backends.qnn.runner import run_htp
from qir.backend import load_artifact
from qir.cli import compile as compile_cli
from qir.errors import QirError
from tests.backends.tflite.test_compile_tflite import write_model
from tests.backends.tflite.test_legalize import token_batches


def compile_for(folder, soc):
    model = write_model(folder)
    out = folder / "out"
    code = compile_cli.main([str(model), "--recipe", "a16w8", "--target", "qnn", "--soc", soc, "--report-samples", "0",
                             "--calibration-data", str(folder / "calibration.npz"), "-o", str(out)])
    return code, out


@pytest.mark.parametrize("soc", ["SM8650", "SM8750"])
def test_context_binary_runs_back_on_htp(tmp_path, soc):
    code, out = compile_for(tmp_path, soc)
    assert code == 0
    assert sorted(p.name for p in out.iterdir()) == ["model.onnx", "model.qir", "model.qnn.qir", "model.safetensors",
                                                     "model_ctx.onnx", "model_ctx_qnn.bin"]
    assert binary_soc(out / "model_ctx_qnn.bin") == soc  # QNN records the SoC it built for
    artifact = load_artifact(out / "model_ctx.onnx", "optimized")
    assert soc in artifact.description
    (tokens,) = token_batches(1, seed=5)[0]
    got = artifact.run(tokens=tokens)["logits.out"]
    # the same HTP graph as the QDQ model prepared at load time: every output identical
    expected = run_htp((out / "model.onnx").read_bytes(), {"tokens": tokens}, soc=soc).outputs["logits.out"]
    assert got.shape == expected.shape and np.array_equal(got, expected)


def test_context_model_needs_htp_and_its_binary(tmp_path):
    code, out = compile_for(tmp_path, "SM8650")
    assert code == 0
    with pytest.raises(QirError, match="is a context binary for HTP .*only --kernels optimized runs it"):
        load_artifact(out / "model_ctx.onnx", "reference")
    (out / "model_ctx_qnn.bin").unlink()
    with pytest.raises(QirError, match="its context binary model_ctx_qnn.bin is missing"):
        load_artifact(out / "model_ctx.onnx", "optimized")


def test_unknown_soc_is_refused_before_the_model_is_read(tmp_path, capsys):
    code = compile_cli.main([str(tmp_path / "missing.qir"), "--recipe", "a16w8", "--target", "qnn", "--soc", "SM0000",
                             "-o", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err
    assert "unknown SoC 'SM0000' for --target qnn; known: SM8650, SM8750, SC8380XP" in err
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("args, message", [
    (["--target", "tflite", "--soc", "SM8650"], "--target tflite compiles for no particular SoC; leave out --soc"),
    (["--soc", "SM8650"], "--soc needs a --target to compile for"),
])
def test_soc_without_a_target_that_takes_one(tmp_path, capsys, args, message):
    code = compile_cli.main([str(tmp_path / "missing.qir"), "--recipe", "a16w8", *args, "-o", str(tmp_path / "out")])
    assert code == 2 and message in capsys.readouterr().err
