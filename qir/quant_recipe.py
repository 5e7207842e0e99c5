"""Quantization recipes: default bit widths for weights and activations, and overrides selected
by regex over value/constant names or by the op that produces or consumes a value.

A recipe is JSON (see docs/quantization.md):
{
  "weights":     {"bits": 8},                       # per-channel symmetric; "block": 32 for per-block,
                                                    # "scheme": "per-tensor" for one scale,
                                                    # "scheme": "lpbq" + "block": 64 for LPBQ (4 bit)
  "activations": {"bits": 8, "observer": "minmax",  # per-tensor; 16-bit is symmetric (zero point 0)
                  "min_sqnr": 20},                  # an 8-bit grid below 20 dB SQNR: 16 bits instead
  "constants":   {"bits": 16},                      # other float constants (norm weights, rope tables)
  "overrides": [
    {"consumer": "q.rms_norm", "activations": {"bits": 16}},   # values feeding a norm
    {"producer": "q.softmax",  "activations": {"bits": 16}},
    {"match": "blk\\\\.0\\\\..*",  "weights": {"bits": 8}},        # regex over names
    {"feeds": "logits", "weights": {"bits": 8}},                # the weight of the op making %logits
    {"match": "logits", "skip": true}                           # leave float
  ]
}"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path

from qir.errors import QirError
from qir.stats import OBSERVERS

SUPPORTED_BITS = {"weights": (4, 8), "activations": (8, 16), "constants": (8, 16)}
SECTION_KEYS = {"weights": {"bits", "block", "scheme", "observer"},
                "activations": {"bits", "observer", "percentile", "min_sqnr"}, "constants": {"bits"}}
WEIGHT_SCHEMES = ("per-channel", "per-tensor", "lpbq")  # per-block is "block": B; lpbq needs "block" too
WEIGHT_OBSERVERS = ("minmax", "mse")  # weights need no histogram: mse searches a clip per channel/block
OVERRIDE_KEYS = {"match", "producer", "consumer", "feeds", "weights", "activations", "constants", "skip"}

# Tensors that must stay wide under 8-bit activations: the residual stream and norm inputs
# (massive activations), and softmax input/output (attention scores reach softmax through a
# masked_fill, whose input is the softmax input too).
NORM_INTERNALS = r".*\.norm_[a-z]+\d*"  # passes/decompose_norms.py names them so

WIDE_TENSORS = [
    {"consumer": "q.rms_norm", "activations": {"bits": 16}},
    # a norm decomposed by decompose-norms: its internals and its input
    {"match": NORM_INTERNALS, "activations": {"bits": 16}},
    {"feeds": NORM_INTERNALS, "activations": {"bits": 16}},
    {"consumer": "q.layer_norm", "activations": {"bits": 16}},
    {"consumer": "q.softmax", "activations": {"bits": 16}},
    {"consumer": "q.masked_fill", "activations": {"bits": 16}},
    {"producer": "q.softmax", "activations": {"bits": 16}},
]

# 8-bit activations whose grid leaves less SQNR than this on the calibration data take 16 bits
# (qir/mixed_precision.py; the sweep that chose it is in docs/quantization.md)
MIN_SQNR_DB = 20.0
A8 = {"bits": 8, "min_sqnr": MIN_SQNR_DB}

LPBQ_BLOCK = 64  # the block size of the built-in LPBQ recipes (AIMET's default for LPBQ)

# The 4-bit configurations keep the output head (the linear producing `logits`; with tied
# embeddings, also the embedding table) in int8 per channel: on SmolLM2 at w4a16 a 4-bit head alone
# took perplexity from 66.8 to 277 (docs/quantization.md).
HEAD_INT8 = {"feeds": "logits", "weights": {"bits": 8, "scheme": "per-channel", "block": None}}

BUILTIN = {
    "w8a8": {"weights": {"bits": 8}, "activations": A8, "constants": {"bits": 16}, "overrides": WIDE_TENSORS},
    "a16w8": {"weights": {"bits": 8}, "activations": {"bits": 16}, "constants": {"bits": 16}},
    "w4a8": {"weights": {"bits": 4}, "activations": A8, "constants": {"bits": 16},
             "overrides": WIDE_TENSORS + [HEAD_INT8]},
    "w4a16": {"weights": {"bits": 4}, "activations": {"bits": 16}, "constants": {"bits": 16},
              "overrides": [HEAD_INT8]},
    # 4-bit weights in blocks of 64 with LPBQ's two-level scales (what Qualcomm's HTP runs in 4 bit)
    "w4a8-lpbq": {"weights": {"bits": 4, "scheme": "lpbq", "block": LPBQ_BLOCK}, "activations": A8,
                  "constants": {"bits": 16}, "overrides": WIDE_TENSORS + [HEAD_INT8]},
    "w4a16-lpbq": {"weights": {"bits": 4, "scheme": "lpbq", "block": LPBQ_BLOCK}, "activations": {"bits": 16},
                   "constants": {"bits": 16}, "overrides": [HEAD_INT8]},
}


@dataclass
class Override:
    match: re.Pattern | None
    producer: str | None
    consumer: str | None
    feeds: re.Pattern | None  # matches the name of a value this tensor is an operand of
    settings: dict
    skip: bool


@dataclass
class QuantRecipe:
    name: str
    weights: dict
    activations: dict
    constants: dict
    overrides: list[Override] = field(default_factory=list)

    def settings_for(self, section: str, name: str, producer: str | None = None,
                     consumers: tuple[str, ...] = (), feeds: tuple[str, ...] = ()) -> dict | None:
        """The effective settings of one tensor; None when an override leaves it float.
        Later overrides win over earlier ones."""
        settings = dict(getattr(self, section))
        for o in self.overrides:
            if o.match is not None and not o.match.fullmatch(name):
                continue
            if o.producer is not None and o.producer != producer:
                continue
            if o.consumer is not None and o.consumer not in consumers:
                continue
            if o.feeds is not None and not any(o.feeds.fullmatch(f) for f in feeds):
                continue
            if o.skip:
                return None
            settings.update(o.settings.get(section, {}))
        return settings


def _check_section(where: str, section: str, values) -> dict:
    if not isinstance(values, dict):
        raise QirError(f"{where}: '{section}' must be an object like {{\"bits\": 8}}")
    unknown = set(values) - SECTION_KEYS[section]
    if unknown:
        raise QirError(f"{where}: unknown key(s) {', '.join(sorted(unknown))} in '{section}' "
                       f"(valid: {', '.join(sorted(SECTION_KEYS[section]))})")
    bits = values.get("bits")
    if bits is not None and (isinstance(bits, bool) or not isinstance(bits, int)):
        raise QirError(f"{where}: '{section}' bits must be an integer, got {bits!r}")
    if bits is not None and bits not in SUPPORTED_BITS[section]:
        raise QirError(f"{where}: {bits}-bit {section} are not supported "
                       f"(supported: {', '.join(map(str, SUPPORTED_BITS[section]))})")
    if "observer" in values and (not isinstance(values["observer"], str) or values["observer"] not in OBSERVERS):
        raise QirError(f"{where}: unknown observer '{values['observer']}' (observers: {', '.join(OBSERVERS)})")
    if section == "weights" and values.get("observer", "minmax") not in WEIGHT_OBSERVERS:
        raise QirError(f"{where}: weight observer must be one of {', '.join(WEIGHT_OBSERVERS)}, "
                       f"got {values['observer']!r}")
    if "percentile" in values and (isinstance(values["percentile"], bool)
                                   or not isinstance(values["percentile"], (int, float))
                                   or not 0 < values["percentile"] <= 100):
        raise QirError(f"{where}: percentile must be a number in (0, 100], got {values['percentile']!r}")
    if "min_sqnr" in values and (isinstance(values["min_sqnr"], bool)
                                 or not isinstance(values["min_sqnr"], (int, float)) or values["min_sqnr"] < 0):
        raise QirError(f"{where}: min_sqnr must be a number of dB ≥ 0 (0: off), got {values['min_sqnr']!r}")
    if values.get("block") is not None and (isinstance(values["block"], bool) or not isinstance(values["block"], int)
                                            or values["block"] < 2):
        raise QirError(f"{where}: weight block size must be an integer ≥ 2 (null: no blocks), got {values['block']!r}")
    if values.get("scheme", "per-channel") not in WEIGHT_SCHEMES:
        raise QirError(f"{where}: weight scheme must be one of {', '.join(WEIGHT_SCHEMES)}, got {values['scheme']!r}")
    if values.get("scheme") == "per-tensor" and values.get("block") is not None:
        raise QirError(f"{where}: weights are either per-tensor or per-block (\"block\"), not both")
    if values.get("scheme") == "lpbq" and values.get("bits", 4) != 4:
        raise QirError(f"{where}: \"scheme\": \"lpbq\" weights are 4-bit, not {values['bits']}-bit")
    return dict(values)


def check_lpbq(where: str, weights: dict) -> None:
    """LPBQ weights are 4-bit blocks (checked on a recipe's weights and on each weight's settings)."""
    if weights.get("bits") != 4:
        raise QirError(f"{where}: \"scheme\": \"lpbq\" weights are 4-bit, not {weights.get('bits')}-bit")
    if weights.get("block") is None:
        raise QirError(f"{where}: \"scheme\": \"lpbq\" weights are 4-bit blocks: give the block size "
                       "(\"block\": 64)")


def _regex(where: str, text: str | None) -> re.Pattern | None:
    try:
        return re.compile(text) if text is not None else None
    except re.error as exc:
        raise QirError(f"{where}: bad regex {text!r}: {exc}") from None


def recipe_from_dict(name: str, data: dict) -> QuantRecipe:
    if not isinstance(data, dict):
        raise QirError(f"recipe {name}: must be a JSON object")
    unknown = set(data) - {"weights", "activations", "constants", "overrides"}
    if unknown:
        raise QirError(f"recipe {name}: unknown key(s) {', '.join(sorted(unknown))} "
                       "(valid: weights, activations, constants, overrides)")
    defaults = {"weights": {"bits": 8}, "activations": {"bits": 8, "observer": "minmax"}, "constants": {"bits": 16}}
    sections = {}
    for section, default in defaults.items():
        sections[section] = {**default, **_check_section(f"recipe {name}", section, data.get(section, {}))}
    if sections["weights"].get("scheme") == "lpbq":
        check_lpbq(f"recipe {name}", sections["weights"])
    overrides = []
    if not isinstance(data.get("overrides", []), list):
        raise QirError(f"recipe {name}: 'overrides' must be a list of objects")
    for i, item in enumerate(data.get("overrides", [])):
        where = f"recipe {name}, override {i}"
        if not isinstance(item, dict):
            raise QirError(f"{where}: must be an object with keys among {', '.join(sorted(OVERRIDE_KEYS))}")
        if set(item) - OVERRIDE_KEYS:
            raise QirError(f"{where}: unknown key(s) {', '.join(sorted(set(item) - OVERRIDE_KEYS))} "
                           f"(valid: {', '.join(sorted(OVERRIDE_KEYS))})")
        for key in ("match", "producer", "consumer", "feeds"):
            if key in item and not isinstance(item[key], str):
                what = "a regular expression" if key in ("match", "feeds") else "an op name like q.softmax"
                raise QirError(f"{where}: '{key}' must be {what}, got {item[key]!r}")
        if not isinstance(item.get("skip", False), bool):
            raise QirError(f"{where}: 'skip' must be true or false, got {item['skip']!r}")
        pattern, feeds = (_regex(where, item.get(key)) for key in ("match", "feeds"))
        settings = {s: _check_section(where, s, item[s]) for s in SECTION_KEYS if s in item}
        overrides.append(Override(pattern, item.get("producer"), item.get("consumer"), feeds, settings,
                                  bool(item.get("skip", False))))
    return QuantRecipe(name, sections["weights"], sections["activations"], sections["constants"], overrides)


def load_recipe(spec: str) -> QuantRecipe:
    """A built-in recipe name or the path of a JSON recipe file."""
    if spec in BUILTIN:
        return recipe_from_dict(spec, BUILTIN[spec])
    path = Path(spec)
    if not path.exists():
        raise QirError(f"unknown quantization recipe '{spec}': not a built-in ({', '.join(BUILTIN)}) "
                       "and no such file")
    try:
        data = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise QirError(f"{path}: not valid JSON: {exc}") from None
    except OSError as exc:
        raise QirError(f"recipe {path}: cannot be read: {exc.strerror or exc}") from None
    return recipe_from_dict(path.name, data)
