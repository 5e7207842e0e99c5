"""Bad input on the TFLite path, through qir-compile: quant specs no kernel runs, impossible recipes,
a model too large for one flatbuffer. Each is exit code 2 and `error: ...` naming the tensor or op,
the rule and (from a .qir file) file:line:col; no traceback; the output folder is left as it was."""
import json
import subprocess
import sys

import numpy as np
import pytest

from backends.tflite import size_limit
from backends.tflite.emit import emit_tflite
from backends.tflite.legalize import legalize_tflite
from qir.cli import compile as compile_cli
from qir.errors import QirError
from tests.backends.tflite.test_compile_tflite import write_model
from tests.backends.tflite.test_legalize import quantized

# a hand-quantized graph: {x}, {w} and {y} are the specs of the input, the weight and the result
SPECS_IR = """module @specs
const @w : f32[3,4] {w} = [1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0, 9.0, 10.0, 11.0, 12.0]

func @main(%x: f32[2,4] {x}) -> f32[2,3] {y} {{
  %y = q.linear %x, @w : f32[2,3] {y}
  return %y
}}
"""
GOOD = {"x": "!q<i8 s=0.1 z=0>", "w": "!q<i8 s=0.05 z=0>", "y": "!q<i8 s=0.5 z=-3>"}


def compile_in_process(capsys, *args):
    """qir-compile in this process (a traceback would fail the test); returns (code, stderr)."""
    code = compile_cli.main([str(a) for a in args])
    err = capsys.readouterr().err
    assert "Traceback" not in err, err
    return code, err


def assert_one_line_error(code, err, *needles):
    assert code == 2, err
    assert err.startswith("error: ") and len(err.strip().splitlines()) == 1, err
    for needle in needles:
        assert needle in err, err


def write_specs(tmp_path, **specs):
    path = tmp_path / "specs.qir"
    path.write_text(SPECS_IR.format(**{**GOOD, **specs}))
    return path


def test_good_hand_quantized_graph_compiles(tmp_path, capsys):
    """The base of the cases below is itself fine: each case breaks exactly one rule."""
    code, err = compile_in_process(capsys, write_specs(tmp_path), "-p", "canonicalize", "--report-samples", "0",
                                   "--target", "tflite", "-o", tmp_path / "out")
    assert code == 0, err
    assert (tmp_path / "out" / "model.tflite").exists()


@pytest.mark.parametrize("specs, rule, why", [
    ({"w": "!q<i9 s=0.05 z=0>"}, "weight-bits", "a grid of 2 to 8 bits fits, 9 bits do not"),
    ({"w": "!q<i8 s=0.05 z=2>"}, "weight-zero-point", "the runtime ignores a weight zero point"),
    ({"w": "!q<u8 s=0.05 z=0>"}, "weight-signed", "unsigned u8 values would wrap"),
    ({"y": "!q<i16 s=0.01 z=3>"}, "int16-zero-point", "int16 kernels require zero point 0 (symmetric), this has 3"),
    ({"y": "!q<i3 s=0.5 z=0>"}, "activation-bits", "no kernel runs 3-bit ones"),
    ({"y": "!q<u8 s=0.5 z=0>"}, "activation-signed", "u8 is not"),
])
def test_spec_no_kernel_runs_is_located(tmp_path, capsys, specs, rule, why):
    outdir = tmp_path / "out"
    code, err = compile_in_process(capsys, write_specs(tmp_path, **specs), "-p", "canonicalize",
                                   "--report-samples", "0", "--target", "tflite", "-o", outdir)
    assert_one_line_error(code, err, f"specs.qir:5:3: ", f": {rule}: ", why, *specs.values())
    assert not outdir.exists()


def test_argument_spec_is_named(tmp_path, capsys):
    code, err = compile_in_process(capsys, write_specs(tmp_path, x="!q<i16 s=0.01 z=5>"), "-p", "canonicalize",
                                   "--report-samples", "0", "--target", "tflite", "-o", tmp_path / "out")
    assert_one_line_error(code, err, "argument %x !q<i16 s=0.01 z=5>: int16-zero-point")


