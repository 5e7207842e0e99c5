"""Legalize a quantized `q.` module into the form HTP runs in fixed point: still core ops (plus
`qnn.convert`), but every value in the quant spec the emitted QDQ graph gives it.

What changes, and why (each measured in onnxruntime-qnn's HTP simulator, see docs/qnn-backend.md):
- activations are unsigned (u8, u16): the same grid as qir's signed specs, zero point + 2^(b-1);
- each op runs in one width, 16 bit when its result or any activation operand is 16 bit (a MatMul
  of two activations: its result's width); an operand of the other width gets an explicit
  `qnn.convert` (HTP runs a u8 x u8 -> u16 MatMul in float, and converts a u16 x u16 MatMul's
  second operand to u8 behind the user's back);
- a 16-bit MatMul of two activations takes its second operand as s16 with zero point 0, which
  HTP runs natively (u16 x s16);
- silu is sigmoid then mul; sigmoid's output has the fixed spec [0, 1];
- a linear with a bias is a Gemm, so it runs on 2-D inputs (reshapes around it);
- weights stay int8 per output channel; 4-bit weights only in the LPBQ pattern (int4 blocks whose
  scales are a float per output channel times an integer 1..16 per block), which the QNN EP fuses
  into one HTP MatMul; a linear with a bias and LPBQ weights is that MatMul, then an Add;
- rms_norm is RMSNormalization (HTP RmsNorm) with an s16 gamma when it runs in 16 bit, a u8 one
  in 8 bit; layer_norm is LayerNormalization with a u8 gamma and an int32 beta, the only form HTP
  runs in fixed point. A norm runs in its input's width: HTP runs u16 -> u8 in float;
- a softmax's probabilities are unsigned with zero point 0 on the recipe's grid (HTP's 16-bit
  MatMul of probabilities with zero point 32768 lets keys of probability 0 move the result);
- a masked_fill is Where in one spec; a runtime integer mask (an encoder's attention mask) is Cast
  to bool once, and integer tensors move through reshapes without a spec.

The fake-quant interpreter run on the result is the QDQ reference the emitted graph must match."""
from __future__ import annotations

import numpy as np

from backends.qnn.dialect import Convert  # noqa: F401  (registers qnn.convert)
from qir.builder import Builder
from qir.errors import QirError
from qir.ir import Module, Op, Value
from qir.quant import QuantSpec
from qir.verifier import verify

INTEGER_DTYPES = ("i64", "i32", "i16", "i8", "u32", "u16", "u8")
SIGMOID_OUTPUT = {8: QuantSpec(8, False, scale=(1 / 255,), zero_point=(0,)),
                  16: QuantSpec(16, False, scale=(1 / 65535,), zero_point=(0,))}


def where(op: Op) -> str:
    return f"{op.location[0]}:{op.location[1]}:{op.location[2]}: " if op.location else ""


def need_spec(value: Value) -> QuantSpec:
    spec = value.quant
    if spec is None:
        raise QirError(f"qnn: %{value.name} has no quant spec; quantize the module first (e.g. --recipe a16w8)")
    if spec.scheme != "per-tensor" or isinstance(spec.scale, str) or isinstance(spec.zero_point, str) \
            or spec.bits not in (8, 16):
        raise QirError(f"qnn: activation %{value.name} needs a per-tensor 8- or 16-bit spec, has {spec}")
    return spec


def unsigned(spec: QuantSpec) -> QuantSpec:
    """The unsigned spec on the same grid (HTP's activations are u8 / u16)."""
    if not spec.signed:
        return spec
    half = 1 << (spec.bits - 1)
    return QuantSpec(spec.bits, False, scale=spec.scale, zero_point=(spec.zero_point[0] + half,))


def real_range(spec: QuantSpec) -> tuple[float, float]:
    s, z = spec.scale[0], spec.zero_point[0]
    return s * (spec.qmin - z), s * (spec.qmax - z)


