"""Golden IR files.

- `NAME.qir` whose first line is `// RUN: PIPELINE` is an input: running PIPELINE on it must print
  exactly `NAME.expected.qir`, and both must compute the same outputs on seeded inputs.
- Every golden file (inputs without their RUN line, expected outputs, `roundtrip/*.qir`) is
  canonical text: it verifies and `print(parse(t)) == t`.

To add a case, write the input, check the pipeline's output by hand, and save it as the expected
file (the printer keeps no comments, so expected files have none)."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

import qir

HERE = Path(__file__).parent
ALL = sorted(HERE.rglob("*.qir"))
INPUTS = [p for p in ALL if not p.name.endswith(".expected.qir") and p.read_text().startswith("// RUN:")]
RUN = "// RUN:"


def split_run_line(text: str) -> tuple[str | None, str]:
    """(pipeline, the text after the RUN line) or (None, text)."""
    if not text.startswith(RUN):
        return None, text
    first, _, rest = text.partition("\n")
    return first[len(RUN):].strip(), rest


def rel(path: Path) -> str:
    return str(path.relative_to(HERE))


def test_the_golden_set_is_there():
    assert {p.stem for p in INPUTS} >= {"canonicalize", "dce"}
    assert len(list((HERE / "roundtrip").glob("*.qir"))) >= 3
    for path in INPUTS:
        assert path.with_name(path.stem + ".expected.qir").exists(), f"{rel(path)} has no expected output"


@pytest.mark.parametrize("path", INPUTS, ids=rel)
def test_pipeline_output_matches_expected(path):
    pipeline, _ = split_run_line(path.read_text())
    module = qir.parse_file(path)
    qir.verify(module)
    qir.PassManager(qir.parse_pipeline(pipeline)).run(module)
    expected = path.with_name(path.stem + ".expected.qir").read_text()
    assert qir.print_module(module) == expected


@pytest.mark.parametrize("path", INPUTS, ids=rel)
def test_pipeline_preserves_outputs(path):
    """The golden pipelines only simplify: input and expected output compute the same thing."""
    before = qir.parse_file(path)
    after = qir.parse_file(path.with_name(path.stem + ".expected.qir"))
    assert before.functions.keys() == after.functions.keys()
    for name, func in before.functions.items():
        rng = np.random.default_rng(0)
        inputs = [rng.standard_normal(a.type.shape).astype(a.type.np_dtype) if a.type.is_float
                  else rng.integers(0, 2, size=a.type.shape).astype(a.type.np_dtype) for a in func.args]
        want = qir.interpret(before, *inputs, function=name)
        got = qir.interpret(after, *inputs, function=name)
        assert len(want) == len(got)
        for w, g in zip(want, got):
            np.testing.assert_allclose(g, w, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("path", ALL, ids=rel)
def test_golden_text_is_canonical(path):
    pipeline, text = split_run_line(path.read_text())
    if path.name.endswith(".expected.qir"):
        assert "//" not in text, "expected outputs are printer output: no comments"
    module = qir.parse(text, rel(path), path.parent)
    qir.verify(module)
    assert qir.print_module(module) == text
