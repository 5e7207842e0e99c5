"""quantize: attach a QuantSpec to every tensor as a recipe says — weights per-channel (or
per-block) symmetric, biases int32, activations static per-tensor from calibration statistics."""
from dataclasses import dataclass

import numpy as np

from qir import Module, Pass, PassContext, PassResult, QirError, QuantSpec
from qir.mixed_precision import grid_sqnr_db
from qir.quant_params import affine_params, block_scales, clip_factors, lpbq_scales, symmetric_scales
from qir.quant_recipe import WEIGHT_OBSERVERS, check_lpbq, load_recipe
from qir.stats import OBSERVERS, ValueStats, observed_range

from passes.calibrate import STATS_KEY

# op name -> operand index holding a weight (quantized per output channel, axis 0)
WEIGHT_OPERANDS = {"q.linear": 1, "q.conv2d": 1, "q.gather": 0}
BIAS_OPERANDS = {"q.linear": 2, "q.conv2d": 2}
VIEWS = ("q.reshape", "q.transpose")  # move data only: same values, same grid


@dataclass(frozen=True)
class Quantize(Pass):
    name = "quantize"
    summary = "attach static quant specs to weights, biases, constants and activations (needs calibrate)"
    recipe: str = "w8a8"
    observer: str = ""  # overrides the recipe's activation observer when set
    weight_observer: str = ""  # overrides the recipe's weight observer (minmax, mse) when set
    # an activation whose 8-bit grid leaves less than this SQNR (dB) on the calibration data takes
    # 16 bits (qir/mixed_precision.py); -1: the recipe's "min_sqnr" (20 in the built-ins); 0: off
    min_sqnr: float = -1.0

    def run(self, module: Module, ctx: PassContext) -> PassResult:
        recipe = load_recipe(self.recipe)
        if self.observer:
            if self.observer not in OBSERVERS:
                raise QirError(f"quantize: unknown observer '{self.observer}' (observers: {', '.join(OBSERVERS)})")
            recipe.activations["observer"] = self.observer
        if self.weight_observer:
            if self.weight_observer not in WEIGHT_OBSERVERS:
                raise QirError(f"quantize: unknown weight observer '{self.weight_observer}' "
                               f"(weight observers: {', '.join(WEIGHT_OBSERVERS)})")
            recipe.weights["observer"] = self.weight_observer
        if module.is_quantized():
            raise QirError("quantize: the module is already quantized (it carries quant specs); "
                           "quantize the float model once, with one recipe")
        stats = ctx.data.get(STATS_KEY)
        if stats is None:
            raise QirError("quantize needs activation statistics: put 'calibrate' before it in the pipeline")
        if self.min_sqnr < 0 and self.min_sqnr != -1:
            raise QirError(f"quantize: min_sqnr must be a number of dB ≥ 0 (0: off; -1: the recipe's), "
                           f"not {self.min_sqnr:g}")
        roles = constant_roles(module)
        widened = []
        for name, role in roles.items():
            if role == "weight":
                self._quantize_weight(module, recipe, name)
            elif role == "constant":
                self._quantize_constant(module, recipe, name)
        for func in module.functions.values():
            producers = [(arg, None) for arg in func.args] + [(r, op) for op in func.ops for r in op.results]
            # a view is measured as the value it views: its rows (tokens) differ, its grid does not,
            # and a view wider or narrower than its source would need a requantization
            measured_as: dict[str, str] = {}
            for value, producer in producers:
                if producer is not None and producer.name in VIEWS and not producer.operands[0].is_constant:
                    source = producer.operands[0].name
                    measured_as[value.name] = measured_as.get(source, source)
                if value.type.is_float:
                    consumers = tuple(user.name for user, _ in value.uses)
                    feeds = tuple(r.name for user, _ in value.uses for r in user.results)
                    settings = recipe.settings_for("activations", value.name, producer and producer.name,
                                                   consumers, feeds)
                    if settings is None:
                        continue
                    if producer is not None and producer.name == "q.masked_fill":
                        value.quant = masked_fill_spec(stats, producer, settings, module)
                    else:
                        value.quant = activation_spec(stats, value.name, settings)
                        least = self.min_sqnr if self.min_sqnr >= 0 else settings.get("min_sqnr", 0)
                        if least and value.quant.bits < 16 and \
                                grid_sqnr_db(stats[measured_as.get(value.name, value.name)],
                                             value.quant.scale[0]) < least:
                            value.quant = activation_spec(stats, value.name, {"bits": 16, "observer": "minmax"})
                            widened.append(value.name)
        for func in module.functions.values():
            for op in func.ops:
                if op.name in BIAS_OPERANDS and len(op.operands) > BIAS_OPERANDS[op.name]:
                    self._quantize_bias(module, op)
        ctx.data[self.name] = {"recipe": recipe.name, "widened": widened}
        return PassResult(modified=True)

    def _quantize_weight(self, module, recipe, name):
        settings = weight_settings(module, recipe, name)
        if settings is None:
            return
        data = module.weights.get(name)
        bits, block = settings["bits"], settings.get("block")
        if block and settings.get("scheme") == "per-tensor":
            raise QirError(f"@{name}: the recipe asks for per-tensor and per-block (block {block}) weights at once")
        if settings.get("scheme") == "per-tensor":  # one scale: what NNAPI's FULLY_CONNECTED takes
            amax = float(np.abs(data).max())
            if settings.get("observer") == "mse":
                amax *= float(clip_factors(data.reshape(1, -1).astype(np.float32), bits)[0])
            scale, _, _, _ = affine_params(-amax, amax, bits, symmetric=True)
            set_constant_quant(module, name, QuantSpec(bits, True, scale=(scale,), zero_point=(0,)))
            return
        if settings.get("scheme") == "lpbq":
            self._quantize_lpbq(module, name, data, settings)
            return
        if block:
            if data.shape[-1] % block:
                raise QirError(f"@{name}: input dimension {data.shape[-1]} is not a multiple of block {block}")
            scales = block_scales(data, data.ndim - 1, block, bits, settings.get("observer", "minmax"))
            spec_args = {"axis": data.ndim - 1, "block_size": block}
        else:
            scales = symmetric_scales(data, 0, bits, settings.get("observer", "minmax"))
            spec_args = {"axis": 0}
        set_constant_quant(module, name, QuantSpec(bits, True, scale=add_param(module, name + ".scale", scales),
                                                   zero_point=(0,), **spec_args))

    def _quantize_lpbq(self, module, name, data, settings):
        """int4 weights in blocks along the input axis with LPBQ's two-level scales: a float per
        output channel (@<w>.scale) times a u8 integer 1..16 per block (@<w>.block_scale)."""
        check_lpbq(f"@{name}", settings)
        bits, block = settings["bits"], settings["block"]
        if data.ndim < 2:
            raise QirError(f"@{name}: LPBQ needs a weight with an output and an input axis, has shape {data.shape}")
        if data.shape[-1] % block:
            raise QirError(f"@{name}: input dimension {data.shape[-1]} is not a multiple of block {block}")
        channel, k = lpbq_scales(data, block, bits, settings.get("observer", "minmax"))
        scale = add_param(module, name + ".scale", channel)
        if name + ".block_scale" in module.constants:
            raise QirError(f"cannot add quantization parameter @{name}.block_scale: a constant of that name exists")
        module.add_constant(name + ".block_scale", np.ascontiguousarray(k))
        set_constant_quant(module, name, QuantSpec(bits, True, scale=scale, zero_point=(0,), axis=data.ndim - 1,
                                                   block_size=block, block_scale=name + ".block_scale"))

    def _quantize_constant(self, module, recipe, name):
        settings = recipe.settings_for("constants", name)
        if settings is None:
            return
        data = module.weights.get(name).astype(np.float32)
        scale, _, _, _ = affine_params(-np.abs(data).max(), np.abs(data).max(), settings["bits"], symmetric=True)
        set_constant_quant(module, name, QuantSpec(settings["bits"], True, scale=(scale,), zero_point=(0,)))

    def _quantize_bias(self, module, op):
        """int32 bias with scale = input scale x weight scale (per output channel)."""
        x, w, b = op.operands[:3]
        if not b.is_constant or x.quant is None or w.quant is None or w.quant.block_size is not None:
            return
        if module.constants[b.name].quant is not None:
            return
        set_constant_quant(module, b.name, QuantSpec(32, True, scale=add_param(module, b.name + ".scale",
                                                                               bias_scales(module, x, w, b)),
                                                     zero_point=(0,), axis=0))