def in_width(spec: QuantSpec, bits: int) -> QuantSpec:
    """An unsigned spec of `bits` bits covering the same real range as `spec`."""
    spec = unsigned(spec)
    if spec.bits == bits:
        return spec
    lo, hi = real_range(spec)
    scale = (hi - lo) / ((1 << bits) - 1)
    zero = int(np.clip(round(-lo / scale), 0, (1 << bits) - 1))
    return QuantSpec(bits, False, scale=(scale,), zero_point=(zero,))


def signed16(spec: QuantSpec) -> QuantSpec:
    """s16 with zero point 0 covering `spec`'s range (a qir int16 spec is already one)."""
    if spec.bits == 16 and spec.signed and spec.zero_point[0] == 0:
        return spec
    lo, hi = real_range(spec)
    if spec.bits == 16 and not spec.signed and spec.zero_point[0] == 32768:
        return QuantSpec(16, True, scale=spec.scale, zero_point=(0,))
    return QuantSpec(16, True, scale=(max(abs(lo), abs(hi)) / 32767,), zero_point=(0,))


def covering(lo: float, hi: float, bits: int) -> QuantSpec:
    """An unsigned spec of `bits` bits over [min(lo, 0), max(hi, 0)]."""
    lo, hi = min(lo, 0.0), max(hi, 0.0)
    top = (1 << bits) - 1
    scale = (hi - lo) / top or 1.0
    return QuantSpec(bits, False, scale=(scale,), zero_point=(int(np.clip(round(-lo / scale), 0, top)),))


def symmetric(data: np.ndarray, bits: int) -> QuantSpec:
    """An unsigned spec symmetric around zero for a constant operand."""
    amax = float(np.abs(data).max()) or 1.0
    half = 1 << (bits - 1)
    return QuantSpec(bits, False, scale=(amax / (half - 1),), zero_point=(half,))


