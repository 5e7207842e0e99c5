"""Write a module of `tfl.` ops as .tflite bytes, without TensorFlow: the flatbuffer object API of
ai_edge_litert.schema_py_generated. Same module, same bytes."""
from __future__ import annotations

import flatbuffers
import numpy as np
from ai_edge_litert import schema_py_generated as fb

from backends.tflite.dialect.base import TflOp, f32
from backends.tflite.rules import check_runtime_rules
from backends.tflite.size_limit import check_file_size
from qir.errors import QirError
from qir.ir import Function, Module, Op, Value
from qir.quant import QuantSpec
from qir.verifier import verify

BUFFER_ALIGNMENT = 16  # the runtime maps constant data in place: keep it aligned for SIMD loads
TENSOR_TYPES = {"f32": fb.TensorType.FLOAT32, "i8": fb.TensorType.INT8, "i16": fb.TensorType.INT16,
                "i32": fb.TensorType.INT32, "i64": fb.TensorType.INT64, "bool": fb.TensorType.BOOL}
ACTIVATION = {"NONE": fb.ActivationFunctionType.NONE, "RELU": fb.ActivationFunctionType.RELU,
              "RELU6": fb.ActivationFunctionType.RELU6, "RELU_N1_TO_1": fb.ActivationFunctionType.RELU_N1_TO_1}


class AlignedBufferT(fb.BufferT):
    """BufferT whose data vector starts on a BUFFER_ALIGNMENT boundary of the file."""

    def Pack(self, builder):
        data = None
        if self.data is not None:
            raw = np.ascontiguousarray(self.data).view(np.uint8).reshape(-1)
            builder.StartVector(1, raw.size, BUFFER_ALIGNMENT)
            builder.head -= raw.size
            builder.Bytes[builder.head:builder.head + raw.size] = raw.tobytes()
            data = builder.EndVector()
        fb.BufferStart(builder)
        if data is not None:
            fb.BufferAddData(builder, data)
        return fb.BufferEnd(builder)


def _operator_version(op: Op) -> int:
    """tensorflow/lite/tools/versioning/op_version.cc, for the cases this dialect produces."""
    if op.is_float:
        return _float_operator_version(op)
    dtype = op.operands[0].type.dtype
    name = op.name
    if name == "tfl.fully_connected":
        if len(op.operands) == 2:
            return 6
        if op.operands[0].type.rank != 2:  # keep_num_dims is set
            return 5
        return 4 if dtype == "i8" else 1
    if name in ("tfl.add",):
        return 3 if dtype == "i16" else 2  # int16 with pot_scale_int16 = false
    if name == "tfl.sub":
        return 5 if dtype == "i16" else 2
    if name == "tfl.mul":
        if dtype == "i16":
            return 4
        real = op.attrs["multiplier"] * 2.0 ** (op.attrs["shift"] - 31)
        return 3 if real >= 1.0 else 2
    if name in ("tfl.batch_matmul", "tfl.softmax", "tfl.mean", "tfl.rsqrt", "tfl.concatenation"):
        return 3 if dtype == "i16" else 2
    if name in ("tfl.logistic", "tfl.tanh"):
        return 3 if dtype == "i16" else 2
    if name == "tfl.gelu":
        return 2
    if name in ("tfl.slice", "tfl.strided_slice"):
        return 4 if dtype == "i16" else 2
    if name == "tfl.transpose":
        return 5 if dtype == "i16" else (4 if op.operands[0].type.rank > 4 else 2)
    if name == "tfl.gather":
        return 4 if dtype == "i16" else 2
    if name == "tfl.quantize":
        return 2 if op.results[0].type.dtype == "i16" else 1
    if name == "tfl.dequantize":
        return 3 if dtype == "i16" else 2
    return 1


