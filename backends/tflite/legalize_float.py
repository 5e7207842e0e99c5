"""Legalize an unquantized `q.` module into float32 `tfl` ops: the same model as a float .tflite,
the baseline an integer graph is measured against (speed, size, accuracy).

Activations and weights are float32 (token ids and masks stay int32 / bool). Ops TFLite has no
kernel for are decomposed: RMSNorm and LayerNorm into MUL, MEAN, ADD, RSQRT (and SUB), SiLU into
LOGISTIC and MUL, RoPE into slices, a concatenation and two products. Outputs are named
`<value>.out`, as in the integer graph, so both files have one signature."""
from __future__ import annotations

import numpy as np

from backends.tflite.dialect import append_tfl
from qir.builder import Builder
from qir.errors import QirError
from qir.ir import Module, Op, Value
from qir.types import TensorType

# constants of these dtypes are stored as float32 (the runtime computes in float32 throughout)
FLOAT_SOURCES = ("f16", "bf16", "f32", "f64")


class FloatLegalizer:
    def __init__(self, module: Module):
        self.src = module
        self.dst = Module(module.name, {k: v for k, v in module.attrs.items() if k != "weights"})
        self.env: dict[int, Value] = {}
        self.derived: dict[str, Value] = {}  # constants computed from source constants, made once
        self.outputs = {id(v): v.name for v in module.main.outputs}

    # -- values ----------------------------------------------------------------------------------
    def get(self, value: Value) -> Value:
        return self.constant(value.name) if value.is_constant else self.env[id(value)]

    def constant(self, name: str) -> Value:
        """Source constant @name, float ones as f32; read only when the file is written."""
        if name not in self.dst.constants:
            decl = self.src.constants[name]
            dtype = "f32" if decl.type.dtype in FLOAT_SOURCES else decl.type.dtype
            np_dtype = TensorType((), dtype).np_dtype
            weights = self.src.weights
            self.dst.add_constant(name, lambda: weights.get(name).astype(np_dtype), TensorType(decl.type.shape, dtype))
        return self.b.func.constant(name)

    def new_constant(self, hint: str, data: np.ndarray) -> Value:
        name, i = hint, 1
        while name in self.dst.constants or name in self.src.constants:
            name, i = f"{hint}.{i}", i + 1
        self.dst.add_constant(name, np.asarray(data))
        return self.b.func.constant(name)

    def derived_constant(self, name: str, make) -> Value:
        """Constant @name = make(), shared by every op that asks for it (RoPE tables, masks)."""
        if name not in self.derived:
            self.derived[name] = self.new_constant(name, make())
        return self.derived[name]

    def scalar(self, hint: str, value: float) -> Value:
        return self.new_constant(hint, np.float32(value))

    def op(self, op_name: str, *operands: Value, name: str, **options) -> Value:
        return append_tfl(self.b, op_name, *operands, quant=None, name=name, **options)

    def name(self, op: Op) -> str:
        """The name of the value standing for `op`'s result (`.out` for a function output)."""
        result = op.results[0]
        return result.name + ".out" if id(result) in self.outputs else result.name

    # -- the module ------------------------------------------------------------------------------
    def run(self) -> Module:
        func = self.src.main
        self.b = Builder.new_function(self.dst, func.name)
        for arg in func.args:
            if arg.type.dtype not in ("f32", "i32", "bool"):
                raise QirError(f"tflite: argument %{arg.name} is {arg.type}; the float graph takes f32, i32 or bool")
            self.env[id(arg)] = self.b.func.add_arg(arg.name, arg.type)
        for op in func.ops:
            rule = RULES.get(op.name)
            if rule is None:
                where = f"{op.location[0]}:{op.location[1]}:{op.location[2]}: " if op.location else ""
                raise QirError(f"{where}tflite: {op.name} (%{op.results[0].name}) has no float TFLite lowering; "
                               f"lowered ops: {', '.join(sorted(RULES))}")
            self.env[id(op.results[0])] = rule(self, op)
        self.b.ret(*(self.get(v) for v in func.outputs))
        return self.dst


# -- rules: one per q op -------------------------------------------------------------------------

def lower_linear(lz: FloatLegalizer, op: Op) -> Value:
    """A linear without a bias gets a zero one: FULLY_CONNECTED stays at op version 5 (version 6,
    bias-less, is refused by NNAPI), as in the integer graph."""
    operands = [lz.get(v) for v in op.operands]
    if len(operands) == 2:
        rows = operands[1].type.shape[0]
        operands.append(lz.derived_constant(f"{op.operands[1].name}.zero_bias", lambda: np.zeros(rows, np.float32)))
    return lz.op("tfl.fully_connected", *operands, name=lz.name(op))