class Legalizer:
    def __init__(self, module: Module):
        self.src = module
        self.dst = Module(module.name, {k: v for k, v in module.attrs.items() if k != "weights"})
        self.env: dict[int, Value] = {}
        self.conditions: dict[int, Value] = {}  # mask value -> its bool condition

    # -- values and constants ---------------------------------------------------------------------
    def get(self, value: Value) -> Value:
        if value.is_constant:
            raise QirError(f"qnn: constant @{value.name} is used where HTP needs an activation")
        return self.env[id(value)]

    def constant(self, name: str, data: np.ndarray, spec: QuantSpec | None) -> Value:
        unique = name
        i = 1
        while unique in self.dst.constants:
            unique, i = f"{name}.{i}", i + 1
        self.dst.add_constant(unique, np.ascontiguousarray(data), quant=spec)
        return self.b.func.constant(unique)

    def src_data(self, value: Value) -> np.ndarray:
        return self.src.weights.get(value.name)

    def convert(self, value: Value, spec: QuantSpec, name: str) -> Value:
        if value.quant == spec:
            return value
        return self.op("qnn.convert", [value], spec, name)

    def operand(self, value: Value, bits: int, name: str) -> Value:
        """An operand of an op running in `bits`: an activation converted to that width, or a
        constant quantized symmetrically in it (on qir's grid when its spec has that width)."""
        if value.is_constant:
            data = self.src_data(value).astype(np.float32)
            spec = value.quant
            if spec is not None and spec.scheme == "per-tensor" and spec.bits == bits \
                    and not isinstance(spec.scale, str):
                return self.constant(value.name, data, unsigned(spec))
            return self.constant(value.name, data, symmetric(data, bits))
        v = self.get(value)
        return self.convert(v, in_width(v.quant, bits), name + ".cvt")

    def op(self, op_name: str, operands: list[Value], spec: QuantSpec | None, name: str, **attrs) -> Value:
        result = self.b.op(op_name, *operands, name=name, **attrs)
        result.quant = spec
        return result

    def finish(self, value: Value, result: Value) -> Value:
        """Bring an op's output to the (unsigned) spec the q module gives its result."""
        return self.convert(value, unsigned(need_spec(result)), result.name + ".cvt")

    def width(self, op: Op) -> int:
        """16 when the result or any activation operand is 16 bit, else 8."""
        specs = [need_spec(op.results[0])] + [self.get(v).quant for v in op.operands
                                              if not v.is_constant and self.get(v).quant is not None]
        return 16 if any(s.bits == 16 for s in specs) else 8

    # -- the module -------------------------------------------------------------------------------
    def run(self) -> Module:
        if len(self.src.functions) != 1:
            raise QirError(f"qnn: one function per model is lowered today; the module has "
                           f"{', '.join('@' + f for f in self.src.functions)}")
        func = self.src.main
        self.b = Builder.new_function(self.dst, func.name)
        for arg in func.args:
            if any(d == 0 for d in arg.type.shape):
                raise QirError(f"qnn: input %{arg.name} has an empty dimension {arg.type}")
            spec = unsigned(need_spec(arg)) if arg.type.is_float else None
            self.env[id(arg)] = self.b.func.add_arg(arg.name, arg.type, spec)
        for op in func.ops:
            rule = RULES.get(op.name)
            if rule is None:
                raise QirError(f"{where(op)}qnn: {op.name} (%{op.results[0].name}) has no HTP lowering; "
                               f"lowered ops: {', '.join(sorted(RULES))}")
            try:
                self.env[id(op.results[0])] = rule(self, op)
            except QirError as exc:
                message = str(exc)
                if op.location and not message.startswith(where(op)):
                    message = where(op) + message
                raise QirError(message) from None
        outputs = [self.get(v) for v in func.outputs]
        self.keep_output_names(func.outputs, outputs)
        self.b.ret(*outputs)
        return self.dst

    def keep_output_names(self, sources: list[Value], outputs: list[Value]) -> None:
        """An output brought to its spec by a final conversion (`blk5.out.cvt`) takes the name of
        the value it stands for, so the graph output is `<value>.out` as for every other target
        (`qir-eval --compiled` finds it); the op before the conversion becomes `<value>.pre`."""
        values = {v.name: v for op in self.b.func.ops for v in op.results}
        for source, value in zip(sources, outputs):
            if value.name == source.name or value.producer is None or value.producer.name != "qnn.convert":
                continue
            holder = values.get(source.name)
            if holder is not None and holder not in outputs:
                holder.name = self.b.func.unique_name(source.name + ".pre")
                value.name = source.name
                values[holder.name], values[value.name] = holder, value


# -- rules: one per q op ---------------------------------------------------------------------------

