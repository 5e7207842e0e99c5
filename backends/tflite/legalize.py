"""Legalize a quantized `q.` module into the `tfl` dialect: integer weights and biases, each op
in the integer types and quant specs the runtime computes with, conversions where widths differ.

The result is a new module: float inputs are quantized on entry, outputs dequantized on exit, so
the signature an application calls takes and returns float32 (token ids stay int32)."""
from __future__ import annotations

import numpy as np

from backends.tflite.dialect import append_tfl
from qir.builder import Builder
from qir.errors import QirError
from qir.ir import Module, Op, Value
from qir.quant import QuantSpec

# output specs the runtime fixes for these kernels
SOFTMAX_OUTPUT = {"i8": QuantSpec(8, True, scale=(1 / 256,), zero_point=(-128,)),
                  "i16": QuantSpec(16, True, scale=(1 / 32768,), zero_point=(0,))}
LOGISTIC_OUTPUT = SOFTMAX_OUTPUT


def retype(spec: QuantSpec, dtype: str) -> QuantSpec:
    """The spec covering the same real range as `spec` in another integer width."""
    if spec.storage == dtype:
        return spec
    bits = int(dtype[1:])
    lo = spec.scale[0] * (spec.qmin - spec.zero_point[0])
    hi = spec.scale[0] * (spec.qmax - spec.zero_point[0])
    if bits == 16:  # int16 activations are symmetric
        return QuantSpec(16, True, scale=(max(abs(lo), abs(hi)) / 32767,), zero_point=(0,))
    scale = (hi - lo) / 255
    return QuantSpec(bits, True, scale=(scale,), zero_point=(int(np.clip(round(-128 - lo / scale), -128, 127)),))


def quantize_array(data: np.ndarray, spec: QuantSpec, scales=None) -> np.ndarray:
    """Float data -> integers of `spec`'s storage (per-tensor, or per-channel along axis 0)."""
    s = np.asarray(scales if scales is not None else spec.scale, np.float64)
    if s.size > 1:
        s = s.reshape((-1,) + (1,) * (data.ndim - 1))
    q = np.round(np.asarray(data, np.float64) / s) + spec.zero_point[0]
    return np.clip(q, spec.qmin, spec.qmax).astype(f"int{max(8, spec.bits)}")


def symmetric_spec(data: np.ndarray, dtype: str) -> QuantSpec:
    bits = int(dtype[1:])
    amax = float(np.abs(data).max()) or 1.0
    return QuantSpec(bits, True, scale=(amax / ((1 << (bits - 1)) - 1),), zero_point=(0,))


