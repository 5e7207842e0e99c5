"""Quantization recipes: the built-ins, JSON files with overrides, and an error naming the problem
for every malformed recipe."""
import json

import numpy as np
import pytest

from qir import QirError
from qir.quant_recipe import BUILTIN, load_recipe, recipe_from_dict
from qir.recipes import RECIPES, recipe_pipeline
from qir.stats import ValueStats

from passes.quantize import activation_spec


def write(tmp_path, data, name="recipe.json"):
    path = tmp_path / name
    path.write_text(json.dumps(data) if not isinstance(data, str) else data)
    return str(path)


@pytest.mark.parametrize("name,w,a", [("w8a8", 8, 8), ("a16w8", 8, 16), ("w4a8", 4, 8), ("w4a16", 4, 16)])
def test_builtins_load(name, w, a):
    recipe = load_recipe(name)
    assert recipe.weights["bits"] == w and recipe.activations["bits"] == a
    assert recipe.activations["observer"] == "minmax" and recipe.constants["bits"] == 16
    assert name in RECIPES and f"quantize{{recipe={name}}}" in recipe_pipeline(name)
    # the wide-tensor policy: under 8-bit activations, norm and softmax inputs and softmax outputs are int16
    wide = recipe.settings_for("activations", "h", "q.add", ("q.rms_norm", "q.add"))["bits"]
    soft = recipe.settings_for("activations", "p", "q.softmax", ("q.matmul",))["bits"]
    scores = recipe.settings_for("activations", "s", "q.mul", ("q.masked_fill",))["bits"]  # masked -> softmax
    plain = recipe.settings_for("activations", "g", "q.linear", ("q.silu",))["bits"]
    assert (wide, soft, scores, plain) == ((16, 16, 16, 8) if a == 8 else (16, 16, 16, 16))


def test_json_overrides(tmp_path):
    recipe = load_recipe(write(tmp_path, {
        "weights": {"bits": 4, "block": 32},
        "activations": {"bits": 8, "observer": "percentile", "percentile": 99.9},
        "constants": {"bits": 8},
        "overrides": [
            {"match": r"blk\.0\..*", "weights": {"bits": 8}},           # regex over names (full match)
            {"match": r"blk\.0\.ffn_down", "weights": {"bits": 4}},     # a later override wins
            {"producer": "q.softmax", "activations": {"bits": 16}},
            {"consumer": "q.rms_norm", "activations": {"bits": 16, "observer": "minmax"}},
            {"match": "logits", "skip": True},
            {"match": "output_norm", "constants": {"bits": 16}},
        ]}))
    assert recipe.name == "recipe.json"
    assert recipe.settings_for("weights", "blk.1.attn_q") == {"bits": 4, "block": 32}
    assert recipe.settings_for("weights", "blk.0.attn_q") == {"bits": 8, "block": 32}
    assert recipe.settings_for("weights", "blk.0.ffn_down") == {"bits": 4, "block": 32}
    assert recipe.settings_for("weights", "xblk.0.attn_q") == {"bits": 4, "block": 32}  # match is anchored
    assert recipe.settings_for("activations", "p", "q.softmax", ("q.matmul",))["bits"] == 16
    assert recipe.settings_for("activations", "s", "q.matmul", ("q.softmax",))["bits"] == 8
    norm_in = recipe.settings_for("activations", "h", "q.add", ("q.add", "q.rms_norm"))
    assert norm_in == {"bits": 16, "observer": "minmax", "percentile": 99.9}
    assert recipe.settings_for("activations", "logits", "q.linear", ()) is None
    assert recipe.settings_for("constants", "output_norm")["bits"] == 16
    assert recipe.settings_for("constants", "rope_cos")["bits"] == 8


def test_skip_then_later_override_is_still_skipped_and_unmatched_default():
    recipe = recipe_from_dict("r", {"overrides": [{"match": "a.*", "skip": True},
                                                  {"match": "ab", "activations": {"bits": 16}}]})
    assert recipe.settings_for("activations", "ab", "q.add") is None  # skip ends the search
    assert recipe.settings_for("activations", "b", "q.add") == {"bits": 8, "observer": "minmax"}  # the defaults


