"""Hugging Face folders (config.json + *.safetensors [+ tokenizer.json]) -> IR.

The architecture is read from config.json (`model_type`) and handed to the family's builder."""
from __future__ import annotations

import importlib
import json
from pathlib import Path

from qir import Frontend, LoadedModel, QirError
from qir.frontend import kept_layers
from qir.weights import WeightStore

# model_type -> "module:function" of the family builder; each takes (config dict, WeightStore,
# seq_len, tokenizer) and returns a LoadedModel
ARCHITECTURES = {
    "llama": "frontends.llama:from_hf_config",
    "qwen2": "frontends.llama:from_hf_config",
    "bert": "frontends.bert:from_hf_config",
}


def read_config(folder: Path) -> dict:
    path = folder / "config.json"
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise QirError(f"{folder} has no config.json (a Hugging Face model folder needs one)") from None
    except json.JSONDecodeError as exc:
        raise QirError(f"{path} is not valid JSON: {exc}") from None


def read_safetensors(folder: Path) -> WeightStore:
    """Lazy weights from every *.safetensors file of the folder (sharded checkpoints included)."""
    files = sorted(folder.glob("*.safetensors"))
    if not files:
        raise QirError(f"{folder} has no *.safetensors weights file")
    store = WeightStore()
    for file in files:
        part = WeightStore.from_safetensors(file)
        for name in part.names():
            store.set(name, part.source(name))
    return store


def read_tokenizer(folder: Path):
    path = folder / "tokenizer.json"
    if not path.exists():
        return None
    from tokenizers import Tokenizer
    try:
        return Tokenizer.from_file(str(path))
    except Exception as exc:
        raise QirError(f"{path} is not a readable tokenizer: {exc}") from None


class HFFrontend(Frontend):
    name = "hf"
    description = f"Hugging Face folder with config.json + safetensors ({', '.join(ARCHITECTURES)})"

    def can_load(self, path: Path) -> bool:
        return path.is_dir() and (path / "config.json").exists()

    def load(self, path: Path, seq_len: int = 256, layers: int | None = None) -> LoadedModel:
        config = read_config(path)
        if layers is not None and isinstance(config.get("num_hidden_layers"), int):
            config["num_hidden_layers"] = kept_layers(config["num_hidden_layers"], layers, path)
        model_type = config.get("model_type")
        if model_type not in ARCHITECTURES:
            raise QirError(f"unsupported architecture '{model_type}' in {path / 'config.json'}; "
                           f"supported: {', '.join(ARCHITECTURES)}")
        module_name, func_name = ARCHITECTURES[model_type].split(":")
        build = getattr(importlib.import_module(module_name), func_name)
        return build(config, read_safetensors(path), seq_len, read_tokenizer(path))
