"""Write the QNN form of a module (backends/qnn/legalize.py) as a QDQ ONNX model.

Every value with a quant spec is a QuantizeLinear -> DequantizeLinear pair after the node that
computes it; every quantized constant is an integer initializer read through DequantizeLinear.
The float graph is then exactly the fake-quant semantics of the module, and the QNN EP folds
each DequantizeLinear -> op -> QuantizeLinear into one fixed-point HTP op. An LPBQ weight is int4
read through a block-wise DequantizeLinear whose scales are themselves a DequantizeLinear of the
u8 block scales by the per-channel float scales (the pattern the QNN EP fuses into HTP's MatMul).

Tensor names: `<value>` is the float the op computes, `<value>.q` its integers, `<value>.dq`
their dequantized floats (`<value>.out` for a returned value: the graph output)."""
from __future__ import annotations

import ml_dtypes
import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from qir.errors import QirError
from qir.ir import Module, Op, Value
from qir.quant import QuantSpec
from qir.verifier import verify

OPSET = 23  # int16 / uint16 QDQ (21), Gelu (20), RMSNormalization (23)
IR_VERSION = 11  # the IR version of opset 23
STORAGE = {(8, True): np.int8, (8, False): np.uint8, (16, True): np.int16, (16, False): np.uint16,
           (32, True): np.int32, (4, True): np.int8}  # 4-bit weights keep their grid in int8
ONNX_OPS = {"q.add": "Add", "q.sub": "Sub", "q.mul": "Mul", "q.relu": "Relu", "q.sigmoid": "Sigmoid",
            "q.tanh": "Tanh", "q.softmax": "Softmax", "q.matmul": "MatMul", "q.transpose": "Transpose",
            "q.reshape": "Reshape", "q.slice": "Slice", "q.concat": "Concat", "q.gather": "Gather",
            "q.gelu": "Gelu", "q.masked_fill": "Where", "q.linear": "MatMul",
            "q.rms_norm": "RMSNormalization", "q.layer_norm": "LayerNormalization", "q.cast": "Cast"}


def storage(spec: QuantSpec, what: str):
    dtype = STORAGE.get((spec.bits, spec.signed))
    if dtype is None:
        raise QirError(f"qnn: {what} has a {spec.storage} spec; QDQ ONNX for HTP stores u8, u16, i8, i16 or i32")
    return dtype