def _float_operator_version(op: Op) -> int:
    """op_version.cc for float kernels: version 1 unless a feature needs more (rank 5 here comes
    from the interleaved RoPE's pairs)."""
    rank = max(v.type.rank for v in op.operands)
    broadcast_rank5 = rank > 4 and len({v.type.shape for v in op.operands}) > 1
    if op.name == "tfl.fully_connected":
        return 6 if len(op.operands) == 2 else 5  # no bias / keep_num_dims
    if op.name in ("tfl.transpose", "tfl.strided_slice") and rank > 4:
        return 4
    if op.name == "tfl.slice" and rank > 4:
        return 5
    if op.name in ("tfl.sub", "tfl.maximum") and broadcast_rank5:
        return 3
    if op.name == "tfl.div" and broadcast_rank5:
        return 2
    if op.name in ("tfl.gather", "tfl.transpose", "tfl.strided_slice") and op.operands[0].type.dtype == "bool":
        return 3
    return 1


def _options(op: Op):
    """(BuiltinOptions type, options object) of one op."""
    a = op.attrs
    name = op.name
    if name == "tfl.fully_connected":
        return fb.BuiltinOptions.FullyConnectedOptions, fb.FullyConnectedOptionsT(
            fusedActivationFunction=ACTIVATION[a["fused_activation"]], keepNumDims=True)
    if name == "tfl.add":
        return fb.BuiltinOptions.AddOptions, fb.AddOptionsT(
            fusedActivationFunction=ACTIVATION[a["fused_activation"]], potScaleInt16=False)
    if name == "tfl.sub":
        return fb.BuiltinOptions.SubOptions, fb.SubOptionsT(
            fusedActivationFunction=ACTIVATION[a["fused_activation"]], potScaleInt16=False)
    if name == "tfl.mul":
        return fb.BuiltinOptions.MulOptions, fb.MulOptionsT(fusedActivationFunction=ACTIVATION[a["fused_activation"]])
    if name == "tfl.batch_matmul":
        return fb.BuiltinOptions.BatchMatMulOptions, fb.BatchMatMulOptionsT(adjX=a["adj_x"], adjY=a["adj_y"])
    if name == "tfl.softmax":
        return fb.BuiltinOptions.SoftmaxOptions, fb.SoftmaxOptionsT(beta=a["beta"])
    if name == "tfl.reshape":
        return fb.BuiltinOptions.ReshapeOptions, fb.ReshapeOptionsT(newShape=np.asarray(a["shape"], np.int32))
    if name == "tfl.transpose":
        return fb.BuiltinOptions.TransposeOptions, fb.TransposeOptionsT()
    if name == "tfl.gather":
        return fb.BuiltinOptions.GatherOptions, fb.GatherOptionsT(axis=a["axis"], batchDims=0)
    if name == "tfl.concatenation":
        return fb.BuiltinOptions.ConcatenationOptions, fb.ConcatenationOptionsT(axis=a["axis"])
    if name == "tfl.quantize":
        return fb.BuiltinOptions.QuantizeOptions, fb.QuantizeOptionsT()
    if name == "tfl.dequantize":
        return fb.BuiltinOptions.DequantizeOptions, fb.DequantizeOptionsT()
    if name == "tfl.mean":
        return fb.BuiltinOptions.ReducerOptions, fb.ReducerOptionsT(keepDims=a["keepdims"])
    if name == "tfl.select_v2":
        return fb.BuiltinOptions.SelectV2Options, fb.SelectV2OptionsT()
    if name == "tfl.slice":
        return fb.BuiltinOptions.SliceOptions, fb.SliceOptionsT()
    if name == "tfl.strided_slice":
        return fb.BuiltinOptions.StridedSliceOptions, fb.StridedSliceOptionsT(
            beginMask=0, endMask=0, ellipsisMask=0, newAxisMask=0, shrinkAxisMask=0, offset=False)
    if name == "tfl.gelu":
        return fb.BuiltinOptions.GeluOptions, fb.GeluOptionsT(approximate=a["approximate"])
    if name == "tfl.div":
        return fb.BuiltinOptions.DivOptions, fb.DivOptionsT(fusedActivationFunction=ACTIVATION[a["fused_activation"]])
    if name == "tfl.maximum":
        return fb.BuiltinOptions.MaximumMinimumOptions, fb.MaximumMinimumOptionsT()
    if name == "tfl.sum":
        return fb.BuiltinOptions.ReducerOptions, fb.ReducerOptionsT(keepDims=a["keepdims"])
    if name == "tfl.cast":
        return fb.BuiltinOptions.CastOptions, fb.CastOptionsT(
            inDataType=TENSOR_TYPES[op.operands[0].type.dtype], outDataType=TENSOR_TYPES[a["dtype"]])
    if name == "tfl.not_equal":
        return fb.BuiltinOptions.NotEqualOptions, fb.NotEqualOptionsT()
    return fb.BuiltinOptions.NONE, None


