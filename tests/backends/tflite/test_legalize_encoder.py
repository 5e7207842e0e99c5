"""A BERT encoder's attention mask and mean pooling lowered to integer TFLite: a tiny random
encoder built by the BERT frontend, with its LayerNorms left out (this file tests the mask and the
pool), quantized, legalized, and run in LiteRT BUILTIN_REF with real padding."""
import numpy as np
import pytest

import qir
from backends.tflite.emit import emit_tflite
from backends.tflite.legalize import legalize_tflite
from backends.tflite.reference import run_integer
from backends.tflite.runner import run_tflite
from frontends.bert import Checkpoint, EncoderBuilder, read_config
from qir import Builder, Module, PassContext, PassManager, QirError, parse_pipeline
from qir.weights import WeightStore

SEQ_LEN, VOCAB, HIDDEN, FFN = 12, 50, 16, 24
LENGTHS = (12, 7, 3, 1)  # real tokens per row; the rest is padding
CONFIG = {"hidden_size": HIDDEN, "num_hidden_layers": 2, "num_attention_heads": 2, "intermediate_size": FFN,
          "vocab_size": VOCAB, "max_position_embeddings": 20, "type_vocab_size": 2, "hidden_act": "gelu"}


class EncoderWithoutNorms(EncoderBuilder):
    def layer_norm(self, x, name, key, value_name):
        return x


def random_checkpoint(seed=0) -> WeightStore:
    """Random weights under Hugging Face's names, larger than the default init so that every token
    matters (near-uniform attention would hide a wrong mask)."""
    rng = np.random.default_rng(seed)
    shapes = {"embeddings.word_embeddings.weight": (VOCAB, HIDDEN),
              "embeddings.position_embeddings.weight": (20, HIDDEN),
              "embeddings.token_type_embeddings.weight": (2, HIDDEN)}
    for i in range(CONFIG["num_hidden_layers"]):
        key = f"encoder.layer.{i}"
        for part in ("attention.self.query", "attention.self.key", "attention.self.value", "attention.output.dense"):
            shapes[f"{key}.{part}.weight"], shapes[f"{key}.{part}.bias"] = (HIDDEN, HIDDEN), (HIDDEN,)
        shapes[f"{key}.intermediate.dense.weight"], shapes[f"{key}.intermediate.dense.bias"] = (FFN, HIDDEN), (FFN,)
        shapes[f"{key}.output.dense.weight"], shapes[f"{key}.output.dense.bias"] = (HIDDEN, FFN), (HIDDEN,)
    store = WeightStore()
    for name, shape in shapes.items():
        store.set(name, rng.normal(0, 0.4 if len(shape) == 2 else 0.1, shape).astype(np.float32))
    return store


def encoder_without_norms() -> Module:
    module = Module("bert", attrs={"kind": "encoder"})
    EncoderWithoutNorms(module, read_config(CONFIG, SEQ_LEN), Checkpoint(random_checkpoint()), SEQ_LEN).build()
    qir.verify(module)
    return module


def padded_batch(seed, lengths=LENGTHS):
    """Rows of token ids and attention masks; padded positions hold random ids, not 0, so any
    leak of padding into the real tokens or the pool changes the outputs."""
    rng = np.random.default_rng(seed)
    ids = rng.integers(1, VOCAB, (len(lengths), SEQ_LEN)).astype(np.int32)
    mask = (np.arange(SEQ_LEN)[None] < np.asarray(lengths)[:, None]).astype(np.int32)
    return ids, mask


def quantized(recipe: str) -> Module:
    module = encoder_without_norms()
    ids, mask = padded_batch(1, (12, 10, 8, 6, 4, 3, 2, 1))
    samples = [(ids[i:i + 1], mask[i:i + 1]) for i in range(len(ids))]
    PassManager(parse_pipeline(f"calibrate,quantize{{recipe={recipe}}}")).run(
        module, PassContext(data={"calibration_inputs": samples}))
    return module


