"""Queries longer than the embedder reads: split into parts that fit, never cut off silently.

A sentence model reads at most its window of tokens (MiniLM-L6: 256, from the model folder's
`sentence_bert_config.json`) and drops the rest without a word; a long customer request then loses its tail,
often where the question is. `split_query` cuts a query at sentence ends into parts within the window (a sentence
longer than the window is cut into windows of tokens), so every word of it is embedded. The retriever ranks each
part and keeps, for every chunk, its best similarity to any part (`retrieval.long_query`).

`sentences` mode ranks each sentence apart (`retrieval.sentences_min`: only in a query of at least that many
sentences; fewer, the query is embedded whole, split only if over the window). Two sentences are often one request
("I turned on magnetic stripe payments. Will they stay on permanently?"), which apart lose their context; several
are often several requests (bench/README.md, long queries, measures both).
"""

from __future__ import annotations

import re
from typing import Any

_BOUNDARY = re.compile(r"(?<=[.!?;])\s+|\s*\n\s*")
# a period after these (or after a single letter: "y. pestis", "J. Smith") ends no sentence
_ABBREVIATIONS = {"mr", "mrs", "ms", "dr", "st", "mt", "prof", "jr", "sr", "vs", "etc", "e.g", "i.e", "no", "inc",
                  "ltd", "co", "fig", "approx", "ca"}  # fmt: skip
MIN_PART_TOKENS = 6  # `sentences` mode: a shorter sentence ("Hi there.", "Thanks!") joins the next one


class QuerySplitter:
    """Splits query texts with the embedder's own tokenizer and window (tokens, special tokens included)."""

    def __init__(self, tokenizer: Any, window: int, mode: str, min_sentences: int = 1) -> None:
        self.tokenizer, self.mode, self.min_sentences = tokenizer, mode, min_sentences
        self.budget = max(1, window - int(tokenizer.num_special_tokens_to_add(pair=False)))

    def lengths(self, texts: list[str]) -> list[int]:
        """Tokens of each text, without special tokens and untruncated."""
        ids = self.tokenizer(texts, add_special_tokens=False, return_attention_mask=False,
                             return_token_type_ids=False, verbose=False)["input_ids"]  # fmt: skip
        return [len(x) for x in ids]

    def split(self, text: str) -> list[str]:
        """The parts of `text` to embed, in order: [text] itself when it fits (mode `split`) or when the mode is
        `truncate`."""
        if self.mode == "truncate" or not text.strip():
            return [text]
        if self.mode == "split" and self.lengths([text])[0] <= self.budget:
            return [text]
        sentences = split_sentences(text)
        pieces: list[tuple[str, int]] = []
        for sentence, n in zip(sentences, self.lengths(sentences), strict=True):
            pieces += self._cut(sentence) if n > self.budget else [(sentence, n)]
        if self.mode == "split":
            return _pack(pieces, self.budget) or [text]
        parts = _join_short(pieces, self.budget)
        if len(parts) < self.min_sentences:  # too few sentences to rank apart: the whole query, split if too long
            fits = self.lengths([text])[0] <= self.budget
            return [text] if fits else _pack(pieces, self.budget) or [text]
        return parts or [text]

    def fits(self, text: str) -> bool:
        return self.lengths([text])[0] <= self.budget

    def _cut(self, sentence: str) -> list[tuple[str, int]]:
        """A sentence longer than the budget, as consecutive windows of at most `budget` tokens."""
        enc = self.tokenizer(sentence, add_special_tokens=False, return_offsets_mapping=True, verbose=False)
        offsets = enc["offset_mapping"]
        out = []
        for start in range(0, len(offsets), self.budget):
            span = offsets[start : start + self.budget]
            out.append((sentence[span[0][0] : span[-1][1]], len(span)))
        return out


def split_sentences(text: str) -> list[str]:
    """The sentences of `text`: cut after . ! ? ; and at line breaks; a period ends a sentence only before a
    capital, a digit or a quote, and never after an abbreviation or a single letter."""
    out, start = [], 0
    for m in _BOUNDARY.finditer(text):
        before, after = text[start : m.start()], text[m.end() : m.end() + 1]
        if "\n" not in m.group() and before.endswith("."):
            word = before.rsplit(None, 1)[-1].rstrip(".").lower() if before.strip() else ""
            if word in _ABBREVIATIONS or len(word) <= 1 or not (after.isupper() or after.isdigit() or after in "\"'("):
                continue
        out.append(before)
        start = m.end()
    out.append(text[start:])
    return [x for x in out if x.strip()]


def _pack(pieces: list[tuple[str, int]], budget: int) -> list[str]:
    """Consecutive pieces joined into as few parts as fit the budget."""
    parts: list[str] = []
    current: list[str] = []
    used = 0
    for text, n in pieces:
        if current and used + n > budget:
            parts.append(" ".join(current))
            current, used = [], 0
        current.append(text)
        used += n
    if current:
        parts.append(" ".join(current))
    return parts


def _join_short(pieces: list[tuple[str, int]], budget: int) -> list[str]:
    """One part per sentence; a sentence under MIN_PART_TOKENS joins the next (the last joins the one before)."""
    parts: list[tuple[str, int]] = []
    carry, carried = "", 0
    for text, n in pieces:
        text, n = (f"{carry} {text}", carried + n) if carry else (text, n)
        if n < MIN_PART_TOKENS:
            carry, carried = text, n
            continue
        parts.append((text, n))
        carry, carried = "", 0
    if carry:
        if parts and parts[-1][1] + carried <= budget:
            parts[-1] = (f"{parts[-1][0]} {carry}", parts[-1][1] + carried)
        else:
            parts.append((carry, carried))
    return [text for text, _ in parts]
