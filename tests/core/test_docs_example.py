"""docs/examples/fold_mul_by_one.py, the example of docs/writing-a-pass.md: through the pass manager,
and through `qir-opt --plugin` as the page shows it."""
from __future__ import annotations

import importlib.util
import re
import subprocess
import sys
from pathlib import Path

import pytest

import qir
from qir import PASS_REGISTRY

from tests.core.helpers import assert_same_outputs, check_use_lists, clone, restored_pass_registry, run_all

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "docs" / "examples" / "fold_mul_by_one.py"
PAGE = ROOT / "docs" / "writing-a-pass.md"

MODEL = """module @m
const @one : f32[] = 1.0
const @ones : f32[4] = [1.0, 1.0, 1.0, 1.0]
const @almost : f32[4] = [1.0, 1.0000001, 0.9999999, 1.0]
const @two : f32[4] = [2.0, 2.0, 2.0, 2.0]
const @ones.wide : f32[3,4] = [1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0]
const @ones.f16 : f16[4] = [1.0, 1.0, 1.0, 1.0]

func @main(%x: f32[3,4], %row: f32[4]) -> (f32[3,4], f32[3,4], f32[3,4] !q<i8 s=0.1 z=0>, f16[4], f32[3,4]) {
  %a = q.mul %x, @one : f32[3,4]
  %b = q.mul @ones, %a : f32[3,4]
  %c = q.mul %b, @almost : f32[3,4]
  %d = q.mul %c, @two : f32[3,4]
  %wide = q.mul %row, @ones.wide : f32[3,4]
  %half = q.mul @ones.f16, %row : f16[4]
  %requant = q.mul %d, @one : f32[3,4] !q<i8 s=0.1 z=0>
  %act = q.mul %x, %x : f32[3,4]
  return %d, %wide, %requant, %half, %act
}

func @decode(%x: f32[4]) -> f32[4] {
  %y = q.mul %x, @ones : f32[4]
  return %y
}
"""


@pytest.fixture
def example():
    """Import the example file the way a user would; unregister its pass afterwards."""
    with restored_pass_registry():
        spec = importlib.util.spec_from_file_location("fold_mul_by_one_example", EXAMPLE)
        module = importlib.util.module_from_spec(spec)
        sys.modules[spec.name] = module  # dataclasses look their module up while the class is created
        spec.loader.exec_module(module)
        yield module
        del sys.modules[spec.name]


def ops_of(module: qir.Module, func: str = "main") -> list[str]:
    return [f"{op.result.name}={op.name}" for op in module.functions[func].ops]


def test_importing_registers_the_pass(example):
    assert PASS_REGISTRY["fold-mul-by-one"] is example.FoldMulByOnePass
    (p,) = qir.parse_pipeline("fold-mul-by-one{tolerance=1e-6}")
    assert isinstance(p, example.FoldMulByOnePass) and p.tolerance == 1e-6


def test_exact_fold_through_the_pass_manager(example):
    module = qir.parse(MODEL)
    qir.verify(module)
    before = run_all(clone(module), seed=11)
    ctx = qir.PassContext()
    manager = qir.PassManager(qir.parse_pipeline("fold-mul-by-one"))
    manager.run(module, ctx)
    check_use_lists(module)
    # x*1 and 1*x go; ones that are not exactly 1, 2, a broadcast that widens, a dtype change,
    # a requantization and activations stay
    assert ops_of(module) == ["c=q.mul", "d=q.mul", "wide=q.mul", "half=q.mul", "requant=q.mul", "act=q.mul"]
    assert module.main.ops[0].operands[0] is module.main.args[0]
    assert ops_of(module, "decode") == [] and module.functions["decode"].outputs == module.functions["decode"].args
    assert ctx.data["fold-mul-by-one"] == {"folded": 3}
    assert manager.timings[0][2] is True
    assert_same_outputs(before, run_all(module, seed=11))  # exactly the same numbers


def test_tolerance_option(example):
    module = qir.parse(MODEL)
    before = run_all(clone(module), seed=12)
    qir.PassManager(qir.parse_pipeline("fold-mul-by-one{tolerance=1e-6}")).run(module)
    assert ops_of(module) == ["d=q.mul", "wide=q.mul", "half=q.mul", "requant=q.mul", "act=q.mul"]
    assert_same_outputs(before, run_all(module, seed=12), rtol=1e-6, atol=1e-6)
    again = qir.PassManager(qir.parse_pipeline("fold-mul-by-one{tolerance=1e-6}"))
    again.run(module)
    assert again.timings[0][2] is False


def test_bad_tolerance_is_a_user_error(example):
    with pytest.raises(qir.QirError, match="fold-mul-by-one: tolerance must be >= 0, got -1.0"):
        qir.PassManager(qir.parse_pipeline("fold-mul-by-one{tolerance=-1}")).run(qir.parse(MODEL))
    with pytest.raises(qir.QirError, match=r"unknown option 'tol' \(options: tolerance\)"):
        qir.parse_pipeline("fold-mul-by-one{tol=1}")
    with pytest.raises(qir.QirError, match="option tolerance='small' is not a valid float"):
        qir.parse_pipeline("fold-mul-by-one{tolerance=small}")


