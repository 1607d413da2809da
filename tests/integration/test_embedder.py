"""The real MiniLM: token-budget batching changes the speed, never the vectors or their order."""

import numpy as np

from components.config import EmbedderParams
from components.knowledge.embedder import Embedder, embedder_identity, token_lengths


def test_token_batches_give_the_same_vectors_in_input_order() -> None:
    texts = [("fees and limits " * n).strip() for n in (1, 90, 3, 40, 7, 120, 2)] + ["", "Lost card?"]
    params = EmbedderParams(batch_tokens=256, batch_size=64)
    plain = EmbedderParams(batch_tokens=0, batch_size=1)  # one text at a time: no padding at all
    seen: list[int] = []
    budget = Embedder(params, embedder_identity(params)).encode(texts, progress=seen.append)
    alone = Embedder(plain, embedder_identity(plain)).encode(texts)
    assert budget.shape == (len(texts), alone.shape[1]) and budget.dtype == np.float32
    assert sum(seen) == len(texts) and len(seen) > 1  # several batches, every text reported once
    np.testing.assert_allclose(budget, alone, atol=2e-5)
    np.testing.assert_allclose(np.linalg.norm(budget, axis=1), 1.0, atol=1e-5)


def test_token_lengths_are_truncated_at_the_model_window() -> None:
    e = Embedder(EmbedderParams(), embedder_identity(EmbedderParams()))
    model = e._load()
    lengths = token_lengths(model, ["short", "word " * 2000])
    assert lengths[0] < 10 and lengths[1] == model.max_seq_length
