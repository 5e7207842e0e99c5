"""A tiny random BERT (LayerNorms, runtime attention mask, mean pooling) through
`qir-compile --target tflite`: every output element of the integer .tflite in LiteRT BUILTIN_REF
as qir's integer rules predict, on rows with real padding."""
import numpy as np
import pytest

import qir
from backends.tflite.legalize import legalize_tflite
from backends.tflite.reference import run_integer
from backends.tflite.runner import run_tflite
from tests.frontends.test_bert_parity import LENGTHS, SEQ_LEN, compile_tiny_bert, padded_inputs, tiny_bert

MIN_COSINE = {"a16w8": 0.999, "w8a8": 0.99}  # integer embedding against the float model's, per row


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    folder = tmp_path_factory.mktemp("tiny-bert")
    tiny_bert().save_pretrained(folder)
    return folder


# w8a8 without norms runs by default in test_legalize_encoder.py
@pytest.fixture(scope="module", params=["a16w8", pytest.param("w8a8", marks=pytest.mark.slow)])
def compiled(request, checkpoint, tmp_path_factory):
    """model.qir (quantized), its tfl form and the .tflite qir-compile wrote."""
    out = compile_tiny_bert(checkpoint, tmp_path_factory.mktemp(request.param), request.param, "tflite")
    module = qir.load_model(out / "model.qir").module
    return request.param, module, legalize_tflite(module), (out / "model.tflite").read_bytes()


def test_every_output_is_bit_exact_with_litert_on_padded_rows(compiled):
    recipe, _, legal, model = compiled
    ids, mask = padded_inputs(101)
    for row, n in enumerate(LENGTHS):
        feeds = {"input_ids": ids[row:row + 1], "attention_mask": mask[row:row + 1]}
        runtime = run_tflite(model, feeds)
        ours = run_integer(legal, feeds["input_ids"], feeds["attention_mask"])
        for value, expected in zip(legal.main.outputs, ours):
            mismatches = int(np.count_nonzero(runtime[value.name] != expected))
            print(f"tiny BERT {recipe}, {n} of {SEQ_LEN} tokens real: {value.name} "
                  f"{mismatches} of {expected.size} elements differ from LiteRT BUILTIN_REF")
            assert mismatches == 0


def test_padding_is_invisible_and_the_embedding_tracks_float(compiled):
    """Other ids in the padding change no real token's state and not the embedding (masked keys
    and padded tokens weigh exactly 0 in integers too); the embedding stays close to float."""
    recipe, module, legal, _ = compiled
    ids, mask = padded_inputs(101)
    other = np.where(mask == 1, ids, np.random.default_rng(5).integers(1, 101, ids.shape)).astype(np.int32)
    cosines, interpreter = [], qir.Interpreter(module)  # float mode, compiled once
    for row, n in enumerate(LENGTHS):
        hidden, embedding = run_integer(legal, ids[row:row + 1], mask[row:row + 1])
        hidden_other, embedding_other = run_integer(legal, other[row:row + 1], mask[row:row + 1])
        np.testing.assert_array_equal(hidden[:, :n], hidden_other[:, :n])
        np.testing.assert_array_equal(embedding, embedding_other)
        reference = interpreter.run(ids[row:row + 1], mask[row:row + 1])[1][0].astype(np.float64)
        got = embedding[0].astype(np.float64)
        cosines.append(float(reference @ got / (np.linalg.norm(reference) * np.linalg.norm(got))))
    print(f"tiny BERT {recipe}: integer embedding vs float, cosine per row {np.round(cosines, 5)}")
    assert (other != ids).any() and min(cosines) > MIN_COSINE[recipe]