class Legalizer:
    def __init__(self, module: Module):
        self.src = module
        self.dst = Module(module.name, {k: v for k, v in module.attrs.items() if k != "weights"})
        self.env: dict[int, Value] = {}
        self.fused: set[int] = set()  # q ops folded into their producer (relu after linear/add)
        self.conditions: dict[int, Value] = {}  # a runtime mask -> its bool condition, built once

    # -- values ----------------------------------------------------------------------------------
    def get(self, value: Value) -> Value:
        if value.is_constant:
            raise QirError(f"tflite: constant @{value.name} is used where the runtime needs an activation")
        return self.env[id(value)]

    def convert(self, value: Value, spec: QuantSpec, name: str) -> Value:
        """`value` requantized to `spec` (nothing when it already has it)."""
        if value.quant == spec:
            return value
        return append_tfl(self.b, "tfl.quantize", value, quant=spec, name=name, dtype=spec.storage)

    def constant(self, name: str, data: np.ndarray, spec: QuantSpec, scales=None) -> Value:
        q = quantize_array(data, spec, scales)
        stored = spec if scales is None else QuantSpec(spec.bits, True, scale=tuple(float(s) for s in scales),
                                                       zero_point=(0,), axis=0)
        self.dst.add_constant(self.b.func.unique_name(name), q, quant=stored)
        return self.b.func.constant(list(self.dst.constants)[-1])

    def operand_in(self, value: Value, dtype: str, hint: str) -> Value:
        """An activation operand in integer type `dtype`; constants are quantized symmetrically."""
        if value.is_constant:
            data = self.src.weights.get(value.name).astype(np.float32)
            return self.constant(value.name, data, symmetric_spec(data, dtype))
        v = self.get(value)
        return self.convert(v, retype(v.quant, dtype), hint + ".cvt")

    def emit(self, op_name: str, operands, result: Value, dtype: str, **options) -> Value:
        """Run the tfl op in `dtype` and bring its result to the q result's spec."""
        spec = need_spec(result)
        inner = retype(spec, dtype)
        y = append_tfl(self.b, op_name, *operands, quant=inner, name=result.name, **options)
        return self.convert(y, spec, result.name + ".cvt")

    # -- the module ------------------------------------------------------------------------------
    def run(self) -> Module:
        func = self.src.main
        self.b = Builder.new_function(self.dst, func.name)
        for arg in func.args:
            new = self.b.func.add_arg(arg.name, arg.type)
            if arg.type.is_float:
                spec = need_spec(arg)
                new = append_tfl(self.b, "tfl.quantize", new, quant=spec, name=arg.name + ".q", dtype=spec.storage)
            self.env[id(arg)] = new
        for op in func.ops:
            if id(op) in self.fused:
                continue
            rule = RULES.get(op.name)
            if rule is None:
                where = f"{op.location[0]}:{op.location[1]}:{op.location[2]}: " if op.location else ""
                raise QirError(f"{where}tflite: {op.name} (%{op.results[0].name}) has no TFLite lowering; "
                               f"lowered ops: {', '.join(sorted(RULES))}")
            start = len(self.b.func.ops)
            self.env[id(op.results[0])] = rule(self, op)
            for new in self.b.func.ops[start:]:  # errors on a tfl op point back at its q op
                new.origin, new.location = op, op.location
        outputs = []
        for value in func.outputs:
            v = self.get(value)
            outputs.append(append_tfl(self.b, "tfl.dequantize", v, quant=None, name=value.name + ".out")
                           if v.quant is not None else v)
        self.b.ret(*outputs)
        return self.dst


def need_spec(value: Value) -> QuantSpec:
    spec = value.quant
    if spec is None:
        raise QirError(f"tflite: %{value.name} has no quant spec; quantize the module first (e.g. --recipe w8a8)")
    if spec.scheme != "per-tensor" or isinstance(spec.scale, str) or spec.bits not in (8, 16):
        raise QirError(f"tflite: activation %{value.name} needs a per-tensor int8 or int16 spec, has {spec}")
    return spec


def sole_relu(op: Op) -> Op | None:
    users = op.results[0].uses
    if len(users) == 1 and users[0][0].name == "q.relu":
        return users[0][0]
    return None


def emit_fusing_relu(lz: Legalizer, op: Op, tfl_name: str, operands, dtype: str) -> Value:
    """Emit `op` as `tfl_name`; a q.relu that is its only user folds into the kernel's clamp."""
    result, activation = op.results[0], "NONE"
    relu = sole_relu(op)
    if relu is not None:
        lz.fused.add(id(relu))
        result, activation = relu.results[0], "RELU"
    y = lz.emit(tfl_name, operands, result, dtype, fused_activation=activation)
    if relu is not None:
        lz.env[id(relu.results[0])] = y
    return y


# -- rules: one per q op -------------------------------------------------------------------------

