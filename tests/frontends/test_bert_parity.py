"""The BERT frontend against transformers' BertModel on a small random checkpoint, and its errors
for checkpoints it cannot lower faithfully."""
import shutil

import numpy as np
import pytest
import torch
from transformers import BertConfig, BertModel

import qir
from tests.frontends.reference_init import widen_weights
from tests.frontends.checkpoint_edits import delete_tensor, edit_config
from qir.weights import SafetensorsEntry

SEQ_LEN = 16
LENGTHS = (16, 11, 5, 1)  # real tokens per row; the rest is padding
TOLERANCE = 1e-4


def tiny_bert(seed: int = 0) -> BertModel:
    torch.manual_seed(seed)
    config = BertConfig(vocab_size=101, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                        intermediate_size=48, max_position_embeddings=40, type_vocab_size=2,
                        hidden_act="gelu", attn_implementation="eager")
    model = BertModel(config, add_pooling_layer=False).eval()
    return widen_weights(model, "LayerNorm.weight", norm_spread=0.2, matrix_std=0.3)


@pytest.fixture(scope="module")
def reference():
    return tiny_bert()


@pytest.fixture(scope="module")
def checkpoint(reference, tmp_path_factory):
    folder = tmp_path_factory.mktemp("tiny-bert")
    reference.save_pretrained(folder)
    return folder


@pytest.fixture
def editable_checkpoint(checkpoint, tmp_path):
    folder = tmp_path / "bert"
    shutil.copytree(checkpoint, folder)
    return folder


def compile_tiny_bert(checkpoint, out, recipe: str, target: str):
    """`qir-compile` of the tiny BERT for `target`, calibrated on rows with 16 down to 1 real tokens;
    returns the output folder."""
    from qir.cli import compile as compile_cli
    lengths = (16, 14, 12, 10, 8, 6, 4, 3, 2, 1)
    rng = np.random.default_rng(3)
    ids = rng.integers(1, 101, (len(lengths), 1, SEQ_LEN)).astype(np.int32)
    mask = (np.arange(SEQ_LEN) < np.asarray(lengths)[:, None, None]).astype(np.int32)
    np.savez(out / "calibration.npz", input_ids=ids, attention_mask=mask)
    assert compile_cli.main([str(checkpoint), "--seq-len", str(SEQ_LEN), "--recipe", recipe, "--target", target,
                             "--calibration-data", str(out / "calibration.npz"), "--report-samples", "0",
                             "-o", str(out / "model")]) == 0
    return out / "model"


def padded_inputs(vocab: int, seed: int = 1):
    rng = np.random.default_rng(seed)
    ids = np.zeros((len(LENGTHS), SEQ_LEN), np.int32)
    mask = np.zeros((len(LENGTHS), SEQ_LEN), np.int32)
    for row, n in enumerate(LENGTHS):
        ids[row, :n] = rng.integers(1, vocab, n)
        mask[row, :n] = 1
    return ids, mask


def test_hidden_states_and_mean_pooling_match_transformers(reference, checkpoint):
    loaded = qir.load_model(checkpoint, seq_len=SEQ_LEN)
    assert loaded.kind == "encoder" and loaded.seq_len == SEQ_LEN
    assert loaded.module.attrs["architecture"] == "bert"
    assert (loaded.info["hidden_size"], loaded.info["layers"], loaded.info["pad_token_id"]) == (32, 2, 0)

    ids, mask = padded_inputs(reference.config.vocab_size)
    with torch.no_grad():
        expected = reference(input_ids=torch.from_numpy(ids).long(),
                             attention_mask=torch.from_numpy(mask).long()).last_hidden_state.numpy()
    m = mask[..., None].astype(np.float32)
    expected_pooled = (expected * m).sum(1) / np.maximum(m.sum(1), 1e-9)

    interpreter = qir.Interpreter(loaded.module)
    hidden_diff = pooled_diff = 0.0
    for row, n in enumerate(LENGTHS):
        hidden, pooled = interpreter.run(ids[row:row + 1], mask[row:row + 1])
        # Padded positions are outputs nobody reads; only real tokens are compared
        hidden_diff = max(hidden_diff, float(np.abs(hidden[0, :n] - expected[row, :n]).max()))
        pooled_diff = max(pooled_diff, float(np.abs(pooled[0] - expected_pooled[row]).max()))
    print(f"\ntiny BERT vs transformers: max |diff| hidden {hidden_diff:.2e}, mean-pooled {pooled_diff:.2e}")
    assert hidden_diff <= TOLERANCE
    assert pooled_diff <= TOLERANCE