# a16w8 with norms runs by default in test_bert_tflite.py
@pytest.fixture(scope="module", params=["w8a8", pytest.param("a16w8", marks=pytest.mark.slow)])
def lowered(request):
    module = quantized(request.param)
    legal = legalize_tflite(module)
    return request.param, module, legal, emit_tflite(legal)


def test_runtime_mask_becomes_one_condition_per_mask(lowered):
    _, _, legal, _ = lowered
    ops = [op.name for op in legal.main.ops]
    # the attention layers share key_mask's condition; the pool has its own [1, 1, L] mask
    assert ops.count("tfl.not_equal") == 2
    # each masked_fill (per layer, and the pool's) is a select, and the mask is selected again on
    # its int16 softmax's probabilities
    assert ops.count("tfl.select_v2") == 2 * (CONFIG["num_hidden_layers"] + 1)
    assert not any(name in ops for name in ("tfl.sum", "tfl.div", "tfl.cast"))


def test_bit_exact_with_litert_on_padded_rows(lowered):
    recipe, _, legal, model = lowered
    ids, mask = padded_batch(7)
    for row in range(len(LENGTHS)):
        runtime = run_tflite(model, {"input_ids": ids[row:row + 1], "attention_mask": mask[row:row + 1]})
        ours = run_integer(legal, ids[row:row + 1], mask[row:row + 1])
        for value, expected in zip(legal.main.outputs, ours):
            mismatches = int(np.count_nonzero(runtime[value.name] != expected))
            print(f"{recipe} row {row} ({LENGTHS[row]} tokens) {value.name}: {mismatches} of {expected.size} differ")
            assert mismatches == 0


def test_padding_changes_nothing_in_integers(lowered):
    """Masked keys get a probability of exactly 0 and padded tokens a pooling weight of exactly 0:
    other token ids in the padding leave the real tokens' states and the embedding unchanged."""
    _, _, legal, _ = lowered
    ids, mask = padded_batch(7)
    other_ids, _ = padded_batch(8)
    for row, n in enumerate(LENGTHS[1:], start=1):
        changed = np.where(mask[row] == 1, ids[row], other_ids[row])[None]
        assert (changed != ids[row:row + 1]).any()
        hidden_a, embedding_a = run_integer(legal, ids[row:row + 1], mask[row:row + 1])
        hidden_b, embedding_b = run_integer(legal, changed, mask[row:row + 1])
        np.testing.assert_array_equal(hidden_a[:, :n], hidden_b[:, :n])
        np.testing.assert_array_equal(embedding_a, embedding_b)


def test_integer_embedding_tracks_the_float_one(lowered):
    recipe, module, legal, _ = lowered
    ids, mask = padded_batch(9)
    cosines, interpreter = [], qir.Interpreter(module)  # float mode, compiled once
    for row in range(len(LENGTHS)):
        reference = interpreter.run(ids[row:row + 1], mask[row:row + 1])[1][0].astype(np.float64)
        got = run_integer(legal, ids[row:row + 1], mask[row:row + 1])[1][0].astype(np.float64)
        cosines.append(reference @ got / (np.linalg.norm(reference) * np.linalg.norm(got)))
    print(f"{recipe}: cosine of the integer embedding to the float one, per row: {np.round(cosines, 5)}")
    assert min(cosines) > (0.998 if recipe == "a16w8" else 0.98)


def test_float_runtime_mask_is_refused():
    m = Module("mask")
    b = Builder.new_function(m, "main")
    x, keep = b.arg("x", (2, 4)), b.arg("keep", (1, 4))
    b.ret(b.masked_fill(x, keep, value=-1e4, name="masked"))
    rng = np.random.default_rng(0)
    samples = [(rng.normal(size=(2, 4)).astype(np.float32), np.ones((1, 4), np.float32))]
    PassManager(parse_pipeline("calibrate,quantize{recipe=a16w8}")).run(m, PassContext(data={"calibration_inputs": samples}))
    with pytest.raises(QirError, match=r"q.masked_fill %masked needs a constant or an int32 mask; %keep is f32\[1,4\]"):
        legalize_tflite(m)