class Emitter:
    def __init__(self, module: Module):
        self.module = module
        self.func = module.main
        self.nodes: list = []
        self.initializers: list = []
        self.names: dict[int, str] = {}  # value -> name of the float tensor its users read
        self.outputs = {id(v) for v in self.func.outputs}
        # names of graph inputs and node outputs; initializers are named around them
        values = self.func.args + [r for op in self.func.ops for r in op.results]
        self.taken: set[str] = {v.name + suffix for v in values for suffix in ("", ".q", ".dq", ".out")}
        self.node_names: set[str] = set()
        self.dequantized: dict[str, str] = {}  # constant -> its DequantizeLinear output

    def fresh(self, name: str) -> str:
        """`name`, or `name.1`, `name.2`... if a tensor of that name exists."""
        unique, i = name, 1
        while unique in self.taken:
            unique, i = f"{name}.{i}", i + 1
        self.taken.add(unique)
        return unique

    def init(self, name: str, array) -> str:
        """Add an initializer under `name` (made unique) and return the name used."""
        unique = self.fresh(name)
        self.initializers.append(numpy_helper.from_array(np.asarray(array), unique))
        return unique

    def node(self, op_type: str, inputs: list[str], outputs: list[str], name: str, **attrs) -> None:
        unique, i = name, 1
        while unique in self.node_names:
            unique, i = f"{name}.{i}", i + 1
        self.node_names.add(unique)
        self.nodes.append(helper.make_node(op_type, inputs, outputs, name=unique, **attrs))

    def params(self, spec: QuantSpec, base: str, what: str) -> tuple[str, str]:
        """Scale and zero-point initializers of a spec (per-tensor or per-channel)."""
        dtype = storage(spec, what)
        if isinstance(spec.scale, str):
            scales = np.asarray(self.module.weights.get(spec.scale), np.float32).reshape(-1)
        else:
            scales = np.asarray(spec.scale, np.float32)
        zeros = np.asarray(spec.zero_point, np.int64)
        if spec.axis is None:
            scale, zero = scales.reshape(()), zeros.reshape(()).astype(dtype)
        else:
            scale, zero = scales, np.broadcast_to(zeros, scales.shape).astype(dtype)
        return self.init(base + ".scale", scale), self.init(base + ".zero", zero)

    def quantize_dequantize(self, value: Value, raw: str) -> None:
        """raw float -> Q -> DQ: the value as its users (and the graph output) read it."""
        scale, zero = self.params(value.quant, value.name, f"%{value.name}")
        q, dq = value.name + ".q", value.name + (".out" if id(value) in self.outputs else ".dq")
        self.node("QuantizeLinear", [raw, scale, zero], [q], value.name + ".quantize")
        self.node("DequantizeLinear", [q, scale, zero], [dq], value.name + ".dequantize")
        self.names[id(value)] = dq

    def constant(self, value: Value, transpose: bool = False) -> str:
        """A constant as an initializer, through DequantizeLinear when it has a spec."""
        data = np.asarray(self.module.weights.get(value.name))
        spec = value.quant
        if spec is None:
            return self.init(value.name, data)
        if spec.block_scale is not None:
            return self.lpbq_constant(value, transpose)
        base = value.name + (".t" if transpose else "")
        if base in self.dequantized:
            return self.dequantized[base]
        scale, zero = self.params(spec, base, f"@{value.name}")
        scales = np.asarray(self.module.weights.get(spec.scale) if isinstance(spec.scale, str) else spec.scale,
                            np.float32).reshape(-1)
        if spec.axis is not None:
            shape = [1] * data.ndim
            shape[spec.axis] = -1
            scales = scales.reshape(shape)
        zeros = np.asarray(spec.zero_point, np.float32).reshape(-1 if spec.axis is not None else ())
        if spec.axis is not None and zeros.size > 1:
            zeros = zeros.reshape(scales.shape)
        # the same float32 arithmetic as the fake-quant interpreter: round half to even, then clip
        q = np.clip(np.round(data.astype(np.float32) / scales) + zeros, spec.qmin, spec.qmax)
        q = q.astype(storage(spec, f"@{value.name}"))
        axis = spec.axis
        if transpose:
            q, axis = q.T, (None if axis is None else 1 - axis)
        attrs = {"axis": axis} if axis is not None else {}
        out = self.dequantized[base] = self.fresh(base + ".dq")
        self.node("DequantizeLinear", [self.init(base + ".int", q), scale, zero], [out], base + ".dequantize", **attrs)
        return out

    def lpbq_constant(self, value: Value, transpose: bool) -> str:
        """An LPBQ weight [out, in] (blocks along axis 1): int4 through DequantizeLinear(block_size),
        its x_scale DequantizeLinear(u8 block scales, per-channel float scales) — per block
        k[c, b] · s[c] in float32, the product qir's fake-quant computes; `transpose` stores it
        [in, out] for MatMul."""
        spec, base = value.quant, value.name + (".t" if transpose else "")
        if base in self.dequantized:
            return self.dequantized[base]
        data = np.asarray(self.module.weights.get(value.name), np.float32)
        if data.ndim != 2 or spec.axis != 1:
            raise QirError(f"qnn: LPBQ weight @{value.name} must be 2-D with blocks along axis 1, has {spec}")
        channel = np.asarray(self.module.weights.get(spec.scale) if isinstance(spec.scale, str) else spec.scale,
                             np.float32).reshape(-1)
        k = np.asarray(self.module.weights.get(spec.block_scale)).reshape(data.shape[0], -1)
        scales = (k.astype(np.float32) * channel[:, None]).astype(np.float32)
        blocked = data.reshape(data.shape[0], -1, spec.block_size)
        q = np.clip(np.round(blocked / scales[:, :, None]), spec.qmin, spec.qmax).reshape(data.shape)
        q, k = q.astype(ml_dtypes.int4), k.astype(np.uint8)
        weight_axis, channel_axis = 1, 0
        if transpose:
            q, k, weight_axis, channel_axis = q.T, k.T, 0, 1
        block_scale = self.fresh(base + ".block_scale.dq")
        self.node("DequantizeLinear", [self.init(base + ".block_scale", k), self.init(base + ".scale", channel),
                                       self.init(base + ".scale.zero", np.zeros(channel.shape, np.uint8))],
                  [block_scale], base + ".block_scale.dequantize", axis=channel_axis)
        out = self.dequantized[base] = self.fresh(base + ".dq")
        self.node("DequantizeLinear", [self.init(base + ".int", q), block_scale,
                                       self.init(base + ".zero", np.zeros(k.shape, ml_dtypes.int4))],
                  [out], base + ".dequantize", axis=weight_axis, block_size=int(spec.block_size))
        return out

    def read(self, value: Value) -> str:
        if value.is_constant:
            return self.constant(value)
        return self.names[id(value)]

    def emit_op(self, op: Op) -> None:
        result = op.results[0]
        raw = result.name
        if op.name == "qnn.convert":  # DequantizeLinear -> QuantizeLinear: HTP's Convert
            self.quantize_dequantize(result, self.read(op.operands[0]))
            return
        op_type = ONNX_OPS.get(op.name)
        if op_type is None:
            raise QirError(f"qnn: {op.name} (%{raw}) has no ONNX form; legalize the module for qnn first")
        attrs = {}
        if op.name == "q.linear" and len(op.operands) == 2:
            # MatMul takes the weight as [in, out]: per-channel along axis 1
            inputs = [self.read(op.operands[0]), self.constant(op.operands[1], transpose=True)]
        else:
            inputs = [self.read(v) for v in op.operands]
        if op.name == "q.linear" and len(op.operands) == 3:
            op_type, attrs = "Gemm", {"transB": 1}
        if op.name == "q.masked_fill":
            fill = self.init(raw + ".fill.int", quantize_scalar(op.attrs["value"], result.quant))
            scale, zero = self.params(result.quant, raw + ".fill", f"%{raw}")
            fill_dq = self.fresh(raw + ".fill")
            self.node("DequantizeLinear", [fill, scale, zero], [fill_dq], raw + ".fill.dequantize")
            inputs = [inputs[1], inputs[0], fill_dq]
        elif op.name in ("q.softmax", "q.concat", "q.gather"):
            attrs = {"axis": int(op.attrs["axis"])}
        elif op.name == "q.transpose":
            attrs = {"perm": [int(p) for p in op.attrs["perm"]]}
        elif op.name in ("q.rms_norm", "q.layer_norm"):
            attrs = {"axis": -1, "epsilon": float(op.attrs["eps"])}
        elif op.name == "q.cast":
            attrs = {"to": onnx_type(result.type.np_dtype)}
        elif op.name == "q.gelu":
            attrs = {"approximate": op.attrs["approximate"]}
        elif op.name == "q.reshape":
            inputs.append(self.init(raw + ".shape", np.asarray(op.attrs["shape"], np.int64)))
        elif op.name == "q.slice":
            axes = list(range(len(op.attrs["begin"])))
            inputs += [self.init(raw + ".starts", np.asarray(op.attrs["begin"], np.int64)),
                       self.init(raw + ".ends", np.asarray(op.attrs["end"], np.int64)),
                       self.init(raw + ".axes", np.asarray(axes, np.int64))]
        self.node(op_type, inputs, [raw], raw, **attrs)
        if result.quant is not None:
            self.quantize_dequantize(result, raw)
        else:
            self.names[id(result)] = raw

    def run(self) -> onnx.ModelProto:
        graph_inputs = []
        for arg in self.func.args:
            graph_inputs.append(helper.make_tensor_value_info(arg.name, onnx_type(arg.type.np_dtype), arg.type.shape))
            if arg.quant is not None:
                self.quantize_dequantize(arg, arg.name)
            else:
                self.names[id(arg)] = arg.name
        for op in self.func.ops:
            self.emit_op(op)
        graph_outputs = []
        for value in self.func.outputs:
            if value.quant is None:
                raise QirError(f"qnn: output %{value.name} has no quant spec")
            graph_outputs.append(helper.make_tensor_value_info(self.names[id(value)], TensorProto.FLOAT,
                                                               value.type.shape))
        graph = helper.make_graph(self.nodes, self.func.name, graph_inputs, graph_outputs, self.initializers)
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)], producer_name="qir")
        model.ir_version = IR_VERSION
        onnx.checker.check_model(model)
        return model


def quantize_scalar(value: float, spec: QuantSpec) -> np.ndarray:
    q = np.clip(np.round(np.float32(value) / np.float32(spec.scale[0])) + spec.zero_point[0], spec.qmin, spec.qmax)
    return np.asarray(q, storage(spec, "a fill value"))


def onnx_type(dtype) -> int:
    return helper.np_dtype_to_tensor_dtype(np.dtype(dtype))


def emit_onnx(module: Module) -> onnx.ModelProto:
    """The QDQ ONNX model of a module in QNN form."""
    verify(module)
    for value in module.main.outputs:
        if value.producer is None:
            raise QirError(f"qnn: output %{value.name} is an input; HTP graphs need an op between them")
    return Emitter(module).run()