def lower_linear(lz: Legalizer, op: Op) -> Value:
    x, w = op.operands[0], op.operands[1]
    name = op.results[0].name
    if not w.is_constant:
        raise QirError(f"qnn: q.linear %{name} needs a constant weight")
    wspec = w.quant
    if wspec is not None and wspec.block_scale is not None:
        return lower_lpbq_linear(lz, op)
    if wspec is not None and wspec.block_size is not None:
        raise QirError(f"qnn: weight @{w.name} of %{name} is quantized in blocks of {wspec.block_size}; HTP runs "
                       "4-bit blocks correctly only in the LPBQ pattern (a plain block-wise DequantizeLinear is "
                       "accepted and silently wrong): quantize it with \"scheme\": \"lpbq\" and \"block\" "
                       "(e.g. --recipe w4a16-lpbq)")
    if wspec is not None and wspec.bits == 4:
        raise QirError(f"qnn: weight @{w.name} of %{name} is 4-bit {wspec.scheme} ({wspec}); HTP runs 4-bit "
                       "weights only in the LPBQ pattern: quantize it with \"scheme\": \"lpbq\" and \"block\" "
                       "(e.g. --recipe w4a16-lpbq), or with 8-bit weights")
    if wspec is None or wspec.axis != 0 or wspec.bits != 8:
        raise QirError(f"qnn: weight @{w.name} of %{name} needs an int8 spec per output channel "
                       f"(axis 0), has {wspec}")
    bits = lz.width(op)
    xv = lz.operand(x, bits, name + ".x")
    scales = lz.src.weights.get(wspec.scale) if isinstance(wspec.scale, str) else np.asarray(wspec.scale)
    scales = np.broadcast_to(np.asarray(scales, np.float32).reshape(-1), (w.type.shape[0],)).copy()
    scale_ref = lz.constant(w.name + ".scale", scales, None)
    weight = lz.constant(w.name, lz.src_data(w).astype(np.float32),
                         QuantSpec(wspec.bits, True, scale=scale_ref.name, zero_point=(0,), axis=0))
    out_spec = in_width(need_spec(op.results[0]), bits)
    if len(op.operands) == 2:
        return lz.finish(lz.op("q.linear", [xv, weight], out_spec, name), op.results[0])
    # Gemm: int32 bias at scale s_x * s_w per output channel, on 2-D inputs
    bias_scales = (np.float32(xv.quant.scale[0]) * scales).astype(np.float32)
    bias_scale_ref = lz.constant(op.operands[2].name + ".scale", bias_scales, None)
    bias = lz.constant(op.operands[2].name, lz.src_data(op.operands[2]).astype(np.float32),
                       QuantSpec(32, True, scale=bias_scale_ref.name, zero_point=(0,), axis=0))
    shape = xv.type.shape
    if len(shape) != 2:
        xv = lz.op("q.reshape", [xv], xv.quant, name + ".2d", shape=(int(np.prod(shape[:-1])), shape[-1]))
    y = lz.op("q.linear", [xv, weight, bias], out_spec, name)
    if len(shape) != 2:
        y = lz.op("q.reshape", [y], out_spec, name + ".nd", shape=op.results[0].type.shape)
    return lz.finish(y, op.results[0])


LPBQ_LEVELS = 16  # HTP reads LPBQ block scales as integers 1..16 (measured: 17 and above are misread)


def lower_lpbq_linear(lz: Legalizer, op: Op) -> Value:
    """A linear whose int4 weight has LPBQ scales: MatMul reading the weight through
    DequantizeLinear(int4, DequantizeLinear(u8 k, per-channel float scale)), the pattern the QNN EP
    fuses into one HTP MatMul with block-expansion weights. A bias is added afterwards (the EP's
    LPBQ Gemm fusion needs a float weight and drops the bias): the MatMul's result gets a spec in the
    op's width that covers the result's range widened by max|bias|."""
    x, w = op.operands[0], op.operands[1]
    name, spec = op.results[0].name, w.quant
    if spec.bits != 4 or not spec.signed or w.type.rank != 2 or spec.axis != 1 \
            or isinstance(spec.zero_point, str) or any(spec.zero_point):
        raise QirError(f"qnn: LPBQ weight @{w.name} of %{name} needs int4, zero point 0, blocks along the input "
                       f"axis 1 of a 2-D weight; has {spec} on {w.type}")
    k = np.asarray(lz.src.weights.get(spec.block_scale))
    if k.min() < 1 or k.max() > LPBQ_LEVELS:
        raise QirError(f"qnn: LPBQ weight @{w.name} of %{name} has block scales in [{k.min()}, {k.max()}]; HTP reads "
                       f"them as integers 1..{LPBQ_LEVELS}")
    channel = lz.src.weights.get(spec.scale) if isinstance(spec.scale, str) else np.asarray(spec.scale)
    channel = np.broadcast_to(np.asarray(channel, np.float32).reshape(-1), (w.type.shape[0],)).copy()
    bits = lz.width(op)
    xv = lz.operand(x, bits, name + ".x")
    scale_ref = lz.constant(w.name + ".scale", channel, None)
    k_ref = lz.constant(w.name + ".block_scale", k.reshape(w.type.shape[0], -1).astype(np.uint8), None)
    weight = lz.constant(w.name, lz.src_data(w).astype(np.float32),
                         QuantSpec(4, True, scale=scale_ref.name, zero_point=(0,), axis=1,
                                   block_size=spec.block_size, block_scale=k_ref.name))
    out_spec = in_width(need_spec(op.results[0]), bits)
    if len(op.operands) == 2:
        return lz.finish(lz.op("q.linear", [xv, weight], out_spec, name), op.results[0])
    bias = op.operands[2]
    if not bias.is_constant:
        raise QirError(f"qnn: q.linear %{name} needs a constant bias")
    reach = float(np.abs(lz.src_data(bias)).max())
    lo, hi = real_range(out_spec)
    y = lz.op("q.linear", [xv, weight], covering(lo - reach, hi + reach, bits), name + ".matmul")
    y = lz.op("q.add", [y, lz.operand(bias, bits, name + ".bias")], out_spec, name)
    return lz.finish(y, op.results[0])