def test_constants_without_data_are_left_alone(example, tmp_path):
    path = tmp_path / "m.qir"
    path.write_text(MODEL.replace("module @m", "module @m {weights = \"missing.safetensors\"}").replace(
        "const @ones : f32[4] = [1.0, 1.0, 1.0, 1.0]", "const @ones : f32[4]"))
    module = qir.parse_file(path)
    qir.PassManager(qir.parse_pipeline("fold-mul-by-one")).run(module)
    assert "b=q.mul" in ops_of(module) and "a=q.mul" not in ops_of(module)


def test_the_page_shows_the_example_file_verbatim():
    page = PAGE.read_text()
    blocks = re.findall(r"```python\n(.*?)```", page, re.S)
    assert EXAMPLE.read_text() in blocks


# -- the command line, as the page shows it ------------------------------------------------------------------
PAGE_INPUT = """module @m
const @one : f32[] = 1.0
const @two : f32[4] = [2.0, 2.0, 2.0, 2.0]

func @main(%x: f32[2,4]) -> f32[2,4] {
  %a = q.mul %x, @one : f32[2,4]
  %b = q.mul %a, @two : f32[2,4]
  return %b
}
"""
PAGE_OUTPUT = PAGE_INPUT.replace("  %a = q.mul %x, @one : f32[2,4]\n", "").replace("q.mul %a, @two", "q.mul %x, @two")


def qir_opt(*args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "qir.cli.opt", *args], cwd=cwd, capture_output=True, text=True,
                          timeout=300)


def test_page_example_input_and_output_are_on_the_page():
    page = PAGE.read_text()
    assert PAGE_INPUT in page and PAGE_OUTPUT in page


def test_qir_opt_with_the_plugin(tmp_path):
    path = tmp_path / "m.qir"
    path.write_text(PAGE_INPUT)
    done = qir_opt(str(path), "--plugin", "docs/examples/fold_mul_by_one.py", "-p", "fold-mul-by-one",
                   "--print-ir-before", "fold-mul-by-one", "--print-ir-after", "all")
    assert done.returncode == 0, done.stderr
    assert done.stdout == PAGE_OUTPUT
    before, _, after = done.stderr.partition("// ----- IR after fold-mul-by-one -----\n")
    assert before == "// ----- IR before fold-mul-by-one -----\n" + qir.print_module(qir.parse(PAGE_INPUT))
    assert after == PAGE_OUTPUT


def test_qir_opt_plugin_options_output_and_dump_dir(tmp_path):
    path = tmp_path / "m.qir"
    path.write_text(MODEL)
    out, dump = tmp_path / "out.qir", tmp_path / "dump"
    done = qir_opt(str(path), "--plugin", str(EXAMPLE), "-p", "fold-mul-by-one{tolerance=1e-6},dce",
                   "-o", str(out), "--dump-dir", str(dump))
    assert done.returncode == 0, done.stderr
    assert done.stdout == ""
    folded = qir.parse_file(out)
    qir.verify(folded)
    assert ops_of(folded) == ["d=q.mul", "wide=q.mul", "half=q.mul", "requant=q.mul", "act=q.mul"]
    assert sorted(p.name for p in dump.iterdir()) == ["00-input.qir", "01-fold-mul-by-one.qir", "02-dce.qir"]
    assert (dump / "02-dce.qir").read_text() == out.read_text()
    assert (dump / "00-input.qir").read_text() == qir.print_module(qir.parse(MODEL))
    for name in ("00-input.qir", "01-fold-mul-by-one.qir"):
        qir.verify(qir.parse_file(dump / name))


@pytest.mark.parametrize("args,message", [
    (["-p", "fold-mul-by-one"], "error: unknown pass 'fold-mul-by-one'; available passes:"),
    (["--plugin", "docs/examples/nope.py", "-p", "fold-mul-by-one"], "error: plugin file not found"),
    (["--plugin", "docs/examples/fold_mul_by_one.py", "-p", "fold-mul-by-one{tolerance=small}"],
     "error: pass 'fold-mul-by-one': option tolerance='small' is not a valid float"),
    (["--plugin", "docs/examples/fold_mul_by_one.py", "-p", "fold-mul-by-one{tolerance=-1}"],
     "error: fold-mul-by-one: tolerance must be >= 0"),
])
def test_qir_opt_user_errors(tmp_path, args, message):
    path = tmp_path / "m.qir"
    path.write_text(PAGE_INPUT)
    done = qir_opt(str(path), *args)
    assert done.returncode == 2
    assert done.stdout == ""
    assert done.stderr.startswith(message) and done.stderr.count("\n") == 1, done.stderr


def test_qir_opt_main_in_process(tmp_path, capsys):
    from qir.cli.opt import main
    path = tmp_path / "m.qir"
    path.write_text(PAGE_INPUT)
    with restored_pass_registry():
        assert main([str(path), "--plugin", str(EXAMPLE), "-p", "fold-mul-by-one"]) == 0
        assert capsys.readouterr().out == PAGE_OUTPUT
        assert main([str(path), "--plugin", str(EXAMPLE), "-p", "fold-mul-by-one", "--print-ir-after", "rotate"]) == 2
        err = capsys.readouterr().err
        assert err.startswith("error: ") and "'rotate', which is not in the pipeline" in err