def lower_linear(lz: Legalizer, op: Op) -> Value:
    x, w = op.operands[0], op.operands[1]
    if not w.is_constant:
        raise QirError(f"tflite: q.linear %{op.results[0].name} needs a constant weight")
    wspec = lz.src.constants[w.name].quant
    if wspec is not None and wspec.block_scale is not None:
        raise QirError(f"tflite: weight @{w.name} has LPBQ scales {wspec}, which TFLite cannot express "
                       "(FULLY_CONNECTED has one scale per output channel); quantize it per channel")
    if wspec is None or wspec.block_size is not None:
        raise QirError(f"tflite: weight @{w.name} needs a per-channel spec (TFLite FULLY_CONNECTED has no "
                       f"per-block weights), has {wspec}")
    dtype = widest(op)  # an int16 result of an int8 input: the input is widened, the kernel runs 16x8
    xv = lz.operand_in(x, dtype, op.results[0].name + ".x")
    scales = lz.src.weights.get(wspec.scale) if isinstance(wspec.scale, str) else np.asarray(wspec.scale)
    scales = np.broadcast_to(np.asarray(scales, np.float32).reshape(-1), (w.type.shape[0],))
    # values on a 4-bit grid run unchanged in the int8 kernel; only the file is larger
    data = lz.src.weights.get(w.name).astype(np.float32)
    if wspec.scheme == "per-tensor":  # one scale, the only kind NNAPI's FULLY_CONNECTED takes
        weight = lz.constant(w.name, data, QuantSpec(8, True, scale=(float(scales[0]),), zero_point=(0,)))
    else:
        weight = lz.constant(w.name, data, QuantSpec(8, True, scale=(1.0,), zero_point=(0,)), scales)
    if wspec.bits < 8:
        data = lz.dst.weights.get(weight.name)
        lz.dst.weights.set(weight.name, np.clip(data, wspec.qmin, wspec.qmax).astype(np.int8))
    # a linear without bias gets a zero one: FULLY_CONNECTED without a bias is op version 6, which
    # the NNAPI delegate refuses (it takes up to 5); the kernel computes the same either way
    b = op.operands[2] if len(op.operands) == 3 else None
    bias_scales = np.float32(np.float32(xv.quant.scale[0]) * scales.astype(np.float32))
    real_bias = lz.src.weights.get(b.name).astype(np.float64) if b is not None else np.zeros(scales.shape)
    bias_dtype = np.int64 if dtype == "i16" else np.int32
    bias_name = b.name if b is not None else op.results[0].name + ".bias"
    lz.dst.add_constant(lz.b.func.unique_name(bias_name), np.round(real_bias / bias_scales).astype(bias_dtype))
    operands = [xv, weight, lz.b.func.constant(list(lz.dst.constants)[-1])]
    return emit_fusing_relu(lz, op, "tfl.fully_connected", operands, dtype)


def widest(op: Op) -> str:
    """The integer width an elementwise op computes in: the widest of its result and activation
    operands (a 16-bit product requantized to 8 bits once beats 8-bit operands)."""
    widths = [need_spec(op.results[0]).storage] + [v.quant.storage for v in op.operands
                                                   if not v.is_constant and v.quant is not None]
    return max(widths, key=lambda d: int(d[1:]))


def lower_binary(lz: Legalizer, op: Op) -> Value:
    dtype = widest(op)
    a = lz.operand_in(op.operands[0], dtype, op.results[0].name + ".a")
    b = lz.operand_in(op.operands[1], dtype, op.results[0].name + ".b")
    return emit_fusing_relu(lz, op, "tfl." + op.name[2:], [a, b], dtype)


def lower_matmul(lz: Legalizer, op: Op) -> Value:
    dtype = need_spec(op.results[0]).storage
    a = lz.operand_in(op.operands[0], dtype, op.results[0].name + ".a")
    b = lz.operand_in(op.operands[1], dtype, op.results[0].name + ".b")
    return lz.emit("tfl.batch_matmul", [a, b], op.results[0], dtype, adj_y=bool(op.attrs["transpose_b"]))


def lower_move(lz: Legalizer, op: Op) -> Value:
    """Reshape and transpose keep their input's quant params (the runtime requires it)."""
    x = lz.get(op.operands[0])
    if op.name == "q.reshape":
        return append_tfl(lz.b, "tfl.reshape", x, quant=x.quant, name=op.results[0].name, shape=op.attrs["shape"])
    return append_tfl(lz.b, "tfl.transpose", x, quant=x.quant, name=op.results[0].name, perm=op.attrs["perm"])