def lower_matmul(lz: Legalizer, op: Op) -> Value:
    """Two activations: u16 x s16 (or u8 x u8); transpose_b becomes an explicit transpose.

    The width is the result's: HTP fuses a 16-bit MatMul with a following Convert to u8 into a
    kernel that computes wrong values (measured: 136 LSB on the logits of a tiny llama, 2 LSB once
    the 16-bit result was made a graph output), so an 8-bit result takes 8-bit operands."""
    name = op.results[0].name
    bits = need_spec(op.results[0]).bits
    a = lz.operand(op.operands[0], bits, name + ".a")
    b_src = op.operands[1]
    if b_src.is_constant:
        data = lz.src_data(b_src).astype(np.float32)
        b = lz.constant(b_src.name, data, signed16(symmetric(data, 16)) if bits == 16 else symmetric(data, 8))
    else:
        v = lz.get(b_src)
        b = lz.convert(v, signed16(v.quant) if bits == 16 else in_width(v.quant, 8), name + ".b.cvt")
    if op.attrs["transpose_b"]:
        perm = list(range(b.type.rank))
        perm[-2:] = perm[-1], perm[-2]
        b = lz.op("q.transpose", [b], b.quant, name + ".bt", perm=perm)
    y = lz.op("q.matmul", [a, b], in_width(need_spec(op.results[0]), bits), name)
    return lz.finish(y, op.results[0])


def lower_elementwise(lz: Legalizer, op: Op) -> Value:
    """add, sub, mul, relu, gelu, tanh: every operand in the op's width, the result's spec in it."""
    name = op.results[0].name
    bits = lz.width(op)
    operands = [lz.operand(v, bits, f"{name}.{i}") for i, v in enumerate(op.operands)]
    y = lz.op(op.name, operands, in_width(need_spec(op.results[0]), bits), name, **dict(op.attrs))
    return lz.finish(y, op.results[0])


def lower_sigmoid(lz: Legalizer, op: Op) -> Value:
    name = op.results[0].name
    bits = lz.width(op)
    x = lz.operand(op.operands[0], bits, name + ".x")
    return lz.finish(lz.op("q.sigmoid", [x], SIGMOID_OUTPUT[bits], name), op.results[0])


def lower_silu(lz: Legalizer, op: Op) -> Value:
    """x * sigmoid(x): ONNX has no SiLU, HTP runs the pair."""
    name = op.results[0].name
    bits = lz.width(op)
    x = lz.operand(op.operands[0], bits, name + ".x")
    gate = lz.op("q.sigmoid", [x], SIGMOID_OUTPUT[bits], name + ".sigmoid")
    y = lz.op("q.mul", [x, gate], in_width(need_spec(op.results[0]), bits), name)
    return lz.finish(y, op.results[0])