def test_every_broken_spec_is_listed_by_the_command(tmp_path):
    """As a user runs it: a summary line, then one line per broken rule, exit code 2."""
    model = write_specs(tmp_path, w="!q<i9 s=0.05 z=1>", y="!q<i16 s=0.01 z=3>")
    proc = subprocess.run([sys.executable, "-m", "qir.cli.compile", str(model), "-p", "canonicalize",
                           "--report-samples", "0", "--target", "tflite", "-o", str(tmp_path / "out")],
                          capture_output=True, text=True)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert lines[0] == "error: tflite: quant specs the integer kernels cannot run (3 violations):"
    assert [line.split(": ")[2] for line in lines[1:]] == ["int16-zero-point", "weight-bits", "weight-zero-point"]
    assert all(line.startswith(f"  {model}:5:3: ") for line in lines[1:])
    assert not (tmp_path / "out").exists()


def test_one_bit_spec_is_a_parse_error(tmp_path, capsys):
    code, err = compile_in_process(capsys, write_specs(tmp_path, w="!q<i1 s=0.05 z=0>"), "-p", "canonicalize",
                                   "--report-samples", "0", "--target", "tflite", "-o", tmp_path / "out")
    assert code == 2 and err.startswith("error: ") and "specs.qir:2:" in err
    assert "quantization to 1 bits is not supported" in err


# -- recipes ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("recipe, message", [
    ({"activations": {"bits": 3}}, "3-bit activations are not supported (supported: 8, 16)"),
    ({"weights": {"bits": 1}}, "1-bit weights are not supported (supported: 4, 8)"),
    ({"weights": {"bits": 9}}, "9-bit weights are not supported (supported: 4, 8)"),
    ({"weights": {"bits": "8"}}, "'weights' bits must be an integer, got '8'"),
    ({"activations": {"bits": 8.0}}, "'activations' bits must be an integer, got 8.0"),
    ({"activations": {"observer": ["minmax"]}}, "unknown observer '['minmax']'"),
    ({"activations": {"bits": 16, "symmetric": False}}, "unknown key(s) symmetric in 'activations'"),
    ({"weights": {"scheme": "per-row"}}, "weight scheme must be one of per-channel, per-tensor, lpbq, got 'per-row'"),
    ({"weights": {"scheme": "per-tensor", "block": 4}}, "weights are either per-tensor or per-block"),
    ({"weights": {"scheme": "per-tensor"}, "overrides": [{"match": "up", "weights": {"block": 4}}]},
     "@up: the recipe asks for per-tensor and per-block (block 4) weights at once"),
])
def test_impossible_recipe_is_named(tmp_path, capsys, recipe, message):
    model = write_model(tmp_path)
    (tmp_path / "bad.json").write_text(json.dumps(recipe))
    outdir = tmp_path / "out"
    code, err = compile_in_process(capsys, model, "--recipe", tmp_path / "bad.json", "--target", "tflite",
                                   "--report-samples", "0", "--calibration-data", tmp_path / "calibration.npz",
                                   "-o", outdir)
    assert_one_line_error(code, err, message)
    assert not outdir.exists()


def test_recipe_that_is_a_folder_is_named(tmp_path, capsys):
    model = write_model(tmp_path)
    (tmp_path / "recipe.json").mkdir()
    code, err = compile_in_process(capsys, model, "--recipe", tmp_path / "recipe.json", "--report-samples", "0",
                                   "--calibration-data", tmp_path / "calibration.npz", "-o", tmp_path / "out")
    assert_one_line_error(code, err, "recipe.json: cannot be read")