def lower_matmul(lz: FloatLegalizer, op: Op) -> Value:
    a, b = (lz.get(v) for v in op.operands)
    return lz.op("tfl.batch_matmul", a, b, name=lz.name(op), adj_y=bool(op.attrs["transpose_b"]))


def lower_binary(lz: FloatLegalizer, op: Op) -> Value:
    a, b = (lz.get(v) for v in op.operands)
    return lz.op("tfl." + op.name[2:], a, b, name=lz.name(op))


def lower_unary(lz: FloatLegalizer, op: Op) -> Value:
    """Ops with a kernel of their own: sigmoid is LOGISTIC, the rest keep their name."""
    name = {"q.sigmoid": "tfl.logistic"}.get(op.name, "tfl." + op.name[2:])
    options = {"approximate": op.attrs["approximate"] == "tanh"} if op.name == "q.gelu" else {}
    return lz.op(name, lz.get(op.operands[0]), name=lz.name(op), **options)


def lower_silu(lz: FloatLegalizer, op: Op) -> Value:
    x = lz.get(op.operands[0])
    gate = lz.op("tfl.logistic", x, name=op.results[0].name + ".sigmoid")
    return lz.op("tfl.mul", x, gate, name=lz.name(op))


def lower_softmax(lz: FloatLegalizer, op: Op) -> Value:
    x = lz.get(op.operands[0])
    if op.attrs["axis"] not in (-1, x.type.rank - 1):
        raise QirError(f"tflite: q.softmax %{op.results[0].name} must run over the last axis")
    return lz.op("tfl.softmax", x, name=lz.name(op))


def lower_rms_norm(lz: FloatLegalizer, op: Op) -> Value:
    """x · rsqrt(mean(x²) + eps) · w, in the interpreter's order."""
    x, w = (lz.get(v) for v in op.operands)
    n = op.results[0].name
    square = lz.op("tfl.mul", x, x, name=n + ".square")
    mean = lz.op("tfl.mean", square, name=n + ".mean", axes=(-1,), keepdims=True)
    shifted = lz.op("tfl.add", mean, lz.scalar(n + ".eps", op.attrs["eps"]), name=n + ".eps_added")
    scale = lz.op("tfl.rsqrt", shifted, name=n + ".rsqrt")
    normed = lz.op("tfl.mul", x, scale, name=n + ".normed")
    return lz.op("tfl.mul", normed, w, name=lz.name(op))


def lower_layer_norm(lz: FloatLegalizer, op: Op) -> Value:
    """(x − mean) · rsqrt(mean((x − mean)²) + eps) · w + b."""
    x, w, b = (lz.get(v) for v in op.operands)
    n = op.results[0].name
    mean = lz.op("tfl.mean", x, name=n + ".mean", axes=(-1,), keepdims=True)
    centred = lz.op("tfl.sub", x, mean, name=n + ".centred")
    square = lz.op("tfl.mul", centred, centred, name=n + ".square")
    var = lz.op("tfl.mean", square, name=n + ".var", axes=(-1,), keepdims=True)
    shifted = lz.op("tfl.add", var, lz.scalar(n + ".eps", op.attrs["eps"]), name=n + ".eps_added")
    scale = lz.op("tfl.rsqrt", shifted, name=n + ".rsqrt")
    normed = lz.op("tfl.mul", centred, scale, name=n + ".normed")
    return lz.op("tfl.add", lz.op("tfl.mul", normed, w, name=n + ".scaled"), b, name=lz.name(op))


def lower_rope(lz: FloatLegalizer, op: Op) -> Value:
    """x·cos + rotate(x)·sin; rotate is slices and a concatenation, and the sign of its negated
    half moves into a constant signed sine table (as in the integer graph)."""
    x = lz.get(op.operands[0])
    cos, sin_name = lz.constant(op.operands[1].name), op.operands[2].name
    n, shape, rank, half = op.results[0].name, x.type.shape, x.type.rank, x.type.shape[-1] // 2

    def window(value, begin_last, end_last, label):
        begin = [0] * (value.type.rank - 1) + [begin_last]
        end = list(value.type.shape[:-1]) + [end_last]
        return lz.op("tfl.strided_slice", value, name=f"{n}.{label}", begin=begin, end=end,
                     strides=[1] * value.type.rank)

    if op.attrs["layout"] == "half":
        rotated = lz.op("tfl.concatenation", window(x, half, 2 * half, "hi"), window(x, 0, half, "lo"),
                        name=n + ".rot", axis=rank - 1)
        signs = np.repeat(np.asarray([-1.0, 1.0], np.float32), half)
    else:
        pairs = lz.op("tfl.reshape", x, name=n + ".pairs", shape=list(shape[:-1]) + [half, 2])
        swapped = lz.op("tfl.concatenation", window(pairs, 1, 2, "odd"), window(pairs, 0, 1, "even"),
                        name=n + ".swap", axis=rank)
        rotated = lz.op("tfl.reshape", swapped, name=n + ".rot", shape=list(shape))
        signs = np.tile(np.asarray([-1.0, 1.0], np.float32), half)
    signed_sin = lz.derived_constant(f"{sin_name}.signed.{op.attrs['layout']}",
                                     lambda: lz.src.weights.get(sin_name).astype(np.float32) * signs)
    a = lz.op("tfl.mul", x, cos, name=n + ".cos")
    b = lz.op("tfl.mul", rotated, signed_sin, name=n + ".sin")
    return lz.op("tfl.add", a, b, name=lz.name(op))