def lower_slice(lz: Legalizer, op: Op) -> Value:
    """STRIDED_SLICE copies integers: the result keeps the input's quant params."""
    x = lz.get(op.operands[0])
    return append_tfl(lz.b, "tfl.strided_slice", x, quant=x.quant, name=op.results[0].name,
                      begin=list(op.attrs["begin"]), end=list(op.attrs["end"]), strides=[1] * x.type.rank)


def lower_reduce_mean(lz: Legalizer, op: Op) -> Value:
    x = lz.operand_in(op.operands[0], widest(op), op.results[0].name + ".x")
    if tuple(op.attrs["axes"]) not in ((-1,), (x.type.rank - 1,)) or not op.attrs["keepdims"]:
        raise QirError(f"tflite: q.reduce_mean %{op.results[0].name} is lowered over the last axis with "
                       f"keepdims = true only, has axes {list(op.attrs['axes'])}")
    return lz.emit("tfl.mean", [x], op.results[0], x.type.dtype)


def lower_rsqrt(lz: Legalizer, op: Op) -> Value:
    x = lz.operand_in(op.operands[0], widest(op), op.results[0].name + ".x")
    return lz.emit("tfl.rsqrt", [x], op.results[0], x.type.dtype)


def lower_gather(lz: Legalizer, op: Op) -> Value:
    table, indices = op.operands
    if not table.is_constant:
        raise QirError(f"tflite: q.gather %{op.results[0].name} needs a constant table")
    spec = need_spec(op.results[0])  # the table is stored directly in the output's spec
    data = lz.constant(table.name, lz.src.weights.get(table.name).astype(np.float32), spec)
    return append_tfl(lz.b, "tfl.gather", data, lz.get(indices), quant=spec, name=op.results[0].name,
                      axis=op.attrs["axis"])


def lower_concat(lz: Legalizer, op: Op) -> Value:
    spec = need_spec(op.results[0])
    parts = [lz.convert(lz.operand_in(v, spec.storage, f"{op.results[0].name}.{i}"), spec,
                        f"{op.results[0].name}.{i}.cvt") for i, v in enumerate(op.operands)]
    return append_tfl(lz.b, "tfl.concatenation", *parts, quant=spec, name=op.results[0].name, axis=op.attrs["axis"])


def lower_cast(lz: Legalizer, op: Op) -> Value:
    """A cast between float widths (a float16 checkpoint's embedding to f32) changes no real value:
    in integers it is at most a requantization to the result's spec."""
    source = op.operands[0]
    if not (source.type.is_float and op.results[0].type.is_float):
        raise QirError(f"tflite: q.cast %{op.results[0].name} from {source.type.dtype} to {op.attrs['dtype']} "
                       f"has no integer lowering (only casts between float widths)")
    return lz.convert(lz.get(source), need_spec(op.results[0]), op.results[0].name)


def lower_softmax(lz: Legalizer, op: Op) -> Value:
    x = lz.get(op.operands[0])
    if op.attrs["axis"] not in (-1, x.type.rank - 1):
        raise QirError(f"tflite: q.softmax %{op.results[0].name} must run over the last axis")
    dtype = x.type.dtype if x.type.dtype in SOFTMAX_OUTPUT else "i8"
    x = lz.convert(x, retype(x.quant, dtype), op.results[0].name + ".in")
    # the runtime fixes the output spec of a quantized softmax
    y = append_tfl(lz.b, "tfl.softmax", x, quant=SOFTMAX_OUTPUT[dtype], name=op.results[0].name)
    y = zero_masked_probabilities(lz, op, y)
    return lz.convert(y, need_spec(op.results[0]), op.results[0].name + ".cvt")


