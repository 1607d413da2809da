"""Grounded decoding: the assistant can only cite documents it was given, and only name labels that exist.

Generation is free except in two places of a line contract, after the markers it declares (`grounding` in
data/behaviour/contract.yaml). After `intent:` the tokens must spell one of
the labels and then ` |`; after `sources: [` they must spell a list of the documents retrieved for that prompt
(`a]`, `a, b]`, ... or `]` for none) and then end. Everything else (whether the line starts at all, which label,
which of the retrieved documents, whether to refuse, the answer text) is the model's own choice, so a model that
has not learned the contract still fails it; one that has cannot invent a source or a label.

Used through `prefix_allowed_tokens_fn` of `transformers`' `generate`, for any causal LM and tokenizer: the
allowed continuations are tokenized once per prompt and walked as a trie of token ids.
"""

from __future__ import annotations

from collections.abc import Sequence
from itertools import permutations
from typing import Any

INTENT_MARKER = "intent:"
SOURCES_MARKER = "sources: ["
_END = -1  # trie key: a complete continuation ends here


def _trie(sequences: list[list[int]]) -> dict:
    root: dict = {}
    for seq in sequences:
        node = root
        for t in seq:
            node = node.setdefault(t, {})
        node[_END] = {}
    return root


def source_lists(docs: Sequence[str], most: int = 3) -> list[str]:
    """Every way to cite up to `most` of the retrieved documents, in any order, closed by `]`."""
    unique = list(dict.fromkeys(docs))
    out = ["]"]
    for n in range(1, min(most, len(unique)) + 1):
        out += [", ".join(combo) + "]" for combo in permutations(unique, n)]
    return out


class GroundedDecoding:
    """`prefix_allowed_tokens_fn` for one batch: row i may cite only `sources[i]`; labels are shared."""

    def __init__(self, tokenizer: Any, prompt_width: int, sources: Sequence[Sequence[str]],
                 labels: Sequence[str] | None, end_ids: Sequence[int], label_after: str | None = INTENT_MARKER,
                 sources_after: str | None = SOURCES_MARKER) -> None:  # fmt: skip
        self.markers = {m: kind for m, kind in ((label_after, "label"), (sources_after, "sources")) if m}
        self.tokenizer = tokenizer
        self.width = prompt_width
        self.end_ids = list(end_ids)
        self.vocab = list(range(len(tokenizer)))
        self.sources = [_trie([self._ids(s) for s in source_lists(docs)]) for docs in sources]
        self.labels = _trie([self._ids(f" {label} |") for label in labels]) if labels else None
        self._marks: dict[int, list[tuple[int, str]]] = {}

    def _ids(self, text: str) -> list[int]:
        return list(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    def __call__(self, batch_id: int, input_ids: Any) -> list[int]:
        generated = input_ids[self.width :].tolist()
        marks = self._find_marks(batch_id, generated)
        if not marks:
            return self.vocab
        start, marker = marks[-1]
        kind = self.markers[marker]
        trie = self.sources[batch_id] if kind == "sources" else self.labels
        if trie is None:
            return self.vocab
        node = trie
        for t in generated[start:]:
            if t not in node:  # the constrained part is over (a label and ` |` were written): free again
                return self.end_ids if kind == "sources" else self.vocab
            node = node[t]
        allowed = [t for t in node if t != _END]
        if _END in node:
            if kind == "sources":  # the list is closed: the line, and the answer, end here
                return self.end_ids or allowed
            return self.vocab
        return allowed

    def _find_marks(self, batch_id: int, generated: list[int]) -> list[tuple[int, str]]:
        """(token index right after a marker, marker) for the first label and sources marker of the row."""
        marks = self._marks.setdefault(batch_id, [])
        wanted = [m for m in self.markers if m not in {kind for _, kind in marks}]
        if not wanted:
            return marks
        text = self._decode(generated)
        for marker in (m for m in wanted if m in text):  # called every step, so the marker is usually at the end
            end = len(generated)
            if not text.endswith(marker):
                end = next(k for k in range(1, len(generated) + 1) if marker in self._decode(generated[:k]))
            marks.append((end, marker))
        marks.sort()
        return marks

    def _decode(self, ids: list[int]) -> str:
        return str(self.tokenizer.decode(ids, skip_special_tokens=True))