def _extra_inputs(op: Op) -> list[np.ndarray]:
    """Attributes the runtime takes as constant int32 input tensors."""
    if op.name == "tfl.reshape":
        return [np.asarray(op.attrs["shape"], np.int32)]
    if op.name == "tfl.transpose":
        return [np.asarray(op.attrs["perm"], np.int32)]
    if op.name in ("tfl.mean", "tfl.sum"):
        return [np.asarray(op.attrs["axes"], np.int32)]
    if op.name == "tfl.slice":
        return [np.asarray(op.attrs["begin"], np.int32), np.asarray(op.attrs["size"], np.int32)]
    if op.name == "tfl.strided_slice":
        return [np.asarray(op.attrs[k], np.int32) for k in ("begin", "end", "strides")]
    return []


def _quantization(spec: QuantSpec | None, module: Module) -> fb.QuantizationParametersT | None:
    if spec is None:
        return None
    scale = spec.scale if not isinstance(spec.scale, str) else module.weights.get(spec.scale).reshape(-1)
    zero = spec.zero_point if not isinstance(spec.zero_point, str) else module.weights.get(spec.zero_point).reshape(-1)
    scale = np.asarray([f32(s) for s in scale], np.float32)
    zero = np.broadcast_to(np.asarray(zero, np.int64), scale.shape).copy()
    return fb.QuantizationParametersT(scale=scale, zeroPoint=zero, quantizedDimension=spec.axis or 0)


def _bias_quantization(op: Op) -> fb.QuantizationParametersT:
    """The runtime checks a bias scale against s_x * s_w: write exactly that, per channel."""
    x, w = op.operands[0].quant, op.operands[1].quant
    scales = np.asarray([f32(x.scale[0]) * f32(s) for s in w.scale], np.float32)
    return fb.QuantizationParametersT(scale=scales, zeroPoint=np.zeros(scales.shape, np.int64), quantizedDimension=0)


