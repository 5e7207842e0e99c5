"""Random valid graphs built with the Builder print, parse back to the same text, and compute the
same outputs after the round trip (constants inline and in a .safetensors sidecar, quant specs on
arguments and results: per-tensor, per-channel and per-block, inline or in named constants)."""
from __future__ import annotations

import math
import tempfile
from pathlib import Path

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import qir
from qir.printer import INLINE_LIMIT
from qir.weights import save_weights

from tests.core.helpers import assert_same_outputs, run_all

# names use letters, digits and `_ . $ -`; dotted ones like blk.0.attn_q are the common case
NAMES = st.from_regex(r"[A-Za-z0-9_][A-Za-z0-9_$-]{0,5}(\.[A-Za-z0-9_$-]{1,4}){0,2}", fullmatch=True)
FINITE = st.floats(-1e6, 1e6, allow_nan=False, allow_infinity=False, width=32)
MAX_SIZE = 96  # elements per value, so that jit-compiling and running stay quick

UNARY = ["q.relu", "q.silu", "q.sigmoid", "q.tanh", "q.gelu"]
BINARY = ["q.add", "q.sub", "q.mul", "q.div", "q.maximum"]
KINDS = ["unary", "binary", "binary_const", "binary_full", "reshape", "transpose", "slice", "concat", "linear",
         "matmul", "softmax", "rms_norm", "layer_norm", "rope", "masked_fill", "reduce", "gather", "cast"]