def bias_scales(module: Module, x, w, b) -> np.ndarray:
    """An int32 bias's scales: the input's scale times the weight's, per output channel."""
    w_scales = module.weights.get(w.quant.scale) if isinstance(w.quant.scale, str) else np.asarray(w.quant.scale)
    w_scales = np.broadcast_to(w_scales.reshape(-1), b.type.shape[:1])  # a per-tensor weight: one for all
    return (np.float32(x.quant.scale[0]) * w_scales.astype(np.float32)).astype(np.float32)


def weight_settings(module: Module, recipe, name: str) -> dict | None:
    """A weight's settings in `recipe`; an override may pick it by the op reading it ("consumer")
    or by that op's result ("feeds": "logits" is the output head)."""
    users = [op for func in module.functions.values() if name in func.used_constants()
             for op, _ in func.constant(name).uses]
    return recipe.settings_for("weights", name, None, tuple(op.name for op in users),
                               tuple(r.name for op in users for r in op.results))


def constant_roles(module: Module) -> dict[str, str]:
    """Each float constant's role: "weight" (matmul/conv/embedding operand), "bias" (quantized with
    its op), or "constant" (norm weights, rope tables, scalars). A weight role wins."""
    roles: dict[str, str] = {}
    for func in module.functions.values():
        for op in func.ops:
            for index, value in enumerate(op.operands):
                if not value.is_constant or not value.type.is_float or module.constants[value.name].quant:
                    continue
                if WEIGHT_OPERANDS.get(op.name) == index or op.name == "q.matmul":
                    role = "weight"
                elif BIAS_OPERANDS.get(op.name) == index:
                    role = "bias"
                else:
                    role = "constant"
                if roles.get(value.name) != "weight":
                    roles[value.name] = role
    return roles


