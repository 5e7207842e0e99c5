"""Learnable quantization parameters of a quantized module, held in Flax nnx modules, and the
map from them to what the fake-quant interpreter reads.

A `LearnPlan` says what is learned: per-tensor ranges of activations, per-output-channel clipping
of weights, and per-channel scales folded across pairs of constants (a learnable equivalent
transformation: rows of one side divided by s, columns of the other multiplied by s). From the
parameters, `materialize` computes (in JAX, differentiably) the transformed constants and every
scale and zero point they imply; `spec_overrides` gives the quant specs that name those entries,
for `Interpreter.traced(specs=...)`. `fold` writes the same arrays back into the module, which is
then an ordinary quantized module with static parameters (inline per-tensor ones for activations).
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from qir.errors import QirError
from qir.fake_quant import DynamicRange, round_ste
from qir.ir import Module
from qir.quant import QuantSpec

CLIP_START = 4.0  # clip logit at the start; the factor sigmoid(g) / sigmoid(CLIP_START) starts at exactly 1


class Fixed(nnx.Variable):
    """A starting value the parameters are relative to (not trained)."""


class ActivationRanges(nnx.Module):
    """Per-tensor scale and zero point of n activations, relative to their calibrated values:
    s = s0 · exp(log_scale), z = clip(round(z0 + 2^bits · offset), qmin, qmax). The offset is a
    fraction of the grid so one learning rate suits every tensor; symmetric (16-bit) activations keep
    z = 0, as integer runtimes require."""

    def __init__(self, scale0: np.ndarray, zero0: np.ndarray, bits: np.ndarray, asymmetric: np.ndarray):
        n = len(scale0)
        self.log_scale = nnx.Param(jnp.zeros(n, jnp.float32))
        self.offset = nnx.Param(jnp.zeros(n, jnp.float32))
        self.scale0 = Fixed(jnp.asarray(scale0, jnp.float32))
        self.zero0 = Fixed(jnp.asarray(zero0, jnp.float32))
        self.span = Fixed(jnp.asarray(2.0 ** bits, jnp.float32))
        self.qmin = Fixed(jnp.asarray(-(2.0 ** (bits - 1)), jnp.float32))
        self.asymmetric = Fixed(jnp.asarray(asymmetric, jnp.float32))

    def __call__(self):
        scale = self.scale0[...] * jnp.exp(self.log_scale[...])
        zero = self.zero0[...] + self.asymmetric[...] * self.span[...] * self.offset[...]
        zero = jnp.clip(round_ste(zero), self.qmin[...], -self.qmin[...] - 1)
        return scale, zero


class WeightClip(nnx.Module):
    """Clipping of a symmetric weight, one factor per output channel: its scale becomes
    factor · max|w| / qmax with factor = sigmoid(g) / sigmoid(4), which starts at 1 (the min/max scale)
    and stays in (0, 1.018]."""

    def __init__(self, channels: int):
        self.logit = nnx.Param(jnp.full((channels,), CLIP_START, jnp.float32))

    def __call__(self):
        return jax.nn.sigmoid(self.logit[...]) / jax.nn.sigmoid(CLIP_START)


class ChannelScales(nnx.Module):
    """A learnable equivalent transformation: positive per-channel s = exp(log_s), starting at 1."""

    def __init__(self, channels: int):
        self.log_s = nnx.Param(jnp.zeros((channels,), jnp.float32))

    def __call__(self):
        return jnp.exp(self.log_s[...])


class Rotation(nnx.Module):
    """An orthogonal n×n matrix, starting at the identity; its optimizer (`cayley`) keeps it orthogonal."""

    def __init__(self, n: int):
        self.q = nnx.Param(jnp.eye(n, dtype=jnp.float32))

    def __call__(self):
        return self.q[...]


class LearnedQuant(nnx.Module):
    """Everything a plan learns: `ranges`, `clips` by weight constant, `scales` by transform,
    `rotations` by name ("R1", "R2")."""

    def __init__(self, ranges: ActivationRanges, clips: dict[str, WeightClip], scales: dict[str, ChannelScales],
                 rotations: dict[str, Rotation] | None = None):
        self.ranges = ranges
        self.clips = nnx.Dict(clips)
        self.scales = nnx.Dict(scales)
        self.rotations = nnx.Dict(rotations or {})


def cayley(learning_rate, momentum: float = 0.9):
    """Gradient descent on the orthogonal manifold (an optax transformation for `Rotation` params).
    With momentum m of the Euclidean gradient, A = m·Xᵀ − X·mᵀ is skew-symmetric and the Cayley
    transform X' = (I + a/2·A)⁻¹(I − a/2·A)·X is orthogonal again. A is normalized to unit spectral
    scale (its Frobenius norm over √n), so the learning rate is roughly the angle of a step."""

    def init(params):
        return {"m": jax.tree.map(jnp.zeros_like, params), "count": jnp.zeros((), jnp.int32)}

    def update(grads, state, params):
        rate = learning_rate(state["count"]) if callable(learning_rate) else learning_rate

        def step(g, m, x):
            m = momentum * m + g
            a = m @ x.T - x @ m.T
            a = a / (jnp.linalg.norm(a) / jnp.sqrt(a.shape[0]) + 1e-12)
            eye = jnp.eye(x.shape[0], dtype=x.dtype)
            return jnp.linalg.solve(eye + rate / 2 * a, (eye - rate / 2 * a) @ x) - x, m

        leaves, tree = jax.tree.flatten(grads)
        out = [step(g, m, x) for g, m, x in zip(leaves, tree.flatten_up_to(state["m"]), tree.flatten_up_to(params))]
        updates, moments = tree.unflatten([u for u, _ in out]), tree.unflatten([m for _, m in out])
        return updates, {"m": moments, "count": state["count"] + 1}

    return optax.GradientTransformation(init, update)


def clip_to_running_norm(ratio: float, decay: float = 0.9):
    """Clip the gradient's global norm to `ratio` times the running mean of the norms before it (an
    optax transformation). Scale-free, so one setting suits every kind of parameter, whose typical
    norms differ a hundredfold; the first gradient passes whole and starts the mean."""

    def init(params):
        del params
        return {"mean": jnp.zeros((), jnp.float32), "count": jnp.zeros((), jnp.int32)}

    def update(grads, state, params=None):
        del params
        norm = optax.tree.norm(grads)
        limit = jnp.where(state["count"] > 0, ratio * state["mean"], jnp.inf)
        factor = jnp.minimum(1.0, limit / jnp.maximum(norm, 1e-30))
        kept = norm * factor
        mean = jnp.where(state["count"] > 0, decay * state["mean"] + (1 - decay) * kept, kept)
        return jax.tree.map(lambda g: g * factor.astype(g.dtype), grads), {"mean": mean, "count": state["count"] + 1}

    return optax.GradientTransformation(init, update)


@dataclass
class Transform:
    """s folded across a pair: constants in `divide` take 1/s on their rows (axis 0), constants in
    `multiply` take s[channels] on their columns (last axis)."""

    key: str
    divide: list[str]
    multiply: list[str]
    channels: np.ndarray


@dataclass
class LearnPlan:
    function: str                        # the function whose activations are learned
    activations: list[str]               # value names with learned ranges (each a parameter index)
    tie: dict[str, str]                  # value name -> the learned value whose parameters it shares
    specs: dict[str, QuantSpec]          # value name -> its quant spec before learning (learned ones, bias inputs)
    transforms: list[Transform]
    clipped: dict[str, int]              # weight constant -> channels of its WeightClip
    constants: list[str]                 # quantized constants whose scales are recomputed from their data
    biases: dict[str, tuple[str, str]] = field(default_factory=dict)  # bias -> (input value, weight constant)
    # constant -> its clip factor per output channel at the start (an mse observer's clipping is kept)
    factors: dict[str, np.ndarray] = field(default_factory=dict)
    # constant -> (left, right) learned rotations: ("R1",) whole, ("R2", D) per block of D; () none
    rotated: dict[str, tuple[tuple, tuple]] = field(default_factory=dict)
    rotation_sizes: dict[str, int] = field(default_factory=dict)  # "R1"/"R2" -> n
    # value name -> clip ratio: quantized with its own range times the ratio on each input (DynamicRange)
    dynamic: dict[str, float] = field(default_factory=dict)

    def touched(self) -> list[str]:
        """Constants whose data the transforms and rotations change."""
        return list(dict.fromkeys([n for t in self.transforms for n in t.divide + t.multiply] + list(self.rotated)))


def param_key(kind: str, name: str, what: str) -> str:
    """The weights-dict entry of a learned parameter: kind "%" (a value) or "@" (a constant)."""
    return f"learn:{kind}{name}.{what}"


def build_model(module: Module, plan: LearnPlan) -> LearnedQuant:
    specs = [plan.specs[n] for n in plan.activations]
    ranges = ActivationRanges(
        np.array([s.scale[0] for s in specs], np.float32), np.array([s.zero_point[0] for s in specs], np.float32),
        np.array([s.bits for s in specs], np.float32), np.array([s.bits <= 8 for s in specs], np.float32))
    clips = {name: WeightClip(channels) for name, channels in plan.clipped.items()}
    scales = {t.key: ChannelScales(int(t.channels.max()) + 1) for t in plan.transforms}
    rotations = {name: Rotation(n) for name, n in plan.rotation_sizes.items()}
    return LearnedQuant(ranges, clips, scales, rotations)


def rotate_constant(w, left: tuple, right: tuple, mats: dict):
    """Qᵀ·w on the rows (per block of D rows for R2) and w·Q on the columns (per block of D)."""
    if left:
        q = mats[left[0]]
        dim = q.shape[0]
        w = jnp.einsum("ed,hd...->he...", q.T, w.reshape((-1, dim) + w.shape[1:])).reshape(w.shape)
    if right:
        q = mats[right[0]]
        dim = q.shape[0]
        w = (w.reshape(w.shape[0], -1, dim) @ q).reshape(w.shape)
    return w


def spec_overrides(module: Module, plan: LearnPlan) -> dict[str, QuantSpec]:
    """Quant specs naming the learned entries of the weights dict, for `Interpreter.traced(specs=...)`."""
    specs = {}
    for name in plan.activations:
        spec = plan.specs[name]
        specs["%" + name] = replace(spec, scale=param_key("%", name, "scale"), zero_point=param_key("%", name, "zero"))
    for name, root in plan.tie.items():
        specs["%" + name] = specs["%" + root]
    for name in plan.constants + list(plan.biases):
        specs["@" + name] = replace(module.constants[name].quant, scale=param_key("@", name, "scale"))
    func = module.functions[plan.function]
    for value in func.args + [r for op in func.ops for r in op.results]:
        if value.name in plan.dynamic:
            specs["%" + value.name] = DynamicRange(value.quant, plan.dynamic[value.name])
    return specs


def symmetric_scale(w, spec: QuantSpec, factor=None):
    """max|w| / qmax per tensor, per channel along spec.axis, or per block (as `quantize` computes
    weight and constant scales), times a clip factor per output channel (axis 0) if given."""
    a = jnp.abs(w.astype(jnp.float32))
    if spec.axis is None:
        amax = a.max().reshape(1)
    elif spec.block_size is None:
        amax = a.max(axis=tuple(i for i in range(a.ndim) if i != spec.axis))
    else:
        moved = jnp.moveaxis(a, spec.axis, -1)
        amax = moved.reshape(moved.shape[:-1] + (-1, spec.block_size)).max(-1)
        amax = jnp.moveaxis(amax, -1, spec.axis)
    scale = jnp.where(amax > 0, amax / spec.qmax, 1.0)
    if factor is not None:
        scale = scale * factor.reshape(factor.shape + (1,) * (scale.ndim - 1))
    return scale


def materialize(model: LearnedQuant, plan: LearnPlan, base: dict, module: Module) -> dict:
    """The interpreter's weights dict for the current parameters: `base` with the transformed
    constants and every learned or recomputed scale and zero point (keys from `param_key`)."""
    weights = dict(base)
    mats = {name: model.rotations[name]() for name in plan.rotation_sizes}
    for name, (left, right) in plan.rotated.items():
        weights[name] = rotate_constant(weights[name].astype(jnp.float32), left, right, mats)
    for t in plan.transforms:
        s = model.scales[t.key]()
        for name in t.divide:
            w = weights[name]
            weights[name] = w / s.reshape((-1,) + (1,) * (w.ndim - 1))
        for name in t.multiply:
            weights[name] = weights[name] * s[jnp.asarray(t.channels)]
    index = {name: i for i, name in enumerate(plan.activations)}
    if plan.activations:
        scale, zero = model.ranges()
        for name, i in index.items():
            weights[param_key("%", name, "scale")] = scale[i:i + 1]
            weights[param_key("%", name, "zero")] = zero[i:i + 1]
    for name in plan.constants:
        factor = model.clips[name]() if name in plan.clipped else None
        scale = symmetric_scale(weights[name], module.constants[name].quant, factor)
        weights[param_key("@", name, "scale")] = scale * plan.factors[name] if name in plan.factors else scale
    for name, (x, w) in plan.biases.items():
        root = plan.tie.get(x, x)
        x_scale = (weights[param_key("%", root, "scale")] if root in index
                   else jnp.asarray(plan.specs[x].scale, jnp.float32))
        w_spec = module.constants[w].quant
        w_scale = weights[param_key("@", w, "scale")] if w in plan.constants else (
            weights[w_spec.scale] if isinstance(w_spec.scale, str) else jnp.asarray(w_spec.scale, jnp.float32))
        weights[param_key("@", name, "scale")] = jnp.broadcast_to(x_scale * w_scale.reshape(-1),
                                                                  module.constants[name].type.shape[:1])
    return weights


def start_factors(module: Module, names: list[str]) -> dict[str, np.ndarray]:
    """Per constant: its quant scale over the min/max scale of its data (1 where no observer clipped),
    so that scales recomputed while learning keep the clipping `quantize` chose."""
    factors = {}
    for name in names:
        spec = module.constants[name].quant
        if spec.block_scale is not None:
            raise QirError(f"@{name} has LPBQ scales (a float per channel times an integer per block): learning "
                           "passes do not transform or clip LPBQ weights yet; quantize it per block (\"block\" "
                           "without \"scheme\": \"lpbq\") or per channel to learn")
        current = np.asarray(module.weights.get(spec.scale) if isinstance(spec.scale, str) else spec.scale, np.float32)
        minmax = np.asarray(symmetric_scale(jnp.asarray(module.weights.get(name)), spec), np.float32)
        ratio = current.reshape(minmax.shape) / minmax
        if not np.allclose(ratio, 1.0, rtol=1e-6):
            factors[name] = ratio
    return factors


def fold(module: Module, plan: LearnPlan, arrays: dict) -> None:
    """Write materialized parameters into the module: transformed constants, recomputed constant
    scales (into their scale constants, or inline), and static inline activation specs."""
    for name in plan.touched():
        dtype = module.weights.get(name).dtype
        module.weights.set(name, np.asarray(arrays[name]).astype(dtype))
    for name in plan.constants + list(plan.biases):
        spec = module.constants[name].quant
        scale = np.asarray(arrays[param_key("@", name, "scale")], np.float32)
        if isinstance(spec.scale, str):
            module.weights.set(spec.scale, scale.reshape(module.constants[spec.scale].type.shape))
        else:
            set_constant_spec(module, name, replace(spec, scale=tuple(float(v) for v in scale.reshape(-1))))
    learned = {}
    for name in plan.activations:
        spec = plan.specs[name]
        scale = float(np.asarray(arrays[param_key("%", name, "scale")]).reshape(-1)[0])
        zero = int(np.asarray(arrays[param_key("%", name, "zero")]).reshape(-1)[0])
        learned[name] = replace(spec, scale=(scale,), zero_point=(zero,))
    for name, root in plan.tie.items():
        if root in learned:
            learned[name] = learned[root]
    func = module.functions[plan.function]
    for value in func.args + [r for op in func.ops for r in op.results]:
        if value.name in learned:
            value.quant = learned[value.name]


def set_constant_spec(module: Module, name: str, spec: QuantSpec) -> None:
    module.constants[name].quant = spec
    for func in module.functions.values():
        if name in func._constants:
            func._constants[name].quant = spec
