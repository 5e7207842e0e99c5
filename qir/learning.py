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
from flax import nnx

from qir.fake_quant import round_ste
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


class LearnedQuant(nnx.Module):
    """Everything a plan learns: `ranges`, `clips` by weight constant, `scales` by transform."""

    def __init__(self, ranges: ActivationRanges, clips: dict[str, WeightClip], scales: dict[str, ChannelScales]):
        self.ranges = ranges
        self.clips = nnx.Dict(clips)
        self.scales = nnx.Dict(scales)


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

    def touched(self) -> list[str]:
        """Constants whose data the transforms change."""
        return list(dict.fromkeys(n for t in self.transforms for n in t.divide + t.multiply))


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
    return LearnedQuant(ranges, clips, scales)


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
        weights[param_key("@", name, "scale")] = symmetric_scale(weights[name], module.constants[name].quant, factor)
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