def lower_masked_fill(lz: FloatLegalizer, op: Op) -> Value:
    """SELECT_V2(mask != 0, x, fill); a constant mask is stored as bool, a runtime one compared."""
    x, mask = op.operands
    n = op.results[0].name
    if mask.is_constant:
        condition = lz.derived_constant(mask.name + ".bool", lambda: lz.src.weights.get(mask.name) != 0)
    else:
        condition = lz.get(mask)
        if condition.type.dtype != "bool":
            zero = lz.new_constant(n + ".zero", np.zeros((), condition.type.np_dtype))
            condition = lz.op("tfl.not_equal", condition, zero, name=n + ".keep")
    return lz.op("tfl.select_v2", condition, lz.get(x), lz.scalar(n + ".fill", op.attrs["value"]), name=lz.name(op))


def lower_gather(lz: FloatLegalizer, op: Op) -> Value:
    table, indices = (lz.get(v) for v in op.operands)
    return lz.op("tfl.gather", table, indices, name=lz.name(op), axis=op.attrs["axis"])


def lower_reshape(lz: FloatLegalizer, op: Op) -> Value:
    return lz.op("tfl.reshape", lz.get(op.operands[0]), name=lz.name(op), shape=op.attrs["shape"])


def lower_transpose(lz: FloatLegalizer, op: Op) -> Value:
    return lz.op("tfl.transpose", lz.get(op.operands[0]), name=lz.name(op), perm=op.attrs["perm"])


def lower_slice(lz: FloatLegalizer, op: Op) -> Value:
    begin, end = op.attrs["begin"], op.attrs["end"]
    return lz.op("tfl.slice", lz.get(op.operands[0]), name=lz.name(op), begin=begin,
                 size=[e - b for b, e in zip(begin, end)])


def lower_concat(lz: FloatLegalizer, op: Op) -> Value:
    parts = [lz.get(v) for v in op.operands]
    return lz.op("tfl.concatenation", *parts, name=lz.name(op), axis=op.attrs["axis"] % parts[0].type.rank)


def lower_cast(lz: FloatLegalizer, op: Op) -> Value:
    """Casts between float widths vanish (everything is float32 here); others become CAST."""
    x = lz.get(op.operands[0])
    dtype = "f32" if op.attrs["dtype"] in FLOAT_SOURCES else op.attrs["dtype"]
    if dtype == x.type.dtype:
        return x
    return lz.op("tfl.cast", x, name=lz.name(op), dtype=dtype)


def lower_reduce(lz: FloatLegalizer, op: Op) -> Value:
    name = {"q.reduce_sum": "tfl.sum", "q.reduce_mean": "tfl.mean"}[op.name]
    return lz.op(name, lz.get(op.operands[0]), name=lz.name(op), axes=op.attrs["axes"],
                 keepdims=op.attrs["keepdims"])


RULES = {
    "q.linear": lower_linear, "q.matmul": lower_matmul,
    "q.add": lower_binary, "q.sub": lower_binary, "q.mul": lower_binary, "q.div": lower_binary,
    "q.maximum": lower_binary,
    "q.relu": lower_unary, "q.sigmoid": lower_unary, "q.tanh": lower_unary, "q.gelu": lower_unary,
    "q.rsqrt": lower_unary, "q.silu": lower_silu, "q.softmax": lower_softmax,
    "q.rms_norm": lower_rms_norm, "q.layer_norm": lower_layer_norm, "q.rope": lower_rope,
    "q.masked_fill": lower_masked_fill, "q.gather": lower_gather,
    "q.reshape": lower_reshape, "q.transpose": lower_transpose, "q.slice": lower_slice, "q.concat": lower_concat,
    "q.cast": lower_cast, "q.reduce_sum": lower_reduce, "q.reduce_mean": lower_reduce,
}


def legalize_tflite_float(module: Module) -> Module:
    """The float32 `tfl` form of an unquantized module's main function (raises QirError naming the
    first op the target cannot run, before anything is written)."""
    from qir.verifier import verify
    if module.is_quantized():
        raise QirError("tflite: the float graph is for unquantized modules; this one carries quant specs")
    legal = FloatLegalizer(module).run()
    verify(legal)
    return legal