class GraphMaker:
    """Draws ops one by one; each choice is a hypothesis draw, so failures shrink."""

    def __init__(self, draw, module: qir.Module):
        self.draw, self.module = draw, module

    def name(self) -> str:
        return self.draw(st.one_of(st.just(""), NAMES))

    def const_name(self) -> str:
        name = self.draw(NAMES)
        while name in self.module.constants:
            name += "_"
        return name

    def const(self, b: qir.Builder, shape, low=-2.0, high=2.0, dtype="f32", data=None):
        """A fresh constant; small ones print inline, larger ones go to the weights file."""
        if data is None:
            seed = self.draw(st.integers(0, 2**32 - 1))
            rng = np.random.default_rng(seed)
            data = rng.uniform(low, high, size=shape)
        array = np.asarray(data).astype(qir.TensorType((), dtype).np_dtype)
        return b.const(self.const_name(), array)

    def shape(self):
        rank = self.draw(st.sampled_from([1, 2, 2, 3, 3]))
        return tuple(self.draw(st.lists(st.integers(1, 4), min_size=rank, max_size=rank)))

    def reshape_target(self, size: int):
        factors, n, p = [], size, 2
        while n > 1:
            while n % p == 0:
                factors.append(p)
                n //= p
            p += 1
        factors = self.draw(st.permutations(factors)) if factors else []
        dims = [1]
        for f in factors:
            if self.draw(st.booleans()) or len(dims) >= 4:
                dims[-1] *= f
            else:
                dims.append(f)
        if len(dims) < 4 and self.draw(st.booleans()):
            dims.insert(self.draw(st.integers(0, len(dims))), 1)
        return dims

    def quant(self, type: qir.TensorType):
        """A valid quant spec for `type`, or None."""
        scheme = self.draw(st.sampled_from(["none", "none", "tensor", "channel", "block"]))
        if scheme == "none" or type.rank == 0:
            return None
        bits = self.draw(st.sampled_from([4, 8, 16]))
        signed = self.draw(st.booleans())
        lo, hi = (-(1 << (bits - 1)), (1 << (bits - 1)) - 1) if signed else (0, (1 << bits) - 1)
        scale_st = st.floats(1e-6, 10.0, allow_nan=False, allow_infinity=False)
        zp_st = st.integers(lo, hi)
        if scheme == "tensor":
            return qir.QuantSpec(bits, signed, self.draw(scale_st), self.draw(zp_st))
        axis = self.draw(st.integers(0, type.rank - 1))
        block = None
        if scheme == "block":
            block = self.draw(st.sampled_from([d for d in range(1, type.shape[axis] + 1) if type.shape[axis] % d == 0]))
            groups = type.size // block
        else:
            groups = type.shape[axis]
        scales = self.draw(st.lists(scale_st, min_size=groups, max_size=groups))
        zps = self.draw(st.one_of(zp_st.map(lambda z: (z,)), st.lists(zp_st, min_size=groups, max_size=groups)))
        if self.draw(st.booleans()):  # parameters in named constants (printed inline or not by size)
            name = self.const_name()
            self.module.add_constant(name, np.asarray(scales, np.float32))
            scales = name
            if len(zps) == groups and self.draw(st.booleans()):
                zname = self.const_name()
                self.module.add_constant(zname, np.asarray(zps, np.int32))
                zps = zname
        return qir.QuantSpec(bits, signed, scales, zps, axis=axis, block_size=block)

    def step(self, b: qir.Builder, pool: list[qir.Value]) -> qir.Value:
        x = self.draw(st.sampled_from(pool))
        t = x.type
        kind = self.draw(st.sampled_from(KINDS))
        name = self.name()
        if kind == "unary":
            op = self.draw(st.sampled_from(UNARY))
            attrs = {"approximate": self.draw(st.sampled_from(["none", "tanh"]))} if op == "q.gelu" else {}
            return b.op(op, x, name=name, **attrs)
        if kind == "binary":
            same = [v for v in pool if v.type == t]
            y = self.draw(st.sampled_from(same))
            op = self.draw(st.sampled_from([o for o in BINARY if o != "q.div"]))
            return b.op(op, x, y, name=name)
        if kind == "binary_const":
            # the constant broadcasts: a suffix of x's shape with some dimensions set to 1
            k = self.draw(st.integers(0, t.rank))
            shape = tuple(1 if self.draw(st.booleans()) else d for d in t.shape[t.rank - k:])
            op = self.draw(st.sampled_from(BINARY))
            c = self.const(b, shape, *((0.5, 2.0) if op == "q.div" else (-2.0, 2.0)))
            return b.op(op, x, c, name=name)
        if kind == "binary_full":  # a constant of x's own shape: above 16 elements it is not inline
            return b.op(self.draw(st.sampled_from(BINARY)), x, self.const(b, t.shape, 0.5, 2.0), name=name)
        if kind == "reshape":
            return b.reshape(x, shape=self.reshape_target(t.size), name=name)
        if kind == "transpose":
            return b.transpose(x, perm=list(self.draw(st.permutations(range(t.rank)))), name=name)
        if kind == "slice":
            begin = [self.draw(st.integers(0, d - 1)) for d in t.shape]
            end = [self.draw(st.integers(bg + 1, d)) for bg, d in zip(begin, t.shape)]
            return b.slice(x, begin=begin, end=end, name=name)
        if kind == "concat" and 2 * t.size <= MAX_SIZE:
            axis = self.draw(st.integers(-t.rank, t.rank - 1))
            others = [v for v in pool if v.type == t]
            parts = [x] + self.draw(st.lists(st.sampled_from(others), min_size=1, max_size=2))
            if sum(p.type.size for p in parts) <= MAX_SIZE:
                return b.concat(*parts, axis=axis, name=name)
        if kind == "linear":
            n = self.draw(st.integers(1, 8))
            w = self.const(b, (n, t.shape[-1]))
            bias = [self.const(b, (n,))] if self.draw(st.booleans()) else []
            if t.size // t.shape[-1] * n <= MAX_SIZE:
                return b.linear(x, w, *bias, name=name)
        if kind == "matmul" and t.rank >= 2:
            if t.size // t.shape[-1] * t.shape[-2] <= MAX_SIZE and self.draw(st.booleans()):  # x @ x^T
                return b.matmul(x, x, transpose_b=True, name=name)
            n = self.draw(st.integers(1, 4))
            transpose_b = self.draw(st.booleans())
            w = self.const(b, (n, t.shape[-1]) if transpose_b else (t.shape[-1], n))
            return b.matmul(x, w, transpose_b=transpose_b, name=name)
        if kind == "softmax":
            return b.softmax(x, axis=self.draw(st.integers(-t.rank, t.rank - 1)), name=name)
        if kind == "rms_norm":
            eps = self.draw(st.floats(1e-8, 1e-2))
            return b.rms_norm(x, self.const(b, t.shape[-1:]), eps=eps, name=name)
        if kind == "layer_norm":
            eps = self.draw(st.floats(1e-8, 1e-2))
            return b.layer_norm(x, self.const(b, t.shape[-1:]), self.const(b, t.shape[-1:]), eps=eps, name=name)
        if kind == "rope" and t.rank >= 2 and t.shape[-1] % 2 == 0:
            angles = self.draw(st.floats(0.0, 6.3))
            cos = self.const(b, t.shape[-2:], data=np.cos(angles * np.ones(t.shape[-2:])))
            sin = self.const(b, t.shape[-2:], data=np.sin(angles * np.ones(t.shape[-2:])))
            return b.rope(x, cos, sin, layout=self.draw(st.sampled_from(["half", "interleaved"])), name=name)
        if kind == "masked_fill":
            k = self.draw(st.integers(0, t.rank))
            shape = tuple(1 if self.draw(st.booleans()) else d for d in t.shape[t.rank - k:])
            mask_dtype = self.draw(st.sampled_from(["bool", "i32", "f32"]))
            seed = self.draw(st.integers(0, 2**32 - 1))
            mask = self.const(b, shape, dtype=mask_dtype, data=np.random.default_rng(seed).integers(0, 2, size=shape))
            return b.masked_fill(x, mask, value=self.draw(FINITE), name=name)
        if kind == "reduce":
            axes = self.draw(st.lists(st.integers(0, t.rank - 1), unique=True, max_size=t.rank))
            axes = [a - t.rank if self.draw(st.booleans()) else a for a in axes]
            op = self.draw(st.sampled_from(["q.reduce_sum", "q.reduce_mean"]))
            y = b.op(op, x, axes=axes, keepdims=self.draw(st.booleans()), name=name)
            return y if y.type.rank else b.reshape(y, shape=[1])
        if kind == "gather":
            axis = self.draw(st.integers(0, t.rank - 1))
            count = self.draw(st.integers(1, 3))
            seed = self.draw(st.integers(0, 2**32 - 1))
            indices = np.random.default_rng(seed).integers(0, t.shape[axis], size=count)
            idx = self.const(b, (count,), dtype=self.draw(st.sampled_from(["i32", "i16", "u8"])), data=indices)
            if t.size // t.shape[axis] * count <= MAX_SIZE:
                return b.gather(x, idx, axis=axis - t.rank if self.draw(st.booleans()) else axis, name=name)
        if kind == "cast":
            low = b.cast(x, dtype=self.draw(st.sampled_from(["f16", "bf16"])), name=name)
            return b.cast(low, dtype="f32", name=self.name())
        return b.relu(x, name=name)  # the chosen op did not fit this value


