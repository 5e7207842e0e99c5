"""Named pipelines for qir-compile --recipe. Quantization recipes register here as they arrive."""
from __future__ import annotations

from qir.errors import QirError

# The built-in quantization recipes use the minmax observer, so their calibration skips histograms
# (one pass over the data instead of two); a JSON recipe may ask for percentile or mse.
RECIPES: dict[str, tuple[str, str]] = {
    # name: (pipeline, what it is for)
    "float": ("canonicalize,dce", "lower and clean up the float model; no quantization"),
    "w8a8": ("canonicalize,dce,calibrate{histogram=false},quantize{recipe=w8a8}",
             "int8 weights per channel, int8 activations; residual stream, norm inputs and softmax in int16"),
    "a16w8": ("canonicalize,dce,calibrate{histogram=false},quantize{recipe=a16w8}",
              "int8 weights per channel, int16 activations"),
    "w4a8": ("canonicalize,dce,calibrate{histogram=false},quantize{recipe=w4a8}",
             "int4 weights per channel, int8 activations (wide tensors in int16)"),
    "w4a16": ("canonicalize,dce,calibrate{histogram=false},quantize{recipe=w4a16}",
              "int4 weights per channel, int16 activations"),
}
DEFAULT_RECIPE = "float"


def recipe_pipeline(name: str) -> str:
    """The pipeline of a named recipe; a .json path runs the quantization recipe in that file."""
    if name.endswith(".json"):
        from qir.quant_recipe import load_recipe
        load_recipe(name)  # a malformed recipe fails now, not after loading and calibrating a model
        return f"canonicalize,dce,calibrate,quantize{{recipe={name}}}"
    if name not in RECIPES:
        raise QirError(f"unknown recipe '{name}'; available: "
                       + "; ".join(f"{k} ({why})" for k, (_, why) in RECIPES.items()))
    return RECIPES[name][0]