def zero_masked_probabilities(lz: Legalizer, op: Op, y: Value) -> Value:
    """int16 SOFTMAX floors exp(d) at its table's value for d = -10, so a key masked to the bottom
    of the range keeps up to ~1/32768 of a peaked row (the padding leaks into the attention). When
    the input is a masked_fill whose fill saturates there, select the mask again on the
    probabilities: masked keys weigh exactly 0, as in float. (int8 SOFTMAX gives them 0 already.)"""
    source = op.operands[0].producer
    if y.type.dtype != "i16" or source is None or source.name != "q.masked_fill":
        return y
    spec = need_spec(source.results[0])
    if float(source.attrs["value"]) > spec.scale[0] * (spec.qmin - spec.zero_point[0]):
        return y  # a fill inside the range is a value, not a mask
    cond = mask_condition(lz, source.operands[1], source.results[0].name)
    zero = lz.constant(op.results[0].name + ".zero", np.float32(0.0), y.quant)
    return append_tfl(lz.b, "tfl.select_v2", cond, y, zero, quant=y.quant, name=op.results[0].name + ".masked")


def lower_silu(lz: Legalizer, op: Op) -> Value:
    """x * sigmoid(x): LOGISTIC (fixed output spec) then MUL."""
    dtype = widest(op)
    x = lz.operand_in(op.operands[0], dtype, op.results[0].name + ".x")
    gate = append_tfl(lz.b, "tfl.logistic", x, quant=LOGISTIC_OUTPUT[dtype], name=op.results[0].name + ".sigmoid")
    return lz.emit("tfl.mul", [x, gate], op.results[0], dtype)


def lower_sigmoid(lz: Legalizer, op: Op) -> Value:
    x = lz.operand_in(op.operands[0], widest(op), op.results[0].name + ".x")
    y = append_tfl(lz.b, "tfl.logistic", x, quant=LOGISTIC_OUTPUT[x.type.dtype], name=op.results[0].name)
    return lz.convert(y, need_spec(op.results[0]), op.results[0].name + ".cvt")


def lower_table_activation(lz: Legalizer, op: Op) -> Value:
    """tanh and gelu: table kernels with a free output spec, run in the wider of input and result."""
    x = lz.operand_in(op.operands[0], widest(op), op.results[0].name + ".x")
    options = {"approximate": op.attrs["approximate"] == "tanh"} if op.name == "q.gelu" else {}
    return lz.emit("tfl." + op.name[2:], [x], op.results[0], x.type.dtype, **options)


def mask_condition(lz: Legalizer, mask: Value, where: str) -> Value:
    """The bool condition `mask != 0` that SELECT_V2 takes. A constant mask is stored as bool; a
    runtime int32 mask (the attention mask an application passes, maybe reshaped) becomes
    NOT_EQUAL against 0; either is built once, however many ops use the mask."""
    if id(mask) in lz.conditions:
        return lz.conditions[id(mask)]
    if mask.is_constant:
        lz.dst.add_constant(lz.b.func.unique_name(mask.name), lz.src.weights.get(mask.name) != 0)
        lz.conditions[id(mask)] = lz.b.func.constant(list(lz.dst.constants)[-1])
    else:
        if mask.type.dtype != "i32":
            raise QirError(f"tflite: q.masked_fill %{where} needs a constant or an int32 mask; "
                           f"%{mask.name} is {mask.type}")
        lz.dst.add_constant(lz.b.func.unique_name(mask.name + ".zero"), np.zeros((), np.int32))
        zero = lz.b.func.constant(list(lz.dst.constants)[-1])
        lz.conditions[id(mask)] = append_tfl(lz.b, "tfl.not_equal", lz.get(mask), zero, quant=None,
                                             name=mask.name + ".nonzero")
    return lz.conditions[id(mask)]


def lower_masked_fill(lz: Legalizer, op: Op) -> Value:
    """SELECT_V2(mask != 0, x, fill), all in the result's spec: the fill saturates at the bottom of
    that range instead of widening it (quantize sets the range from x; see MASK_MARGIN). A
    constant x (the pooling weights' logits, a row of zeros) is stored in that spec too."""
    spec, source, name = need_spec(op.results[0]), op.operands[0], op.results[0].name
    if source.is_constant:
        x = lz.constant(source.name, lz.src.weights.get(source.name).astype(np.float32), spec)
    else:
        x = lz.convert(lz.get(source), spec, name + ".in")
    cond = mask_condition(lz, op.operands[1], name)
    fill = lz.constant(name + ".fill", np.float32(op.attrs["value"]), spec)
    return append_tfl(lz.b, "tfl.select_v2", cond, x, fill, quant=spec, name=name)


