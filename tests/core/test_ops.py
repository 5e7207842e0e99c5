"""Each core op's JAX rule against an independent numpy or torch reference on random inputs, and
type inference errors (QirError) for operands that do not fit."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import qir
from qir.types import dtype_name

RNG = np.random.default_rng(1234)


def randn(*shape, dtype=np.float32):
    return RNG.standard_normal(shape).astype(dtype)


def build(op_name: str, *arrays, **attrs) -> tuple[qir.Module, qir.Value]:
    module = qir.Module("t")
    b = qir.Builder.new_function(module, "f")
    args = [b.arg(f"a{i}", a.shape, dtype_name(a.dtype)) for i, a in enumerate(arrays)]
    y = b.op(op_name, *args, **attrs)
    b.ret(y)
    qir.verify(module)
    return module, y


def run(op_name: str, *arrays, **attrs) -> np.ndarray:
    """Build a one-op function with every operand as an argument, check it, and interpret it."""
    module, y = build(op_name, *arrays, **attrs)
    out = qir.interpret(module, *arrays)[0]
    assert out.shape == y.type.shape and out.dtype == y.type.np_dtype  # the inferred type is what runs
    return out


def close(actual, expected, rtol=1e-5, atol=1e-5):
    np.testing.assert_allclose(np.asarray(actual, np.float64), np.asarray(expected, np.float64), rtol=rtol, atol=atol)


# -- elementwise -------------------------------------------------------------------------------------
@pytest.mark.parametrize("op,ref", [("q.add", np.add), ("q.sub", np.subtract), ("q.mul", np.multiply),
                                    ("q.div", np.divide), ("q.maximum", np.maximum)])
@pytest.mark.parametrize("shapes", [((2, 3), (2, 3)), ((2, 1, 4), (3, 1)), ((4,), ()), ((), (2, 2))])
def test_binary_broadcasting(op, ref, shapes):
    a, b = randn(*shapes[0]), randn(*shapes[1])
    if op == "q.div":
        b = np.sign(b) * (np.abs(b) + 0.5)
    close(run(op, a, b), ref(a.astype(np.float64), b.astype(np.float64)))


def test_binary_result_takes_the_first_dtype():
    a, b = randn(3, dtype=np.float16), randn(3)
    out = run("q.add", a, b)
    assert out.dtype == np.float16
    close(out, (a.astype(np.float32) + b).astype(np.float16), rtol=1e-3, atol=1e-3)


@pytest.mark.parametrize("op,ref", [
    ("q.relu", lambda x: np.maximum(x, 0)),
    ("q.silu", lambda x: x / (1 + np.exp(-x))),
    ("q.sigmoid", lambda x: 1 / (1 + np.exp(-x))),
    ("q.tanh", np.tanh),
])
def test_unary(op, ref):
    x = randn(3, 17) * 4
    close(run(op, x), ref(x.astype(np.float64)))


@pytest.mark.parametrize("approximate", ["none", "tanh"])
def test_gelu_both_modes(approximate):
    x = randn(5, 16) * 3
    expected = F.gelu(torch.from_numpy(x).double(), approximate=approximate).numpy()
    close(run("q.gelu", x, approximate=approximate), expected)
    erf = 0.5 * x.astype(np.float64) * (1 + np.vectorize(math.erf)(x.astype(np.float64) / math.sqrt(2)))
    if approximate == "none":
        close(run("q.gelu", x), erf)  # the default is the exact (erf) form, as BERT uses
    else:
        assert np.abs(run("q.gelu", x, approximate="tanh") - erf).max() > 1e-5  # the two modes differ


@pytest.mark.parametrize("mask_shape,mask_dtype", [((2, 3, 4), np.bool_), ((3, 4), np.int32), ((4,), np.float32),
                                                   ((1, 3, 1), np.int8)])
def test_masked_fill(mask_shape, mask_dtype):
    x = randn(2, 3, 4)
    mask = (RNG.random(mask_shape) < 0.5).astype(mask_dtype)
    out = run("q.masked_fill", x, mask, value=-1e4)
    np.testing.assert_array_equal(out, np.where(mask != 0, x, np.float32(-1e4)))
    expected = torch.from_numpy(x).masked_fill(torch.from_numpy(mask == 0), -1e4).numpy()
    np.testing.assert_array_equal(out, expected)


# -- linear algebra ------------------------------------------------------------------------------------
@pytest.mark.parametrize("x_shape", [(5,), (3, 5), (2, 3, 5)])
@pytest.mark.parametrize("bias", [False, True])
def test_linear(x_shape, bias):
    x, w, b = randn(*x_shape), randn(4, 5), randn(4)
    expected = F.linear(torch.from_numpy(x).double(), torch.from_numpy(w).double(),
                        torch.from_numpy(b).double() if bias else None).numpy()
    close(run("q.linear", x, w, *([b] if bias else [])), expected)


@pytest.mark.parametrize("a_shape,b_shape,transpose_b", [
    ((3, 4), (4, 5), False), ((2, 3, 4), (4, 5), False), ((2, 1, 3, 4), (5, 4, 6), False),
    ((2, 3, 4), (2, 5, 4), True), ((3, 4), (3, 4), True)])
def test_matmul(a_shape, b_shape, transpose_b):
    a, b = randn(*a_shape), randn(*b_shape)
    b64 = np.swapaxes(b, -1, -2) if transpose_b else b
    close(run("q.matmul", a, b, transpose_b=transpose_b), np.matmul(a.astype(np.float64), b64.astype(np.float64)))


@pytest.mark.parametrize("axis", [-1, 0, 1, -2])
def test_softmax(axis):
    x = randn(3, 4, 5) * 5
    e = np.exp(x.astype(np.float64) - x.max(axis=axis, keepdims=True))
    close(run("q.softmax", x, axis=axis), e / e.sum(axis=axis, keepdims=True))


def test_rms_norm():
    x, w = randn(2, 3, 8) * 10, randn(8)
    x64 = x.astype(np.float64)
    expected = x64 / np.sqrt(np.mean(x64 ** 2, axis=-1, keepdims=True) + 1e-5) * w
    close(run("q.rms_norm", x, w, eps=1e-5), expected)
    close(run("q.rms_norm", x, w, eps=1e-5),
          F.rms_norm(torch.from_numpy(x).double(), (8,), torch.from_numpy(w).double(), eps=1e-5).numpy())


def test_layer_norm():
    x, w, b = randn(2, 3, 8) * 10 + 3, randn(8), randn(8)
    expected = F.layer_norm(torch.from_numpy(x).double(), (8,), torch.from_numpy(w).double(),
                            torch.from_numpy(b).double(), eps=1e-6).numpy()
    close(run("q.layer_norm", x, w, b, eps=1e-6), expected, rtol=1e-4, atol=1e-5)


# -- rotary embedding ----------------------------------------------------------------------------------
def rope_angles(length: int, dim: int, theta: float = 10000.0) -> np.ndarray:
    inv_freq = 1.0 / theta ** (np.arange(0, dim, 2, dtype=np.float64) / dim)
    return np.arange(length, dtype=np.float64)[:, None] * inv_freq[None, :]  # [L, D/2]


def rope_complex(x: np.ndarray, angles: np.ndarray, layout: str) -> np.ndarray:
    """Rotation as multiplication by e^{i angle}; pairs (i, i + D/2) or (2i, 2i + 1)."""
    d = x.shape[-1]
    x = x.astype(np.float64)
    if layout == "half":
        z = (x[..., : d // 2] + 1j * x[..., d // 2:]) * np.exp(1j * angles)
        return np.concatenate([z.real, z.imag], axis=-1)
    z = (x[..., 0::2] + 1j * x[..., 1::2]) * np.exp(1j * angles)
    return np.stack([z.real, z.imag], axis=-1).reshape(x.shape)


@pytest.mark.parametrize("layout", ["half", "interleaved"])
@pytest.mark.parametrize("x_shape", [(6, 8), (2, 3, 6, 8)])
def test_rope_both_layouts(layout, x_shape):
    length, dim = x_shape[-2:]
    angles = rope_angles(length, dim)
    # the tables hold each frequency twice, in the same layout as x
    doubled = np.concatenate([angles, angles], -1) if layout == "half" else np.repeat(angles, 2, axis=-1)
    cos, sin = np.cos(doubled).astype(np.float32), np.sin(doubled).astype(np.float32)
    x = randn(*x_shape)
    out = run("q.rope", x, cos, sin, layout=layout)
    close(out, rope_complex(x, angles, layout))


def test_rope_layouts_are_a_permutation_of_each_other():
    """llama.cpp's interleaved rope is the Hugging Face half layout on permuted head dimensions."""
    length, dim = 5, 8
    angles = rope_angles(length, dim, theta=1e5)
    x = randn(3, length, dim)
    perm = np.concatenate([np.arange(0, dim, 2), np.arange(1, dim, 2)])  # interleaved -> half order
    half = run("q.rope", x[..., perm], np.cos(np.concatenate([angles] * 2, -1)).astype(np.float32),
               np.sin(np.concatenate([angles] * 2, -1)).astype(np.float32), layout="half")
    inter = run("q.rope", x, np.cos(np.repeat(angles, 2, -1)).astype(np.float32),
                np.sin(np.repeat(angles, 2, -1)).astype(np.float32), layout="interleaved")
    close(inter[..., perm], half, rtol=1e-6, atol=1e-6)


