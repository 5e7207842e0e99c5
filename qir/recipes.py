"""Named pipelines for qir-compile --recipe. Quantization recipes register here as they arrive."""
from __future__ import annotations

from qir.errors import QirError

RECIPES: dict[str, tuple[str, str]] = {
    # name: (pipeline, what it is for)
    "float": ("canonicalize,dce", "lower and clean up the float model; no quantization"),
}
DEFAULT_RECIPE = "float"


def recipe_pipeline(name: str) -> str:
    if name not in RECIPES:
        raise QirError(f"unknown recipe '{name}'; available: "
                       + "; ".join(f"{k} ({why})" for k, (_, why) in RECIPES.items()))
    return RECIPES[name][0]