def test_padding_does_not_change_real_tokens(checkpoint):
    """The same sentence with different pad ids behind it gives the same outputs."""
    loaded = qir.load_model(checkpoint, seq_len=SEQ_LEN)
    ids, mask = padded_inputs(101)
    row = ids[2:3].copy()
    other = row.copy()
    other[0, LENGTHS[2]:] = 7  # garbage in the padding must be invisible
    a = qir.interpret(loaded.module, row, mask[2:3])
    b = qir.interpret(loaded.module, other, mask[2:3])
    np.testing.assert_allclose(a[0][0, :LENGTHS[2]], b[0][0, :LENGTHS[2]], atol=1e-6)
    np.testing.assert_allclose(a[1], b[1], atol=1e-6)


def test_lowering_reads_only_headers(checkpoint, monkeypatch):
    def no_reads(entry):
        raise AssertionError(f"tensor {entry.key} was read while lowering")
    monkeypatch.setattr(SafetensorsEntry, "__call__", no_reads)
    loaded = qir.load_model(checkpoint, seq_len=SEQ_LEN)
    assert loaded.module.constants["blk.1.attn_q"].type == qir.TensorType((32, 32), "f32")
    assert loaded.module.constants["pos_embd"].type == qir.TensorType((SEQ_LEN, 32), "f32")


def test_ir_has_readable_names_and_round_trips(checkpoint):
    module = qir.load_model(checkpoint, seq_len=SEQ_LEN).module
    text = qir.print_module(module)
    for name in ("@word_embd", "@blk.0.attn_q.bias", "@blk.1.ffn_down", "%blk0.scores", "%blk1.probs"):
        assert name in text
    assert "-10000.0" in text and "inf" not in text  # the attention mask stays finite
    assert qir.print_module(qir.parse(text)) == text


@pytest.mark.parametrize("changes, needles", [
    ({"intermediate_size": 40},
     ["encoder.layer.0.intermediate.dense.weight", "[40, 32]", "[48, 32]", "intermediate_size"]),
    ({"vocab_size": 100}, ["embeddings.word_embeddings.weight", "[100, 32]", "[101, 32]"]),
    ({"position_embedding_type": "relative_key"}, ["position_embedding_type", "relative_key", "absolute"]),
    ({"hidden_act": "swish"}, ["hidden_act", "swish"]),
    ({"num_attention_heads": 5}, ["hidden_size 32", "num_attention_heads 5"]),
    ({"is_decoder": True}, ["is_decoder"]),
    ({"model_type": "gpt2"}, ["unsupported architecture 'gpt2'", "bert"]),
])
def test_contradicting_or_unsupported_config_is_a_readable_error(editable_checkpoint, changes, needles):
    edit_config(editable_checkpoint, **changes)
    with pytest.raises(qir.QirError) as error:
        qir.load_model(editable_checkpoint, seq_len=SEQ_LEN)
    for needle in needles:
        assert needle in str(error.value)


def test_missing_tensor_is_named(editable_checkpoint):
    delete_tensor(editable_checkpoint, "encoder.layer.1.attention.self.key.weight")
    with pytest.raises(qir.QirError, match=r"no tensor 'encoder\.layer\.1\.attention\.self\.key\.weight'"):
        qir.load_model(editable_checkpoint, seq_len=SEQ_LEN)


def test_sequence_longer_than_the_position_table_is_refused(checkpoint):
    with pytest.raises(qir.QirError, match=r"seq_len 41 .*max_position_embeddings = 40"):
        qir.load_model(checkpoint, seq_len=41)