# -- data movement and reductions ---------------------------------------------------------------------
@pytest.mark.parametrize("axis,idx_shape", [(0, (4,)), (0, (2, 3)), (1, (3,)), (-1, (2, 2)), (2, ())])
def test_gather(axis, idx_shape):
    table = randn(5, 6, 7)
    size = table.shape[axis]
    indices = RNG.integers(0, size, size=idx_shape).astype(np.int32)
    np.testing.assert_array_equal(run("q.gather", table, indices, axis=axis), np.take(table, indices, axis=axis))


def test_gather_as_embedding_lookup():
    table, tokens = randn(10, 4), np.array([[3, 3, 9, 0]], np.int32)
    expected = F.embedding(torch.from_numpy(tokens).long(), torch.from_numpy(table)).numpy()
    np.testing.assert_array_equal(run("q.gather", table, tokens), expected)


@pytest.mark.parametrize("axes,keepdims", [((0,), False), ((1, 2), True), ((-1,), False), ((0, 1, 2), False),
                                           ((), False), ((-3, 2), True)])
@pytest.mark.parametrize("op,ref", [("q.reduce_sum", np.sum), ("q.reduce_mean", np.mean)])
def test_reductions(op, ref, axes, keepdims):
    x = randn(2, 3, 4)
    close(run(op, x, axes=list(axes), keepdims=keepdims), ref(x.astype(np.float64), axis=axes, keepdims=keepdims))