def activation_spec(stats, name: str, settings: dict) -> QuantSpec:
    if name not in stats:
        raise QirError(f"no calibration statistics for %{name}; run calibrate on this module first")
    bits = settings["bits"]
    symmetric = bits == 16  # int16 activations need zero point 0
    lo, hi = observed_range(stats[name], settings.get("observer", "minmax"), bits, symmetric,
                            settings.get("percentile", 99.99))
    scale, zero, _, _ = affine_params(lo, hi, bits, symmetric)
    return QuantSpec(bits, True, scale=(scale,), zero_point=(zero,))


MASK_MARGIN = 20.0  # masked scores sit this far below the smallest real score: exp(-20) ~ 2e-9


def masked_fill_spec(stats, op, settings: dict, module: Module) -> QuantSpec:
    """The range of a masked_fill result is its input's range, extended down by MASK_MARGIN (not
    down to the fill value, e.g. -1e4: a range that wide would leave the real scores a few steps).
    The fill value then saturates at the bottom of the grid, where softmax still gives it ~0.
    A constant input (a row of logits masked at run time) has the range of its data."""
    source = op.operands[0]
    if source.is_constant:
        data = module.weights.get(source.name)
        lo, hi = float(data.min()), float(data.max())
    elif source.name in stats:
        lo, hi = observed_range(stats[source.name], settings.get("observer", "minmax"), settings["bits"],
                                settings["bits"] == 16, settings.get("percentile", 99.99))
    else:
        raise QirError(f"no calibration statistics for %{source.name}; run calibrate on this module first")
    value = float(op.attrs["value"])
    lo = max(min(lo, value), lo - MASK_MARGIN)
    hi = max(hi, min(value, hi + MASK_MARGIN))
    return activation_spec({"range": ValueStats(lo, hi)}, "range", {"bits": settings["bits"], "observer": "minmax"})


def add_param(module: Module, name: str, data: np.ndarray) -> str:
    if name in module.constants:
        raise QirError(f"cannot add quantization parameter @{name}: a constant of that name exists "
                       "(was the module quantized already?)")
    module.add_constant(name, np.ascontiguousarray(data, np.float32))
    return name


def set_constant_quant(module: Module, name: str, spec: QuantSpec) -> None:
    module.constants[name].quant = spec
    for func in module.functions.values():
        if name in func._constants:
            func._constants[name].quant = spec
