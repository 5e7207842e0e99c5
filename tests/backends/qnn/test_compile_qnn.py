"""qir-compile --recipe ... --target qnn on a user's .qir graph: model.onnx runs on the HTP
simulator; what HTP cannot run is an error before any file is written."""
import json

import numpy as np

import qir
from backends.qnn.legalize import legalize_qnn
from backends.qnn.runner import run_htp
from qir.cli import compile as compile_cli
from tests.backends.tflite.test_compile_tflite import write_model
from tests.backends.tflite.test_legalize import token_batches

# |HTP - fake-quant of the legalized module| on this graph's logits, in LSB (measured: 13)
HTP_BOUND = 13


def test_compile_to_qnn_runs_on_htp(tmp_path):
    model = write_model(tmp_path)
    outdir = tmp_path / "out"
    assert compile_cli.main([str(model), "--recipe", "a16w8", "--target", "qnn", "--report-samples", "0",
                             "--calibration-data", str(tmp_path / "calibration.npz"), "-o", str(outdir)]) == 0
    assert sorted(p.name for p in outdir.iterdir()) == ["model.onnx", "model.qir", "model.qnn.qir",
                                                        "model.safetensors"]
    assert qir.print_module(qir.parse_file(outdir / "model.qnn.qir")).count("qnn.convert") > 0
    legal = legalize_qnn(qir.parse_file(outdir / "model.qir"))
    reference = qir.Interpreter(legal, mode="fake-quant")
    scale = np.float32(legal.main.outputs[0].quant.scale[0])
    worst = 0.0
    for (tokens,) in token_batches(2, seed=5):
        got = run_htp((outdir / "model.onnx").read_bytes(), {"tokens": tokens}).outputs["logits.out"]
        worst = max(worst, float(np.abs(got - reference.run(tokens)[0]).max() / scale))
    print(f"qir-compile --target qnn, a16w8: HTP vs fake-quant {worst:.4f} LSB")
    assert worst <= HTP_BOUND + 0.01


def test_4bit_blocks_are_refused_before_any_file(tmp_path, capsys):
    model = write_model(tmp_path)
    recipe = tmp_path / "w4-blocks.json"
    recipe.write_text(json.dumps({"weights": {"bits": 4, "block": 8}, "activations": {"bits": 16}}))
    code = compile_cli.main([str(model), "--recipe", str(recipe), "--target", "qnn", "--report-samples", "0",
                             "--calibration-data", str(tmp_path / "calibration.npz"), "-o", str(tmp_path / "out")])
    assert code == 2
    assert "quantized in blocks of 8; HTP runs 4-bit blocks correctly only in the LPBQ pattern" in \
        capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_op_htp_cannot_run_is_refused_before_any_file(tmp_path, capsys):
    m = qir.Module("div")
    b = qir.Builder.new_function(m, "main")
    b.ret(b.div(b.arg("x", (2, 4)), b.arg("y", (2, 4)), name="ratio"))
    (tmp_path / "div.qir").write_text(qir.print_module(m))
    rng = np.random.default_rng(0)
    np.savez(tmp_path / "cal.npz", x=rng.normal(size=(4, 2, 4)).astype(np.float32),
             y=rng.uniform(1, 2, size=(4, 2, 4)).astype(np.float32))
    code = compile_cli.main([str(tmp_path / "div.qir"), "--recipe", "a16w8", "--target", "qnn",
                             "--calibration-data", str(tmp_path / "cal.npz"), "-o", str(tmp_path / "out")])
    assert code == 2
    err = capsys.readouterr().err
    assert "div.qir:" in err and "qnn: q.div (%ratio) has no HTP lowering" in err and "Traceback" not in err
    assert not (tmp_path / "out").exists()