def lower_rope(lz: Legalizer, op: Op) -> Value:
    """x·cos + rotate(x)·sin with rotate as slices and a concatenation (pure data movement, so it
    keeps x's spec); the sign of rotate's negated half moves into a constant signed sine table.
    |x·cos| and |rotate(x)·sin| never exceed |x|, so both products take x's spec."""
    x = lz.operand_in(op.operands[0], widest(op), op.results[0].name + ".x")
    dtype, name = x.type.dtype, op.results[0].name
    cos = lz.src.weights.get(op.operands[1].name).astype(np.float32)
    sin = lz.src.weights.get(op.operands[2].name).astype(np.float32)
    shape, rank, half = x.type.shape, x.type.rank, x.type.shape[-1] // 2

    def window(value, begin_last, end_last, label):
        begin = [0] * (value.type.rank - 1) + [begin_last]
        end = list(value.type.shape[:-1]) + [end_last]
        return append_tfl(lz.b, "tfl.strided_slice", value, quant=value.quant, name=f"{name}.{label}",
                          begin=begin, end=end, strides=[1] * value.type.rank)

    if op.attrs["layout"] == "half":
        rotated = append_tfl(lz.b, "tfl.concatenation", window(x, half, 2 * half, "hi"), window(x, 0, half, "lo"),
                             quant=x.quant, name=name + ".rot", axis=rank - 1)
        signed_sin = np.concatenate([-sin[:, :half], sin[:, half:]], axis=-1)
    else:
        pairs = append_tfl(lz.b, "tfl.reshape", x, quant=x.quant, name=name + ".pairs",
                           shape=list(shape[:-1]) + [half, 2])
        swapped = append_tfl(lz.b, "tfl.concatenation", window(pairs, 1, 2, "odd"), window(pairs, 0, 1, "even"),
                             quant=x.quant, name=name + ".swap", axis=rank)
        rotated = append_tfl(lz.b, "tfl.reshape", swapped, quant=x.quant, name=name + ".rot", shape=list(shape))
        signed_sin = sin * np.tile(np.asarray([-1.0, 1.0], np.float32), half)
    cos_q = lz.constant(op.operands[1].name, cos, symmetric_spec(cos, dtype))
    sin_q = lz.constant(op.operands[2].name + ".signed", signed_sin, symmetric_spec(signed_sin, dtype))
    a = append_tfl(lz.b, "tfl.mul", x, cos_q, quant=x.quant, name=name + ".cos")
    b = append_tfl(lz.b, "tfl.mul", rotated, sin_q, quant=x.quant, name=name + ".sin")
    return lz.emit("tfl.add", [a, b], op.results[0], dtype)


RULES = {
    "q.rope": lower_rope,
    "q.silu": lower_silu, "q.sigmoid": lower_sigmoid, "q.tanh": lower_table_activation,
    "q.gelu": lower_table_activation, "q.masked_fill": lower_masked_fill,
    "q.linear": lower_linear,
    "q.add": lower_binary, "q.sub": lower_binary, "q.mul": lower_binary,
    "q.matmul": lower_matmul,
    "q.reshape": lower_move, "q.transpose": lower_move, "q.slice": lower_slice,
    "q.reduce_mean": lower_reduce_mean, "q.rsqrt": lower_rsqrt,
    "q.gather": lower_gather,
    "q.concat": lower_concat, "q.cast": lower_cast,
    "q.softmax": lower_softmax,
}


def legalize_tflite(module: Module) -> Module:
    """The `tfl` form of a quantized module's main function (raises QirError naming the first op
    the target cannot run, before anything is written)."""
    from backends.tflite.spec_rules import check_quant_specs
    from qir.verifier import verify
    check_quant_specs(module)
    legal = Legalizer(module).run()
    verify(legal)
    return legal
