"""Grounded decoding: after `intent:` only a known label, after `sources: [` only the prompt's documents."""

from __future__ import annotations

import pytest
import torch

from components.behaviour.base_model import train_tokenizer
from components.behaviour.constrain import GroundedDecoding, source_lists

DOCS = ["cards/lost-card.md", "fees/atm.html"]
LABELS = ["card_lost", "fees", "out_of_scope"]


@pytest.fixture(scope="module")
def tok():
    lines = ["intent: card_lost | answer: Freeze it | sources: [cards/lost-card.md]",
             "The ATM fee is 2 EUR, see fees/atm.html and guides/other.md."] * 20  # fmt: skip
    return train_tokenizer(lines, 400)


def _ids(tok, text: str) -> list[int]:
    return tok(text, add_special_tokens=False)["input_ids"]


def _allowed(fn: GroundedDecoding, tok, prompt: list[int], text: str) -> set[int]:
    return set(fn(0, torch.tensor(prompt + _ids(tok, text))))


def _spell(tok, allowed_fn, prompt: list[int], text: str, continuation: str) -> bool:
    """Whether `continuation` can be generated token by token after `text` under the constraint."""
    ids = _ids(tok, text)
    for t in _ids(tok, continuation):
        if t not in set(allowed_fn(0, torch.tensor(prompt + ids))):
            return False
        ids.append(t)
    return True


def test_source_lists_are_every_ordering_of_the_retrieved_documents_and_none() -> None:
    assert source_lists(["a", "b", "a"]) == ["]", "a]", "b]", "a, b]", "b, a]"]
    assert source_lists([]) == ["]"]


def test_free_until_a_marker(tok) -> None:
    prompt = _ids(tok, "### Customer: hi")
    fn = GroundedDecoding(tok, len(prompt), [DOCS], LABELS, [tok.eos_token_id])
    assert _allowed(fn, tok, prompt, " Hello there") == set(range(len(tok)))


def test_after_intent_only_known_labels_then_free(tok) -> None:
    prompt = _ids(tok, "### Customer: hi")
    fn = GroundedDecoding(tok, len(prompt), [DOCS], LABELS, [tok.eos_token_id])
    assert _spell(tok, fn, prompt, "intent:", " card_lost |")
    assert _spell(tok, fn, prompt, "intent:", " out_of_scope |")
    fn = GroundedDecoding(tok, len(prompt), [DOCS], LABELS, [tok.eos_token_id])
    assert not _spell(tok, fn, prompt, "intent:", " card_stolen |")
    fn = GroundedDecoding(tok, len(prompt), [DOCS], LABELS, [tok.eos_token_id])
    assert _allowed(fn, tok, prompt, "intent: fees | answer: any") == set(range(len(tok)))


def test_after_sources_only_the_prompts_documents_then_the_end(tok) -> None:
    prompt = _ids(tok, "### Customer: hi")
    head = "intent: fees | answer: 2 EUR | sources: ["
    for ok in ("fees/atm.html]", "cards/lost-card.md, fees/atm.html]", "]"):
        fn = GroundedDecoding(tok, len(prompt), [DOCS], LABELS, [tok.eos_token_id])
        assert _spell(tok, fn, prompt, head, ok), ok
    for bad in ("guides/other.md]", "fees/atm.md]", "fees/atm.html, fees/atm.html]"):
        fn = GroundedDecoding(tok, len(prompt), [DOCS], LABELS, [tok.eos_token_id])
        assert not _spell(tok, fn, prompt, head, bad), bad
    fn = GroundedDecoding(tok, len(prompt), [DOCS], LABELS, [tok.eos_token_id])
    assert _allowed(fn, tok, prompt, head + "fees/atm.html]") == {tok.eos_token_id}


def test_each_row_of_a_batch_cites_only_its_own_documents(tok) -> None:
    prompt = _ids(tok, "### Customer: hi")
    fn = GroundedDecoding(tok, len(prompt), [["cards/lost-card.md"], ["fees/atm.html"]], None, [tok.eos_token_id])
    head = _ids(tok, "sources: [")
    first_0 = set(fn(0, torch.tensor(prompt + head)))
    first_1 = set(fn(1, torch.tensor(prompt + head)))
    assert _ids(tok, "cards")[0] in first_0 and _ids(tok, "cards")[0] not in first_1
    assert _ids(tok, "fees")[0] in first_1 and _ids(tok, "fees")[0] not in first_0


def test_without_labels_the_intent_is_free(tok) -> None:
    prompt = _ids(tok, "### Customer: hi")
    fn = GroundedDecoding(tok, len(prompt), [DOCS], None, [tok.eos_token_id])
    assert _allowed(fn, tok, prompt, "intent:") == set(range(len(tok)))