def lower_softmax(lz: Legalizer, op: Op) -> Value:
    """Probabilities are unsigned with zero point 0 on the recipe's grid (a signed [-1, 1] spec
    becomes u16 0..65535 at the same scale: the same value for every probability). HTP's 16-bit
    MatMul of probabilities with zero point 32768 by values leaks the padding: keys whose
    probability is exactly 0 still moved the result by 2 LSB when their values changed (measured
    on a u16 x s16 MatMul, 0 with zero point 0, which also halved the difference to the CPU EP)."""
    name = op.results[0].name
    x = lz.get(op.operands[0])
    if op.attrs["axis"] not in (-1, x.type.rank - 1):
        raise QirError(f"qnn: q.softmax %{name} must run over the last axis")
    bits = lz.width(op)
    x = lz.operand(op.operands[0], bits, name + ".x")
    spec = in_width(need_spec(op.results[0]), bits)
    if real_range(spec)[1] >= 1.0:
        spec = QuantSpec(bits, False, scale=spec.scale, zero_point=(0,))
        return lz.op("q.softmax", [x], spec, name, axis=-1)
    return lz.finish(lz.op("q.softmax", [x], spec, name, axis=-1), op.results[0])


def mask_condition(lz: Legalizer, mask: Value, name: str) -> Value:
    """The bool condition `mask != 0` Where takes: a constant mask is a bool initializer; a runtime
    integer mask (the attention mask an application passes, maybe reshaped) is Cast to bool, which
    HTP runs as its own Cast (measured: Cast, Equal, Equal + Not and Greater all run on HTP; a
    Cast is one op and is exactly `!= 0`). Built once per mask, however many ops use it."""
    if id(mask) in lz.conditions:
        return lz.conditions[id(mask)]
    if mask.is_constant:
        cond = lz.constant(mask.name, lz.src_data(mask) != 0, None)
    elif mask.type.dtype == "bool":
        cond = lz.get(mask)
    elif mask.type.dtype in INTEGER_DTYPES:
        cond = lz.op("q.cast", [lz.get(mask)], None, mask.name + ".bool", dtype="bool")
    else:
        raise QirError(f"qnn: q.masked_fill %{name} needs a constant, boolean or integer mask, "
                       f"got %{mask.name}: {mask.type}")
    lz.conditions[id(mask)] = cond
    return cond


def lower_masked_fill(lz: Legalizer, op: Op) -> Value:
    """Where(mask, x, fill) with x, the fill and the result in one spec: the fill saturates at the
    bottom of the range instead of widening it. A constant x (the mean pool's logits, a row of
    zeros) is stored in that spec."""
    name = op.results[0].name
    spec = unsigned(need_spec(op.results[0]))
    source = op.operands[0]
    if source.is_constant:
        x = lz.constant(source.name, lz.src_data(source).astype(np.float32), spec)
    else:
        x = lz.convert(lz.get(source), spec, name + ".x.cvt")
    cond = mask_condition(lz, op.operands[1], name)
    return lz.op("q.masked_fill", [x, cond], spec, name, value=op.attrs["value"])


def lower_cast(lz: Legalizer, op: Op) -> Value:
    """Between float widths (a float16 checkpoint's embedding to f32) a cast changes no real value:
    at most a requantization to the result's spec. An integer to bool (`!= 0`) is a Cast HTP runs."""
    source, result = op.operands[0], op.results[0]
    if source.type.is_float and result.type.is_float:
        return lz.finish(lz.get(source), result)
    if source.type.dtype in INTEGER_DTYPES and result.type.dtype == "bool" and not source.is_constant:
        return lz.op("q.cast", [lz.get(source)], None, result.name, dtype="bool")
    raise QirError(f"qnn: q.cast %{result.name} from {source.type.dtype} to {result.type.dtype} has no HTP "
                   f"lowering (only between float widths, and integer to bool)")