@st.composite
def modules(draw):
    keys = st.from_regex(r"[a-z_][a-z0-9_]{0,5}", fullmatch=True).filter(lambda k: k != "weights")
    values = st.one_of(st.integers(-10**12, 10**12), FINITE, st.booleans(), st.text(max_size=8),
                       st.lists(st.integers(-5, 5), max_size=3))
    attrs = draw(st.dictionaries(keys, values, max_size=3))
    module = qir.Module(draw(NAMES), attrs)
    maker = GraphMaker(draw, module)
    function_names = draw(st.lists(NAMES, min_size=1, max_size=2, unique=True))
    for fname in function_names:
        b = qir.Builder.new_function(module, fname)
        shape = maker.shape()
        pool = []
        for _ in range(draw(st.integers(1, 2))):
            arg = b.arg(maker.name(), shape)
            arg.quant = maker.quant(arg.type)
            pool.append(arg)
        # a constant shared between functions, when there is one of the right shape
        shared = [n for n, d in module.constants.items() if d.type.shape == shape and d.type.dtype == "f32"]
        if shared and draw(st.booleans()):
            pool.append(b.const(draw(st.sampled_from(shared))))
        for _ in range(draw(st.integers(1, 7))):
            y = maker.step(b, pool)
            y.quant = maker.quant(y.type)
            pool.append(y)
        outputs = [pool[-1]] + draw(st.lists(st.sampled_from(pool[:-1]), max_size=1)) if len(pool) > 1 else [pool[-1]]
        b.ret(*outputs)
    return module


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(modules())
def test_print_parse_print_and_same_outputs(module):
    qir.verify(module)
    large = [n for n, d in module.constants.items() if d.type.size > INLINE_LIMIT]
    with tempfile.TemporaryDirectory() as tmp:
        if large:
            module.attrs["weights"] = "weights.safetensors"
            save_weights(module, Path(tmp) / "weights.safetensors")
        text = qir.print_module(module)
        parsed = qir.parse(text, "roundtrip.qir", Path(tmp))
        qir.verify(parsed)
        assert qir.print_module(parsed) == text
        for name in module.constants:  # inline and sidecar constants carry the same data and dtype
            a, b = module.weights.get(name), parsed.weights.get(name)
            assert a.dtype == b.dtype and a.shape == b.shape
            np.testing.assert_array_equal(a, b)
        assert_same_outputs(run_all(module, seed=1), run_all(parsed, seed=1))


@settings(max_examples=200, deadline=None)
@given(st.floats(allow_nan=False, width=32), st.floats(allow_nan=False))
def test_floats_print_exactly(f32, attr):
    """Inline f32 constants and float attributes (including ±inf) parse back to the same bits."""
    module = qir.Module("m")
    b = qir.Builder.new_function(module, "f")
    x = b.arg("x", (2,))
    c = b.const("c", np.array([f32, -f32], np.float32))
    b.ret(b.masked_fill(x, c, value=attr))
    text = qir.print_module(module)
    parsed = qir.parse(text)
    assert qir.print_module(parsed) == text
    np.testing.assert_array_equal(parsed.weights.get("c").view(np.uint32), module.weights.get("c").view(np.uint32))
    value = parsed.main.ops[0].attrs["value"]
    assert value == attr and math.copysign(1.0, value) == math.copysign(1.0, attr)


def test_numpy_attribute_values_print_as_python_values():
    module = qir.Module("m")
    b = qir.Builder.new_function(module, "f")
    x = b.arg("x", (2, 3))
    t = b.transpose(x, perm=np.array([1, 0]))
    s = b.softmax(t, axis=np.int64(-1))
    b.ret(b.masked_fill(s, s, value=np.float32(0.5)))
    text = qir.print_module(module)
    assert "{perm = [1, 0]}" in text and "{axis = -1}" in text and "{value = 0.5}" in text
    assert qir.print_module(qir.parse(text)) == text
