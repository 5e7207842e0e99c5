"""Named pipelines for qir-compile --recipe. Quantization recipes register here as they arrive."""
from __future__ import annotations

from qir.errors import QirError
from qir.quant_recipe import MIN_SQNR_DB

# Bit configurations (quantization recipes of qir/quant_recipe.py) and the methods that prepare a
# model before it is quantized. A recipe name is METHOD-BITS (`quarot-w8a8`); BITS alone is
# `rtn-BITS`. A method's pipeline names the configuration as `@bits`. The built-in quantization
# recipes use the minmax observer, so their calibration skips histograms (one pass over the data).
BITS: dict[str, str] = {
    "w8a8": "int8 weights per channel, int8 activations; residual stream, norm inputs, softmax and any 8-bit "
            f"grid below {MIN_SQNR_DB:g} dB SQNR in int16",
    "a16w8": "int8 weights per channel, int16 activations",
    "w4a8": "int4 weights per channel (the output head int8), int8 activations (wide tensors and grids below "
            f"{MIN_SQNR_DB:g} dB SQNR in int16)",
    "w4a16": "int4 weights per channel (the output head int8), int16 activations",
    "w4a8-lpbq": "int4 weights in blocks of 64 with LPBQ scales (float per channel x 1..16 per block; the output "
                 f"head int8 per channel), int8 activations (wide tensors and grids below {MIN_SQNR_DB:g} dB SQNR "
                 "in int16)",
    "w4a16-lpbq": "int4 weights in blocks of 64 with LPBQ scales (float per channel x 1..16 per block; the output "
                  "head int8 per channel), int16 activations",
}
# methods whose learning passes do not transform LPBQ weights yet: no METHOD-w4a*-lpbq recipe
LEARNING_METHODS = ("mobilequant", "quantnpu")
METHODS: dict[str, tuple[str, str]] = {
    # name: (pipeline with @bits, what it does)
    "rtn": ("canonicalize,dce,calibrate{histogram=false},quantize{recipe=@bits}",
            "static min/max ranges, weights rounded to nearest"),
    "smoothquant": ("canonicalize,dce,smooth{recipe=@bits},calibrate{histogram=false},quantize{recipe=@bits}",
                    "SmoothQuant per-channel scales folded into the weights, alpha searched per layer; then rtn"),
    # mse weight clipping: rotated weights are near-Gaussian (SmolLM2 w4a8: perplexity 584 -> 128)
    "quarot": ("canonicalize,dce,fold-norms,rotate{kind=hadamard},calibrate{histogram=false},"
               "quantize{recipe=@bits,weight_observer=mse}",
               "norms folded, Hadamard rotations of the residual stream and of each head's values (QuaRot); "
               "weights clipped for least squared error, static min/max activations"),
    "mobilequant": ("canonicalize,dce,calibrate{histogram=false},quantize{recipe=@bits,weight_observer=mse},learn",
                    "MobileQuant: activation ranges, weight clipping and equivalent transformations learned end to "
                    "end on calibration data, folded into static params"),
    "quantnpu": ("canonicalize,dce,fold-norms,rotate{kind=hadamard},calibrate,"
                 "quantize{recipe=@bits,weight_observer=mse},learn-rotation",
                 "Quant.npu: the quarot rotations learned further on the orthogonal manifold, then the quant "
                 "params per group (rotated tensors, then the rest), MSE ranges for rotated 8-bit tensors"),
}
# 4-bit weights are rounded by GPTQ in the methods that keep the weights' grids to themselves (as
# QuaRot rounds its W4 weights); rtn and smoothquant stay round-to-nearest, as their names say.
# SmolLM2 w4a8 through LiteRT: quarot 44.02 -> 22.52 with gptq (docs/accuracy-passes.md#gptq)
GPTQ_METHODS = ("quarot", "mobilequant", "quantnpu")
# The learning methods learn around gptq: no clipping before it (clipping learned against
# round-to-nearest weights conflicts with GPTQ's rounding), and the ranges again after it, against
# the unrounded float model. quantnpu keeps only its initialisation in front: rotations learned
# against round-to-nearest weights cost GPTQ (SmolLM2 w4a8: 22.61 with the Hadamard ones, 29.29
# with learned ones). SmolLM2 / MiniLM w4a8 mobilequant through LiteRT: learn then gptq
# 46.96 / cosine 0.9198; this way 41.53 / 0.9690 (docs/accuracy-passes.md#learning-after-gptq)
BEFORE_GPTQ = {"learn": "learn{clip=false}", "learn-rotation": "learn-rotation{rotation_epochs=0,param_epochs=0}"}
RANGES_AFTER_GPTQ = "learn{clip=false,let=false}"


def rounds_by_gptq(method: str, bits: str) -> bool:
    return method in GPTQ_METHODS and bits.startswith("w4")


def method_recipe(method: str, bits: str) -> tuple[str, str]:
    """METHOD-BITS: (pipeline, what it is for)."""
    pipeline, why = METHODS[method]
    pipeline, why = pipeline.replace("@bits", bits), f"{why}; {BITS[bits]}"
    if not rounds_by_gptq(method, bits):
        return pipeline, why
    if method not in LEARNING_METHODS:
        return pipeline + ",gptq", why + "; weights rounded by GPTQ"
    passes, learning = pipeline.rsplit(",", 1)
    return (f"{passes},{BEFORE_GPTQ[learning]},gptq,{RANGES_AFTER_GPTQ}",
            why + "; learned without clipping, weights rounded by GPTQ, ranges learned again against the float model")


RECIPES: dict[str, tuple[str, str]] = {
    # name: (pipeline, what it is for)
    "float": ("canonicalize,dce", "lower and clean up the float model; no quantization"),
    **{bits: (METHODS["rtn"][0].replace("@bits", bits), why) for bits, why in BITS.items()},
    **{f"{method}-{bits}": method_recipe(method, bits) for method in METHODS for bits in BITS
       if not (method in LEARNING_METHODS and bits.endswith("-lpbq"))},
}
DEFAULT_RECIPE = "float"


def recipe_pipeline(name: str) -> str:
    """The pipeline of a named recipe; a .json path runs the quantization recipe in that file."""
    if name.endswith(".json"):
        from qir.quant_recipe import load_recipe
        load_recipe(name)  # a malformed recipe fails now, not after loading and calibrating a model
        return f"canonicalize,dce,calibrate,quantize{{recipe={name}}}"
    if name not in RECIPES:
        method, _, bits = name.partition("-")
        if method in LEARNING_METHODS and bits in BITS:
            raise QirError(f"recipe '{name}': {method} learns weight transforms and clipping, which LPBQ weights "
                           f"do not support yet; use rtn-{bits}, smoothquant-{bits} or quarot-{bits}")
        raise QirError(f"unknown recipe '{name}'; available: float, BITS or METHOD-BITS with BITS one of "
                       f"{', '.join(BITS)} and METHOD one of "
                       + ", ".join(f"{m} ({why})" for m, (_, why) in METHODS.items()))
    return RECIPES[name][0]
