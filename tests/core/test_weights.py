"""Weights written one tensor at a time read back exactly, through safetensors itself."""
import ml_dtypes
import numpy as np
import pytest
from safetensors import safe_open

import qir
from qir.weights import WeightStore, save_weights


def test_every_storable_dtype_round_trips(tmp_path):
    rng = np.random.default_rng(0)
    arrays = {
        "f32": rng.normal(size=(3, 5)).astype(np.float32),
        "f16": rng.normal(size=(2, 2)).astype(np.float16),
        "bf16": rng.normal(size=(4,)).astype(ml_dtypes.bfloat16),
        "i8": np.arange(-3, 4, dtype=np.int8),
        "i32": np.arange(6, dtype=np.int32).reshape(2, 3),
        "i64": np.array([1 << 40], np.int64),
        "bool": np.array([[True, False]]),
        "scalar": np.float32(0.125),
    }
    module = qir.Module("weights")
    for name, data in arrays.items():
        module.add_constant(name, np.asarray(data))
    path = tmp_path / "w.safetensors"
    save_weights(module, path)
    with safe_open(str(path), framework="numpy") as f:
        assert sorted(f.keys()) == sorted(arrays)
    store = WeightStore.from_safetensors(path)
    for name, data in arrays.items():
        got = store.get(name)
        assert got.dtype == np.asarray(data).dtype and got.shape == np.shape(data)
        np.testing.assert_array_equal(got, data)


def test_lazy_sources_are_written_and_a_wrong_shape_leaves_no_file(tmp_path):
    module = qir.Module("lazy")
    module.add_constant("ok", lambda: np.ones((2, 2), np.float32), type=qir.TensorType((2, 2), "f32"))
    module.add_constant("bad", lambda: np.ones((3,), np.float32), type=qir.TensorType((2,), "f32"))
    with pytest.raises(qir.QirError, match="@bad: data has shape"):
        save_weights(module, tmp_path / "w.safetensors")
    assert list(tmp_path.iterdir()) == []


def test_int4_is_refused_by_name(tmp_path):
    module = qir.Module("int4")
    module.add_constant("q", np.zeros(4, ml_dtypes.int4))
    with pytest.raises(qir.QirError, match="@q: i4 cannot be stored"):
        save_weights(module, tmp_path / "w.safetensors")
