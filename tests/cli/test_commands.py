"""The commands doing their job on small inputs."""
import numpy as np

import qir
from qir.cli import compile as compile_cli
from qir.cli import opt as opt_cli

from tests.cli.test_bad_input import GOOD_IR


def test_qir_opt_prints_verified_ir(tmp_path, capsys):
    path = tmp_path / "tiny.qir"
    path.write_text(GOOD_IR)
    assert opt_cli.main([str(path)]) == 0
    assert capsys.readouterr().out == GOOD_IR


def test_qir_opt_writes_output_and_dumps(tmp_path):
    path = tmp_path / "tiny.qir"
    path.write_text(GOOD_IR)
    assert opt_cli.main([str(path), "-p", "canonicalize,dce", "-o", str(tmp_path / "out.qir"),
                         "--dump-dir", str(tmp_path / "dump")]) == 0
    assert (tmp_path / "out.qir").read_text() == GOOD_IR
    assert sorted(p.name for p in (tmp_path / "dump").iterdir()) == ["00-input.qir", "01-canonicalize.qir", "02-dce.qir"]


def test_qir_compile_output_round_trips_and_runs(tmp_path, capsys):
    path = tmp_path / "tiny.qir"
    path.write_text(GOOD_IR)
    assert compile_cli.main([str(path), "-o", str(tmp_path / "out")]) == 0
    assert "parameters" in capsys.readouterr().out
    text = (tmp_path / "out" / "model.qir").read_text()
    module = qir.parse_file(tmp_path / "out" / "model.qir")
    assert qir.print_module(module) == text
    x = np.arange(8, dtype=np.float32).reshape(2, 4)
    expected = x @ np.arange(1, 13, dtype=np.float32).reshape(3, 4).T
    np.testing.assert_allclose(qir.interpret(module, x)[0], expected, rtol=1e-6)