def gamma_u8(data: np.ndarray) -> QuantSpec:
    """u8 over [min(0, γ), max(0, γ)]: a positive gamma uses all 256 steps."""
    lo, hi = min(0.0, float(data.min())), max(0.0, float(data.max()))
    scale = (hi - lo) / 255 or 1.0
    return QuantSpec(8, False, scale=(scale,), zero_point=(int(round(-lo / scale)),))


def gamma_s16(data: np.ndarray, spec: QuantSpec | None) -> QuantSpec:
    """qir's own int16 spec of a norm weight when it has one (symmetric, zero point 0), else one."""
    if spec is not None and spec.bits == 16 and spec.signed and spec.scheme == "per-tensor" \
            and not isinstance(spec.scale, str) and spec.zero_point[0] == 0:
        return spec
    return QuantSpec(16, True, scale=((float(np.abs(data).max()) or 1.0) / 32767,), zero_point=(0,))


def norm_width(lz: Legalizer, op: Op) -> int:
    """A norm runs in its input's width (HTP runs a u16 -> u8 norm in float; an 8-bit input is
    widened when the result is 16 bit)."""
    x_bits = lz.get(op.operands[0]).quant.bits
    return 16 if x_bits == 16 or need_spec(op.results[0]).bits == 16 else 8


def lower_rms_norm(lz: Legalizer, op: Op) -> Value:
    x, w = op.operands
    name = op.results[0].name
    if not w.is_constant:
        raise QirError(f"qnn: q.rms_norm %{name} needs a constant weight")
    bits = norm_width(lz, op)
    xv = lz.operand(x, bits, name + ".x")
    data = lz.src_data(w).astype(np.float32)
    gamma = lz.constant(w.name, data, gamma_s16(data, w.quant) if bits == 16 else gamma_u8(data))
    y = lz.op("q.rms_norm", [xv, gamma], in_width(need_spec(op.results[0]), bits), name, eps=op.attrs["eps"])
    return lz.finish(y, op.results[0])


def lower_layer_norm(lz: Legalizer, op: Op) -> Value:
    """HTP runs LayerNorm in fixed point only with a u8 gamma and an int32 beta (measured: a u16 or
    s8 gamma, or a u8 / u16 beta, puts it in float or off HTP). Beta's int32 grid spans its range
    (2^30 steps, exact in float32): its rounding is far below any output step."""
    x, w, b = op.operands
    name = op.results[0].name
    if not (w.is_constant and b.is_constant):
        raise QirError(f"qnn: q.layer_norm %{name} needs a constant weight and bias")
    bits = norm_width(lz, op)
    xv = lz.operand(x, bits, name + ".x")
    w_data, b_data = lz.src_data(w).astype(np.float32), lz.src_data(b).astype(np.float32)
    gamma = lz.constant(w.name, w_data, gamma_u8(w_data))
    beta_scale = (float(np.abs(b_data).max()) or 1.0) / 2 ** 30
    beta = lz.constant(b.name, b_data, QuantSpec(32, True, scale=(beta_scale,), zero_point=(0,)))
    y = lz.op("q.layer_norm", [xv, gamma, beta], in_width(need_spec(op.results[0]), bits), name,
              eps=op.attrs["eps"])
    return lz.finish(y, op.results[0])


def lower_move(lz: Legalizer, op: Op) -> Value:
    """reshape, transpose, slice: the integers move unchanged, so the result keeps the input's spec.
    An integer tensor (the attention mask) has no spec and moves as it is."""
    x = lz.get(op.operands[0])
    y = lz.op(op.name, [x], x.quant, op.results[0].name, **dict(op.attrs))
    if x.quant is None and not x.type.is_float:
        return y
    return lz.finish(y, op.results[0])


def lower_concat(lz: Legalizer, op: Op) -> Value:
    name = op.results[0].name
    spec = unsigned(need_spec(op.results[0]))
    parts = []
    for i, v in enumerate(op.operands):
        part = lz.operand(v, spec.bits, f"{name}.{i}")
        parts.append(part if part.is_constant and part.quant == spec else lz.convert(part, spec, f"{name}.{i}.cvt"))
    return lz.op("q.concat", parts, spec, name, axis=op.attrs["axis"])


