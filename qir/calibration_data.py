"""Calibration inputs drawn from the built-in text, disjoint from what evaluation uses.

Evaluation reads the first tokens (or sentences) of the pydoc text; calibration reads from the
second half of its tokens (or after the first 1,000 sentences), so the two never overlap."""
from __future__ import annotations

import numpy as np

from qir.errors import QirError
from qir.frontend import LoadedModel
from qir.text import pydoc_text, sentences

SENTENCE_SKIP = 1000
INPUTS_KEY = "calibration_inputs"  # PassContext.data entry the calibrate pass reads: a list of input tuples


def default_calibration_samples(kind: str) -> int:
    """Windows of 256 tokens for a causal LM; sentences (about 20 tokens each) for an encoder, so
    that the inputs hold more tokens than a layer has input channels (1,536 in MiniLM's FFN)."""
    return 128 if kind == "encoder" else 16


def calibration_inputs(loaded: LoadedModel, samples: int, text: str | None = None) -> list[tuple]:
    """`samples` input tuples for the model's main function."""
    if loaded.tokenizer is None:
        raise QirError("calibration needs a tokenizer to turn text into inputs; this model has none")
    if loaded.kind == "encoder":
        from qir.evaluate import encode_static
        return [encode_static(loaded, s) for s in sentences(samples, skip=SENTENCE_SKIP)]
    if loaded.kind != "causal-lm":
        raise QirError(f"no calibration data is defined for a model of kind '{loaded.kind}'")
    ids = loaded.tokenizer.encode(text or pydoc_text(), add_special_tokens=False).ids
    held_out = ids[len(ids) // 2:]
    L = loaded.seq_len
    bos = bool(loaded.info.get("add_bos")) and loaded.info.get("bos_token_id") is not None
    per = L - 1 if bos else L
    if len(held_out) < samples * per:
        raise QirError(f"the calibration text has {len(held_out)} tokens, fewer than {samples} windows of {L}")
    windows = []
    for i in range(samples):
        chunk = held_out[i * per:(i + 1) * per]
        windows.append((np.asarray(([loaded.info["bos_token_id"]] if bos else []) + chunk, np.int32)[None],))
    return windows


def calibration_file_inputs(path, loaded: LoadedModel) -> list[tuple]:
    """Inputs from an .npz file: one array per argument of the main function, named like the
    argument, stacked along a leading sample axis."""
    from pathlib import Path
    path = Path(path)
    try:
        arrays = np.load(path)
    except FileNotFoundError:
        raise QirError(f"calibration data not found: {path}") from None
    except Exception as exc:
        raise QirError(f"{path} is not a readable .npz file: {exc}") from None
    func = loaded.module.main
    names = [a.name for a in func.args]
    missing = [n for n in names if n not in arrays.files]
    if missing:
        raise QirError(f"{path}: no array for argument(s) {', '.join(missing)} of @{func.name} "
                       f"(the file has {', '.join(arrays.files) or 'none'})")
    counts = set()
    for arg in func.args:
        data = arrays[arg.name]
        if data.shape[1:] != arg.type.shape:
            raise QirError(f"{path}: array '{arg.name}' has samples of shape {list(data.shape[1:])}, "
                           f"@{func.name} takes {list(arg.type.shape)}")
        counts.add(data.shape[0])
    if len(counts) != 1:
        raise QirError(f"{path}: the arrays hold different numbers of samples ({sorted(counts)})")
    return [tuple(arrays[n][i] for n in names) for i in range(counts.pop())]