class _Writer:
    def __init__(self, module: Module):
        self.module = module
        self.tensors: list[fb.TensorT] = []
        self.buffers: list[fb.BufferT] = [AlignedBufferT()]  # buffer 0: the empty buffer by convention
        self.index: dict[int, int] = {}
        self.opcodes: dict[tuple[int, int], int] = {}
        self.codes: list[fb.OperatorCodeT] = []

    def tensor(self, name: str, shape, dtype: str, quantization, data: np.ndarray | None = None) -> int:
        if dtype not in TENSOR_TYPES:
            raise QirError(f"tensor {name}: dtype {dtype} has no TFLite equivalent here")
        t = fb.TensorT()
        t.name = name
        t.shape = np.asarray(shape, np.int32)
        t.type = TENSOR_TYPES[dtype]
        t.quantization = quantization
        t.buffer = 0
        if data is not None:
            buffer = AlignedBufferT()
            buffer.data = np.ascontiguousarray(data).view(np.uint8).reshape(-1)
            t.buffer = len(self.buffers)
            self.buffers.append(buffer)
        self.tensors.append(t)
        return len(self.tensors) - 1

    def value(self, value: Value, quantization=None) -> int:
        if id(value) not in self.index:
            data = None
            if value.is_constant:
                data = self.module.weights.get(value.name).astype(value.type.np_dtype).reshape(value.type.shape)
            self.index[id(value)] = self.tensor(value.name, value.type.shape, value.type.dtype,
                                                quantization or _quantization(value.quant, self.module), data)
        return self.index[id(value)]

    def opcode(self, op: Op) -> int:
        code = getattr(fb.BuiltinOperator, op.tflite_op)
        key = (code, _operator_version(op))
        if key not in self.opcodes:
            c = fb.OperatorCodeT()
            c.builtinCode = code
            c.deprecatedBuiltinCode = min(code, 127)  # PLACEHOLDER_FOR_GREATER_OP_CODES beyond 127
            c.version = key[1]
            self.opcodes[key] = len(self.codes)
            self.codes.append(c)
        return self.opcodes[key]


def emit_tflite(module: Module, function: str | None = None) -> bytes:
    """The .tflite bytes of one function of `module`. Raises QirError (before writing anything)
    for ops outside the tfl dialect, for what the runtime would silently miscompute, and for a
    model too large for one flatbuffer."""
    verify(module)
    func: Function = module.functions[function] if function else module.main
    for op in func.ops:
        if not isinstance(op, TflOp):
            raise QirError(f"@{func.name}: {op.name} is not a tfl op; legalize the module for tflite first")
    check_runtime_rules(module, func)
    names = [v.name for v in func.outputs]
    if len(set(names)) != len(names) or any(v.is_constant or v in func.args for v in func.outputs):
        raise QirError(f"@{func.name}: outputs must be distinct op results to name the signature's outputs")
    check_file_size(func)

    w = _Writer(module)
    inputs = [w.value(a) for a in func.args]
    operators = []
    for op in func.ops:
        ins = []
        for i, x in enumerate(op.operands):
            bias = op.name == "tfl.fully_connected" and i == 2 and not op.is_float
            ins.append(w.value(x, _bias_quantization(op) if bias else None))
        for k, extra in enumerate(_extra_inputs(op)):
            ins.append(w.tensor(f"{op.results[0].name}/arg{k}", extra.shape, "i32", None, extra))
        outs = [w.value(r) for r in op.results]
        o = fb.OperatorT()
        o.opcodeIndex = w.opcode(op)
        o.inputs = np.asarray(ins, np.int32)
        o.outputs = np.asarray(outs, np.int32)
        o.builtinOptionsType, o.builtinOptions = _options(op)
        operators.append(o)

    graph = fb.SubGraphT()
    graph.name = func.name
    graph.tensors = w.tensors
    graph.inputs = np.asarray(inputs, np.int32)
    graph.outputs = np.asarray([w.index[id(v)] for v in func.outputs], np.int32)
    graph.operators = operators

    signature = fb.SignatureDefT()
    signature.signatureKey = func.name
    signature.subgraphIndex = 0
    signature.inputs = [_tensor_map(a.name, w.index[id(a)]) for a in func.args]
    signature.outputs = [_tensor_map(v.name, w.index[id(v)]) for v in func.outputs]

    model = fb.ModelT()
    model.version = 3
    model.description = f"qir module @{module.name}"
    model.operatorCodes = w.codes
    model.subgraphs = [graph]
    model.buffers = w.buffers
    model.signatureDefs = [signature]
    builder = flatbuffers.Builder(1024)
    builder.Finish(model.Pack(builder), file_identifier=b"TFL3")
    return bytes(builder.Output())


def _tensor_map(name: str, index: int) -> fb.TensorMapT:
    m = fb.TensorMapT()
    m.name = name
    m.tensorIndex = index
    return m