def lower_gather(lz: Legalizer, op: Op) -> Value:
    """The table is stored directly in the result's spec (Gather copies integers)."""
    table, indices = op.operands
    name = op.results[0].name
    if not table.is_constant:
        raise QirError(f"qnn: q.gather %{name} needs a constant table")
    spec = unsigned(need_spec(op.results[0]))
    data = lz.constant(table.name, lz.src_data(table).astype(np.float32), spec)
    return lz.op("q.gather", [data, lz.get(indices)], spec, name, axis=op.attrs["axis"])


def lower_rope(lz: Legalizer, op: Op) -> Value:
    """x·cos + rotate(x)·sin, rotate as slices and a concatenation; the sign of rotate's negated
    half moves into a signed sine table. |x·cos| and |rotate(x)·sin| never exceed |x|, so both
    products keep x's spec."""
    x = lz.get(op.operands[0])
    name, spec = op.results[0].name, x.quant
    bits = spec.bits
    cos = lz.src_data(op.operands[1]).astype(np.float32)
    sin = lz.src_data(op.operands[2]).astype(np.float32)
    shape, rank, half = x.type.shape, x.type.rank, x.type.shape[-1] // 2

    def window(value, lo, hi, label):
        begin = [0] * (value.type.rank - 1) + [lo]
        end = list(value.type.shape[:-1]) + [hi]
        return lz.op("q.slice", [value], spec, f"{name}.{label}", begin=begin, end=end)

    if op.attrs["layout"] == "half":
        rotated = lz.op("q.concat", [window(x, half, 2 * half, "hi"), window(x, 0, half, "lo")], spec,
                        name + ".rot", axis=rank - 1)
        signed_sin = np.concatenate([-sin[:, :half], sin[:, half:]], axis=-1)
    else:
        pairs = lz.op("q.reshape", [x], spec, name + ".pairs", shape=list(shape[:-1]) + [half, 2])
        swapped = lz.op("q.concat", [window(pairs, 1, 2, "odd"), window(pairs, 0, 1, "even")], spec,
                        name + ".swap", axis=rank)
        rotated = lz.op("q.reshape", [swapped], spec, name + ".rot", shape=list(shape))
        signed_sin = sin * np.tile(np.asarray([-1.0, 1.0], np.float32), half)
    cos_q = lz.constant(op.operands[1].name, cos, symmetric(cos, bits))
    sin_q = lz.constant(op.operands[2].name + ".signed", signed_sin, symmetric(signed_sin, bits))
    a = lz.op("q.mul", [x, cos_q], spec, name + ".cos")
    b = lz.op("q.mul", [rotated, sin_q], spec, name + ".sin")
    return lz.finish(lz.op("q.add", [a, b], in_width(need_spec(op.results[0]), bits), name), op.results[0])


RULES = {
    "q.linear": lower_linear, "q.matmul": lower_matmul,
    "q.add": lower_elementwise, "q.sub": lower_elementwise, "q.mul": lower_elementwise,
    "q.relu": lower_elementwise, "q.gelu": lower_elementwise, "q.tanh": lower_elementwise,
    "q.sigmoid": lower_sigmoid, "q.silu": lower_silu, "q.softmax": lower_softmax,
    "q.masked_fill": lower_masked_fill,
    "q.reshape": lower_move, "q.transpose": lower_move, "q.slice": lower_move,
    "q.concat": lower_concat, "q.gather": lower_gather, "q.rope": lower_rope, "q.cast": lower_cast,
    "q.rms_norm": lower_rms_norm, "q.layer_norm": lower_layer_norm,
}


def legalize_qnn(module: Module) -> Module:
    """The QNN form of a quantized module (QirError naming the first op HTP cannot run)."""
    legal = Legalizer(module).run()
    verify(legal)
    return legal
