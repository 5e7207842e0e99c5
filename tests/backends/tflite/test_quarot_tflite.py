"""quarot compiled to integer TFLite: the same operator inventory as rtn (the rotations live in the
weights; online=true adds exactly one FULLY_CONNECTED per FFN down), and LiteRT's reference
kernels compute every output bit as qir's integer rules predict."""
from collections import Counter

import numpy as np
import pytest

from backends.tflite.reference import run_integer
from backends.tflite.runner import run_tflite
from qir import PassContext, PassManager, parse_pipeline
from qir.backend import get_backend
from qir.passes import before_calibration
from qir.recipes import recipe_pipeline
from tests.passes.tiny_llama import tiny_llama, tokens


def compile_tflite(pipeline: str, tmp_path):
    backend = get_backend("tflite")
    passes = before_calibration(parse_pipeline(pipeline), parse_pipeline(backend.prepare_pipeline))
    m = tiny_llama()
    PassManager(passes).run(m, PassContext(data={"calibration_inputs": tokens(4)}))
    legal = backend.legalize(m)
    (path,) = [p for p in backend.emit(legal, tmp_path) if p.suffix == ".tflite"]
    return legal, path


def inventory(legal):
    return Counter(op.name for op in legal.main.ops)


@pytest.fixture(scope="module")
def rtn(tmp_path_factory):
    return compile_tflite(recipe_pipeline("rtn-w8a8"), tmp_path_factory.mktemp("rtn"))


def test_quarot_emits_the_ops_rtn_emits_and_stays_bit_exact(rtn, tmp_path):
    legal, path = compile_tflite(recipe_pipeline("quarot-w8a8"), tmp_path)
    assert inventory(legal) == inventory(rtn[0])
    (x,) = tokens(1, seed=9)[0]
    runtime = run_tflite(path.read_bytes(), {"tokens": x})
    (ours,) = run_integer(legal, x)
    assert np.count_nonzero(next(iter(runtime.values())) != ours) == 0


def test_online_rotation_is_one_more_fully_connected_per_layer(rtn, tmp_path):
    pipeline = recipe_pipeline("quarot-w8a8").replace("rotate{kind=hadamard}", "rotate{kind=hadamard,online=true}")
    legal, _ = compile_tflite(pipeline, tmp_path)
    extra = inventory(legal) - inventory(rtn[0])
    assert inventory(rtn[0]) - inventory(legal) == Counter()
    assert len(extra) == 1 and list(extra.values()) == [2]  # one op kind, once per layer
    assert "fully_connected" in next(iter(extra))
