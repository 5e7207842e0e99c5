"""The real all-MiniLM-L6-v2 through the BERT frontend: sentence embeddings of real English text
match transformers' BertModel with sentence-transformers' mean pooling."""
import numpy as np
import pytest
import torch
from transformers import AutoModel, AutoTokenizer

import qir
from frontends.bert import encode_batch_static
from qir.frontend import embedded_model_path
from qir.text import sentences

SEQ_LEN = 128  # the length all-MiniLM-L6-v2 was trained at
MIN_COSINE = 0.99999


@pytest.fixture(scope="module")
def folder():
    return embedded_model_path("minilm")


def reference_embedding(model, ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Last hidden state and mean-pooled embedding of one unpadded sequence."""
    tokens = torch.from_numpy(ids[None]).long()
    with torch.no_grad():
        hidden = model(input_ids=tokens, attention_mask=torch.ones_like(tokens)).last_hidden_state[0].numpy()
    return hidden, hidden.mean(0)


def test_minilm_sentence_embeddings_match_transformers(folder):
    loaded = qir.load_model(folder, seq_len=SEQ_LEN)
    assert loaded.kind == "encoder" and loaded.info["hidden_size"] == 384 and loaded.info["layers"] == 6
    texts = sentences(64)
    ids, mask = encode_batch_static(loaded.tokenizer, texts, SEQ_LEN, loaded.info["pad_token_id"])
    lengths = mask.sum(1)

    # The frontend switched off tokenizer.json's own padding to 128: ids must be the real
    # tokens, exactly as transformers' tokenizer produces them.
    hf_tokenizer = AutoTokenizer.from_pretrained(folder)
    for row, text in enumerate(texts):
        assert hf_tokenizer(text)["input_ids"] == ids[row, :lengths[row]].tolist()

    model = AutoModel.from_pretrained(folder, attn_implementation="eager", dtype=torch.float32).eval()
    interpreter = qir.Interpreter(loaded.module)  # compiled once, run per sentence
    cosines, embedding_diff, hidden_diff = [], 0.0, 0.0
    for row in range(len(texts)):
        n = lengths[row]
        hidden, embedding = interpreter.run(ids[row:row + 1], mask[row:row + 1])
        # The reference sees the sentence without padding: the mask must make padding invisible
        ref_hidden, ref_embedding = reference_embedding(model, ids[row, :n])
        embedding = embedding[0]
        cosines.append(float(embedding @ ref_embedding / (np.linalg.norm(embedding) * np.linalg.norm(ref_embedding))))
        embedding_diff = max(embedding_diff, float(np.abs(embedding - ref_embedding).max()))
        hidden_diff = max(hidden_diff, float(np.abs(hidden[0, :n] - ref_hidden).max()))

    cosines = np.array(cosines)
    print(f"\nall-MiniLM-L6-v2, {len(texts)} sentences ({lengths.min()}-{lengths.max()} tokens) padded to "
          f"{SEQ_LEN}: cosine min {cosines.min():.8f} mean {cosines.mean():.8f}; max |diff| "
          f"embedding {embedding_diff:.2e}, hidden {hidden_diff:.2e}")
    assert len(texts) >= 50
    assert cosines.min() >= MIN_COSINE
    assert embedding_diff <= 1e-4