def test_reshape_transpose_slice_concat_cast():
    x = randn(2, 3, 4)
    np.testing.assert_array_equal(run("q.reshape", x, shape=[4, 6]), x.reshape(4, 6))
    np.testing.assert_array_equal(run("q.reshape", x, shape=[24]), x.reshape(24))
    np.testing.assert_array_equal(run("q.transpose", x, perm=[2, 0, 1]), x.transpose(2, 0, 1))
    np.testing.assert_array_equal(run("q.slice", x, begin=[1, 0, 1], end=[2, 3, 3]), x[1:2, 0:3, 1:3])
    np.testing.assert_array_equal(run("q.slice", x, begin=[0, 1, 2], end=[2, 1, 4]), x[:, 1:1, 2:4])
    y = randn(2, 5, 4)
    np.testing.assert_array_equal(run("q.concat", x, y, x, axis=1), np.concatenate([x, y, x], axis=1))
    np.testing.assert_array_equal(run("q.concat", x, axis=-1), x)
    np.testing.assert_array_equal(run("q.cast", x * 10, dtype="i32"), (x * 10).astype(np.int32))
    np.testing.assert_array_equal(run("q.cast", x, dtype="f16"), x.astype(np.float16))


# -- convolution -----------------------------------------------------------------------------------------
def torch_conv_nhwc(x, w, b, stride, padding):
    """TFLite/TF semantics via torch: "same" pads (total = max((out - 1) * s + k - in, 0)), the
    smaller half before, as TF does; torch's own padding="same" does not allow stride 2."""
    xt = torch.from_numpy(x).double().permute(0, 3, 1, 2)  # NHWC -> NCHW
    wt = torch.from_numpy(w).double().permute(0, 3, 1, 2)  # OHWI -> OIHW
    if padding == "same":
        pads = []
        for size, k, s in ((x.shape[2], w.shape[2], stride[1]), (x.shape[1], w.shape[1], stride[0])):
            total = max((-(-size // s) - 1) * s + k - size, 0)
            pads += [total // 2, total - total // 2]
        xt = F.pad(xt, pads)
    y = F.conv2d(xt, wt, None if b is None else torch.from_numpy(b).double(), stride=stride)
    return y.permute(0, 2, 3, 1).numpy()


@pytest.mark.parametrize("padding", ["same", "valid"])
@pytest.mark.parametrize("stride", [(1, 1), (2, 2), (2, 1)])
@pytest.mark.parametrize("kernel,size,bias", [((3, 3), (7, 8), True), ((2, 2), (6, 5), False), ((1, 3), (5, 5), True)])
def test_conv2d(padding, stride, kernel, size, bias):
    x, w, b = randn(2, *size, 3), randn(4, *kernel, 3), randn(4)
    out = run("q.conv2d", x, w, *([b] if bias else []), stride=list(stride), padding=padding)
    close(out, torch_conv_nhwc(x, w, b if bias else None, stride, padding), rtol=1e-5, atol=1e-5)


# -- depth to space --------------------------------------------------------------------------------------
def tflite_depth_to_space(x: np.ndarray, block: int) -> np.ndarray:
    """TFLite's reference kernel (reference_ops::DepthToSpace), loop for loop: DCR order,
    in_d = out_d + ((out_h % block) * block + out_w % block) * output_depth."""
    n, h, w, c = x.shape
    out_depth = c // (block * block)
    out = np.empty((n, h * block, w * block, out_depth), x.dtype)
    for ob in range(n):
        for oh in range(h * block):
            for ow in range(w * block):
                for od in range(out_depth):
                    in_d = od + ((oh % block) * block + ow % block) * out_depth
                    out[ob, oh, ow, od] = x[ob, oh // block, ow // block, in_d]
    return out


@pytest.mark.parametrize("block,channels", [(2, 8), (2, 4), (3, 18), (1, 3)])
def test_depth_to_space_is_tflite_dcr(block, channels):
    x = randn(2, 3, 4, channels)
    out = run("q.depth_to_space", x, block=block)
    np.testing.assert_array_equal(out, tflite_depth_to_space(x, block))
    # torch.pixel_shuffle (NCHW) uses the other order, CRD: in channel = c * r * r + dy * r + dx.
    # Reordering DCR channels (dy, dx, c) into (c, dy, dx) makes it compute the same thing.
    n, h, w, _ = x.shape
    c = channels // (block * block)
    crd = x.reshape(n, h, w, block * block, c).transpose(0, 1, 2, 4, 3).reshape(n, h, w, channels)
    shuffled = F.pixel_shuffle(torch.from_numpy(crd).permute(0, 3, 1, 2), block).permute(0, 2, 3, 1).numpy()
    np.testing.assert_array_equal(out, shuffled)
    if c > 1 and block > 1:  # without the reordering pixel_shuffle differs: qir is DCR, not CRD
        plain = F.pixel_shuffle(torch.from_numpy(x).permute(0, 3, 1, 2), block).permute(0, 2, 3, 1).numpy()
        assert not np.array_equal(out, plain)


# -- type inference errors -------------------------------------------------------------------------------
def f32(*shape):
    return np.zeros(shape, np.float32)


BAD = [
    ("q.add", [f32(2, 3), f32(4)], {}, "q.add: shapes (2, 3) and (4,) do not broadcast"),
    ("q.relu", [np.zeros(3, np.int32)], {}, "q.relu: input must be a float tensor, got i32[3]"),
    ("q.relu", [f32(3), f32(3)], {}, "q.relu takes 1 operand(s), got 2"),
    ("q.masked_fill", [f32(3), f32(2, 3)], {"value": 0.0}, "must broadcast to the input f32[3], not enlarge it"),
    ("q.masked_fill", [f32(3), f32(3)], {}, "q.masked_fill: missing required attribute 'value'"),
    ("q.linear", [f32(2, 4), f32(3, 5)], {}, "q.linear: input f32[2,4] does not match weight f32[3,5]"),
    ("q.linear", [f32(2, 4), f32(3, 4), f32(4)], {}, "q.linear: bias f32[4] must be [3]"),
    ("q.linear", [f32(2, 4), f32(4)], {}, "does not match weight f32[4]"),
    ("q.matmul", [f32(2, 3), f32(4, 5)], {}, "q.matmul: contraction sizes differ"),
    ("q.matmul", [f32(2, 3), f32(5, 4)], {"transpose_b": True}, "q.matmul: contraction sizes differ"),
    ("q.matmul", [f32(3), f32(3, 2)], {}, "q.matmul: operands must have rank >= 2"),
    ("q.matmul", [f32(2, 3, 4), f32(3, 4, 5)], {}, "q.matmul: shapes (2,) and (3,) do not broadcast"),
    ("q.softmax", [f32(2, 3)], {"axis": 2}, "q.softmax: axis 2 is out of range for rank 2"),
    ("q.softmax", [f32(2, 3)], {"dim": 1}, "q.softmax: unknown attribute(s) dim; valid: axis"),
    ("q.rms_norm", [f32(2, 4), f32(3)], {"eps": 1e-5}, "q.rms_norm: weight f32[3] must be [4]"),
    ("q.layer_norm", [f32(2, 4), f32(4), f32(2)], {"eps": 1e-5}, "q.layer_norm: weight f32[4] and bias f32[2]"),
    ("q.rope", [f32(4, 6), f32(4, 6), f32(3, 6)], {}, "q.rope: tables f32[4,6], f32[3,6] must be [L, D]"),
    ("q.rope", [f32(4, 5), f32(4, 5), f32(4, 5)], {}, "q.rope: head dimension 5 must be even"),
    ("q.rope", [f32(6), f32(6), f32(6)], {}, "q.rope: tables"),
    ("q.gather", [f32(5, 4), f32(3)], {}, "q.gather: indices must be integers, got f32[3]"),
    ("q.gather", [f32(5, 4), np.zeros(3, np.int32)], {"axis": 2}, "q.gather: axis 2 is out of range for rank 2"),
    ("q.reshape", [f32(2, 3)], {"shape": [4, 2]}, "q.reshape: cannot reshape f32[2,3] to [4, 2]"),
    ("q.reshape", [f32(2, 3)], {"shape": [-1, 6]}, "q.reshape: cannot reshape f32[2,3] to [-1, 6]"),
    ("q.transpose", [f32(2, 3)], {"perm": [0, 0]}, "q.transpose: perm [0, 0] is not a permutation"),
    ("q.transpose", [f32(2, 3)], {"perm": [1, 0, 2]}, "q.transpose: perm [1, 0, 2] is not a permutation"),
    ("q.slice", [f32(2, 3)], {"begin": [0, 2], "end": [2, 1]}, "q.slice: begin [0, 2] / end [2, 1] do not fit"),
    ("q.slice", [f32(2, 3)], {"begin": [0], "end": [2]}, "q.slice: begin [0] / end [2] do not fit f32[2,3]"),
    ("q.slice", [f32(2, 3)], {"begin": [0, 0], "end": [2, 4]}, "do not fit f32[2,3]"),
    ("q.concat", [f32(2, 3), f32(3, 3)], {"axis": 1}, "q.concat: f32[3,3] cannot be concatenated with f32[2,3]"),
    ("q.concat", [f32(2, 3), np.zeros((2, 3), np.float16)], {"axis": 0}, "cannot be concatenated"),
    ("q.concat", [f32(2, 3), f32(2, 3, 1)], {"axis": 0}, "cannot be concatenated"),
    ("q.cast", [f32(2)], {"dtype": "float32"}, "q.cast: unknown dtype 'float32'"),
    ("q.reduce_sum", [f32(2, 3)], {"axes": [2]}, "q.reduce_sum: axis 2 is out of range for rank 2"),
    ("q.reduce_mean", [f32(2, 3)], {"axes": [1, -1]}, "q.reduce_mean: axes [1, -1] name an axis of f32[2,3] twice"),
    ("q.conv2d", [f32(1, 5, 5, 3), f32(4, 3, 3, 2)], {}, "q.conv2d: input f32[1,5,5,3] (NHWC) and weight"),
    ("q.conv2d", [f32(5, 5, 3), f32(4, 3, 3, 3)], {}, "(NHWC) and weight"),
    ("q.conv2d", [f32(1, 5, 5, 3), f32(4, 3, 3, 3), f32(3)], {}, "q.conv2d: bias f32[3] must be [4]"),
    ("q.conv2d", [f32(1, 5, 5, 3), f32(4, 3, 3, 3)], {"padding": "full"}, 'padding must be "same" or "valid"'),
    ("q.depth_to_space", [f32(1, 2, 2, 6)], {"block": 2}, "q.depth_to_space: channels of f32[1,2,2,6] must be"),
    ("q.depth_to_space", [f32(2, 2, 4)], {"block": 2}, "must be divisible by block^2 = 4"),
]


@pytest.mark.parametrize("op,arrays,attrs,message", BAD, ids=[f"{b[0]}-{i}" for i, b in enumerate(BAD)])
def test_type_inference_errors(op, arrays, attrs, message):
    with pytest.raises(qir.QirError) as info:
        build(op, *arrays, **attrs)
    assert message in str(info.value)


def test_unknown_op_and_dtype():
    module = qir.Module("t")
    b = qir.Builder.new_function(module, "f")
    x = b.arg("x", (2,))
    with pytest.raises(qir.QirError, match="unknown op 'q.nope'"):
        b.op("q.nope", x)
    with pytest.raises(AttributeError, match="no op q.nope"):
        b.nope(x)
    with pytest.raises(qir.QirError, match="unsupported dtype"):
        qir.TensorType((2,), "float128")
    with pytest.raises(qir.QirError, match="negative dimension"):
        qir.TensorType((2, -1), "f32")
    with pytest.raises(qir.QirError, match="NaN is not a valid attribute value"):
        b.masked_fill(x, x, value=float("nan"))
