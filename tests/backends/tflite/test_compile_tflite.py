"""qir-compile --recipe ... --target tflite on a user's .qir graph with calibration data in a file."""
import numpy as np

import qir
from backends.tflite.reference import run_integer
from backends.tflite.runner import run_tflite
from qir.cli import compile as compile_cli
from qir.weights import save_weights
from tests.backends.tflite.test_legalize import token_batches, tiny_model


def write_model(folder):
    module = tiny_model()
    module.attrs["weights"] = "tiny.safetensors"
    save_weights(module, folder / "tiny.safetensors")
    (folder / "tiny.qir").write_text(qir.print_module(module))
    np.savez(folder / "calibration.npz", tokens=np.stack([t for (t,) in token_batches(8)]))
    return folder / "tiny.qir"


def test_compile_to_tflite_runs_bit_exact_in_litert(tmp_path):
    model = write_model(tmp_path)
    outdir = tmp_path / "out"
    assert compile_cli.main([str(model), "--recipe", "a16w8", "--target", "tflite", "--calibration-data",
                             str(tmp_path / "calibration.npz"), "-o", str(outdir)]) == 0
    names = sorted(p.name for p in outdir.iterdir())
    assert names == ["model.qir", "model.safetensors", "model.tflite", "model.tflite.qir", "report.json", "report.png"]
    legal = qir.parse_file(outdir / "model.tflite.qir")
    assert {op.name.split(".")[0] for op in legal.main.ops} == {"tfl"}
    tokens = token_batches(1, seed=5)[0][0]
    runtime = run_tflite((outdir / "model.tflite").read_bytes(), {"tokens": tokens})["logits.out"]
    from backends.tflite.legalize import legalize_tflite
    ours = run_integer(legalize_tflite(qir.parse_file(outdir / "model.qir")), tokens)[0]
    assert np.count_nonzero(runtime != ours) == 0


def test_same_command_twice_gives_identical_tflite(tmp_path):
    model = write_model(tmp_path)
    outputs = []
    for run in ("a", "b"):
        assert compile_cli.main([str(model), "--recipe", "w8a8", "--target", "tflite", "--report-samples", "0",
                                 "--calibration-data", str(tmp_path / "calibration.npz"),
                                 "-o", str(tmp_path / run)]) == 0
        outputs.append((tmp_path / run / "model.tflite").read_bytes())
    assert outputs[0] == outputs[1]


def test_op_the_target_cannot_run_leaves_no_output(tmp_path, capsys):
    m = qir.Module("norm")
    b = qir.Builder.new_function(m, "main")
    x = b.arg("x", (2, 4))
    b.ret(b.div(x, b.arg("y", (2, 4)), name="normed"))
    (tmp_path / "norm.qir").write_text(qir.print_module(m))
    np.savez(tmp_path / "cal.npz", x=np.random.default_rng(0).normal(size=(4, 2, 4)).astype(np.float32),
             y=np.random.default_rng(1).uniform(1, 2, size=(4, 2, 4)).astype(np.float32))
    code = compile_cli.main([str(tmp_path / "norm.qir"), "--recipe", "a16w8", "--target", "tflite",
                             "--calibration-data", str(tmp_path / "cal.npz"), "-o", str(tmp_path / "out")])
    assert code == 2
    assert "q.div (%normed) has no TFLite lowering" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_bad_calibration_file_is_named(tmp_path, capsys):
    model = write_model(tmp_path)
    np.savez(tmp_path / "wrong.npz", ids=np.zeros((2, 1, 8), np.int32))
    code = compile_cli.main([str(model), "--recipe", "w8a8", "--calibration-data", str(tmp_path / "wrong.npz"),
                             "-o", str(tmp_path / "out")])
    assert code == 2
    assert "no array for argument(s) tokens" in capsys.readouterr().err