@pytest.mark.parametrize("data,message", [
    ({"activations": {"bits": 3}}, r"3-bit activations are not supported \(supported: 8, 16\)"),
    ({"weights": {"bits": 2}}, r"2-bit weights are not supported"),
    ({"activation": {"bits": 8}}, r"unknown key\(s\) activation"),
    ({"weights": {"bits": 8, "axis": 1}}, r"unknown key\(s\) axis in 'weights'"),
    ({"activations": {"bits": 16, "symmetric": False}}, r"unknown key\(s\) symmetric"),
    ({"activations": {"observer": "kl"}}, r"unknown observer 'kl'"),
    ({"activations": {"observer": "percentile", "percentile": 120}}, r"percentile must be a number in \(0, 100\]"),
    ({"weights": {"block": 1}}, r"block size must be an integer ≥ 2"),
    ({"weights": "8"}, r"'weights' must be an object"),
    ({"overrides": [{"match": "blk.(", "skip": True}]}, r"override 0: bad regex 'blk.\('"),
    ({"overrides": [{"matches": "x", "skip": True}]}, r"override 0: unknown key\(s\) matches"),
    ({"overrides": [{"match": "x", "activations": {"bits": 4}}]}, r"override 0: 4-bit activations"),
    ({"overrides": [{"consumer": "q.softmax", "activations": {"observer": "max"}}]}, r"unknown observer 'max'"),
    ({"overrides": [{"match": "x", "skip": "yes"}]}, r"override 0: 'skip' must be true or false"),
    ({"overrides": [{"producer": 3, "skip": True}]}, r"override 0: 'producer' must be an op name"),
    ({"overrides": {"match": "x"}}, r"'overrides' must be a list"),
])
def test_malformed_recipes_name_the_problem(tmp_path, data, message):
    with pytest.raises(QirError, match=message):
        recipe_from_dict("bad", data)
    with pytest.raises(QirError, match=message):  # the same from a file, named by its file name
        load_recipe(write(tmp_path, data, "bad.json"))


def test_unreadable_recipes(tmp_path):
    with pytest.raises(QirError, match="not valid JSON"):
        load_recipe(write(tmp_path, "{weights: 8}"))
    with pytest.raises(QirError, match="unknown quantization recipe 'w9a9'.*w8a8"):
        load_recipe("w9a9")
    with pytest.raises(QirError, match="must be a JSON object"):
        load_recipe(write(tmp_path, [1, 2]))
    with pytest.raises(QirError, match="unknown recipe 'w9a9'; available: float"):
        recipe_pipeline("w9a9")


def test_int16_activations_cannot_have_a_zero_point():
    """A recipe has no way to ask for it: 16-bit activations are symmetric by construction, even for
    a one-sided range (which then spends half the grid on values that never occur)."""
    stats = {"relu": ValueStats(0.0, 6.0, np.ones(16))}
    spec16 = activation_spec(stats, "relu", {"bits": 16, "observer": "minmax"})
    assert spec16.zero_point == (0,) and spec16.scale[0] == pytest.approx(6.0 / 32767)
    spec8 = activation_spec(stats, "relu", {"bits": 8, "observer": "minmax"})
    assert spec8.zero_point == (-128,) and spec8.scale[0] == pytest.approx(6.0 / 255)


def test_every_builtin_is_valid_json():
    for name, data in BUILTIN.items():
        assert recipe_from_dict(name, json.loads(json.dumps(data))).name == name


@pytest.mark.parametrize("name", ["w4a8", "w4a16", "w4a8-lpbq", "w4a16-lpbq"])
def test_4bit_builtins_keep_the_output_head_int8_per_channel(name):
    recipe = load_recipe(name)
    head = recipe.settings_for("weights", "output", None, ("q.linear",), ("logits",))
    body = recipe.settings_for("weights", "blk.0.ffn_down", None, ("q.linear",), ("blk.0.ffn_out",))
    assert (head["bits"], head.get("scheme", "per-channel"), head.get("block")) == (8, "per-channel", None)
    assert body["bits"] == 4 and body.get("block") == (64 if name.endswith("lpbq") else None)