def test_per_block_weights_are_refused_for_tflite(tmp_path, capsys):
    """4-bit blocks quantize fine (other targets have blockwise kernels); tflite names each weight."""
    model = write_model(tmp_path)
    (tmp_path / "blocks.json").write_text(json.dumps({"weights": {"bits": 4, "block": 4}}))
    code, err = compile_in_process(capsys, model, "--recipe", tmp_path / "blocks.json", "--target", "tflite",
                                   "--report-samples", "0", "--calibration-data", tmp_path / "calibration.npz",
                                   "-o", tmp_path / "out")
    assert code == 2
    lines = err.strip().splitlines()
    assert lines[0] == "error: tflite: quant specs the integer kernels cannot run (4 violations):"
    for line, weight in zip(lines[1:], ("@up", "@gate", "@down", "@head")):
        assert f"weight {weight} of q.linear" in line and "block=4" in line and ": weight-per-channel: " in line
        assert "no per-block scales" in line
    assert not (tmp_path / "out").exists()


# -- the flatbuffer limit --------------------------------------------------------------------------

def test_model_over_the_flatbuffer_limit_is_refused_and_leaves_the_folder_as_it_was(tmp_path, capsys, monkeypatch):
    model = write_model(tmp_path)
    outdir = tmp_path / "out"
    outdir.mkdir()
    (outdir / "model.tflite").write_bytes(b"an earlier file")
    monkeypatch.setattr(size_limit, "FLATBUFFER_LIMIT", 20_000)
    code, err = compile_in_process(capsys, model, "--recipe", "w8a8", "--target", "tflite", "--report-samples", "0",
                                   "--calibration-data", tmp_path / "calibration.npz", "-o", outdir)
    assert_one_line_error(code, err, "over the flatbuffer limit of 19.5 KiB (20000 bytes, 32-bit offsets)",
                          "largest tensors: @embd 512 B, @up ")
    assert sorted(p.name for p in outdir.iterdir()) == ["model.tflite"]
    assert (outdir / "model.tflite").read_bytes() == b"an earlier file"
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".out.")]  # no staging folder left


def test_real_limit_is_two_gib():
    assert size_limit.FLATBUFFER_LIMIT == 2 ** 31


@pytest.mark.parametrize("recipe", ["w8a8", "a16w8"])
def test_just_under_the_limit_emits_and_just_over_does_not(monkeypatch, recipe):
    legal = legalize_tflite(quantized(recipe))
    bound = size_limit.file_size_bound(legal.main)
    monkeypatch.setattr(size_limit, "FLATBUFFER_LIMIT", bound)
    data = emit_tflite(legal)
    print(f"{recipe}: {len(data)} bytes written, bound {bound}")
    assert len(data) <= bound  # the bound never lets through a file the flatbuffer cannot hold
    monkeypatch.setattr(size_limit, "FLATBUFFER_LIMIT", bound - 1)
    with pytest.raises(QirError, match=f"up to .* \\({bound} bytes\\), over the flatbuffer limit"):
        emit_tflite(legal)


def test_bound_is_tight_when_weights_dominate():
    """For a model whose bytes are weights (any model near 2 GiB) the bound is within a few
    percent of the file: the limit refuses only what cannot be written."""
    from qir import Builder, Module, PassContext, PassManager, parse_pipeline
    rng = np.random.default_rng(0)
    m = Module("wide")
    b = Builder.new_function(m, "main")
    x = b.arg("x", (1, 512))
    h = b.linear(x, b.const("w1", rng.normal(size=(1024, 512)).astype(np.float32)), name="h")
    b.ret(b.linear(h, b.const("w2", rng.normal(size=(256, 1024)).astype(np.float32)), name="y"))
    PassManager(parse_pipeline("calibrate,quantize{recipe=w8a8}")).run(
        m, PassContext(data={"calibration_inputs": [(rng.normal(size=(1, 512)).astype(np.float32),)]}))
    legal = legalize_tflite(m)
    size, bound = len(emit_tflite(legal)), size_limit.file_size_bound(legal.main)
    print(f"file {size} bytes, bound {bound} (+{(bound - size) / size:.1%})")
    assert size <= bound < 1.05 * size
