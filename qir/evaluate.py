"""Evaluation on real text: perplexity of a causal LM, sentence embeddings of an encoder."""
from __future__ import annotations

import math

import numpy as np
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from qir.errors import QirError
from qir.frontend import LoadedModel
from qir.interpreter import Interpreter


WEIGHTS_ROUNDED_ATTR = "weights_rounded_by"  # module attr: the pass that wrote rounded weights over the float ones

def progress_bar(console=None) -> Progress:
    return Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                    TextColumn("{task.fields[status]}"), console=console, transient=True)


def token_windows(loaded: LoadedModel, text: str, tokens: int, context: int) -> tuple[list[np.ndarray], bool]:
    """Non-overlapping windows of `context` tokens covering the first `tokens` tokens of `text`.
    When the tokenizer's model expects a BOS token, each window starts with it (and holds one
    text token fewer). Returns the windows and whether BOS was used."""
    if loaded.tokenizer is None:
        raise QirError("this model has no tokenizer, so it cannot be evaluated on text")
    ids = loaded.tokenizer.encode(text, add_special_tokens=False).ids
    bos = bool(loaded.info.get("add_bos")) and loaded.info.get("bos_token_id") is not None
    per_window = context - 1 if bos else context
    ids = ids[:tokens]
    count = len(ids) // per_window
    if count == 0:
        raise QirError(f"the text has {len(ids)} tokens: not enough for one window of {context}")
    windows = []
    for i in range(count):
        chunk = ids[i * per_window:(i + 1) * per_window]
        windows.append(np.asarray(([loaded.info["bos_token_id"]] if bos else []) + chunk, np.int32)[None])
    return windows, bos


def log_softmax(logits: np.ndarray) -> np.ndarray:
    shifted = logits - logits.max(-1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(-1, keepdims=True))


def perplexity(loaded: LoadedModel, text: str, tokens: int = 4096, context: int | None = None,
               console=None, run=None, reference=None) -> dict:
    """Perplexity over non-overlapping windows. `run(tokens) -> logits` defaults to the float
    interpreter; backends pass their own runner to evaluate a compiled artifact. With
    `reference(tokens) -> logits` (the float model), also the mean KL(reference || run) per token
    and the top-1 agreement."""
    if loaded.kind != "causal-lm":
        raise QirError(f"perplexity needs a causal language model; this model is '{loaded.kind}'")
    context = context or loaded.seq_len
    if context != loaded.seq_len:
        raise QirError(f"the model was lowered for {loaded.seq_len} tokens, not a context of {context}")
    windows, bos = token_windows(loaded, text, tokens, context)
    if run is None:
        interpreter = Interpreter(loaded.module)
        run = lambda window: interpreter.run(window)[0]  # noqa: E731
    nll, ref_nll, kl, agree, count = 0.0, 0.0, 0.0, 0, 0
    with progress_bar(console) as bar:
        task = bar.add_task("perplexity", total=len(windows), status="")
        for window in windows:
            logp = log_softmax(np.asarray(run(window), np.float64)[0, :-1])
            targets = window[0, 1:]
            positions = np.arange(len(targets))
            nll -= float(logp[positions, targets].sum())
            if reference is not None:
                ref = log_softmax(np.asarray(reference(window), np.float64)[0, :-1])
                ref_nll -= float(ref[positions, targets].sum())
                kl += float((np.exp(ref) * (ref - logp)).sum())
                agree += int((ref.argmax(-1) == logp.argmax(-1)).sum())
            count += len(targets)
            bar.update(task, advance=1, status=f"ppl {math.exp(nll / count):.3f}")
    result = {"kind": "causal-lm", "tokens": len(windows) * context, "context": context, "windows": len(windows),
              "bos_per_window": bos, "predicted_tokens": count, "nll": nll / count, "perplexity": math.exp(nll / count)}
    if reference is not None:
        result.update({"float_perplexity": math.exp(ref_nll / count), "kl_to_float": kl / count,
                       "top1_agreement": agree / count})
    return result


def encode_static(loaded: LoadedModel, sentence: str) -> tuple[np.ndarray, np.ndarray]:
    """Token ids and attention mask of one sentence, padded (or cut) to the model's static length."""
    tokenizer = loaded.tokenizer
    if tokenizer is None:
        raise QirError("this model has no tokenizer, so it cannot embed text")
    tokenizer.no_padding()
    tokenizer.no_truncation()
    ids = tokenizer.encode(sentence).ids[:loaded.seq_len]
    pad = int(loaded.info.get("pad_token_id") or 0)
    mask = np.zeros((1, loaded.seq_len), np.int32)
    mask[0, :len(ids)] = 1
    padded = np.full((1, loaded.seq_len), pad, np.int32)
    padded[0, :len(ids)] = ids
    return padded, mask


def embeddings(loaded: LoadedModel, sentences: list[str], console=None, run=None) -> np.ndarray:
    """Sentence embeddings [n, H] (mean pooling, as the model's sentence-transformers config)."""
    if loaded.kind != "encoder":
        raise QirError(f"embeddings need an encoder model; this model is '{loaded.kind}'")
    if run is None:
        interpreter = Interpreter(loaded.module)
        run = lambda ids, mask: interpreter.run(ids, mask)[1]  # noqa: E731
    rows = []
    with progress_bar(console) as bar:
        task = bar.add_task("embedding", total=len(sentences), status="")
        for sentence in sentences:
            rows.append(np.asarray(run(*encode_static(loaded, sentence)))[0])
            bar.update(task, advance=1)
    return np.stack(rows)
