"""Streaming a batched generation: each row's text handed to its own listener as the tokens are generated.

`transformers`' `generate(streamer=...)` calls `put(ids)` once with the prompts (batch x width), then once per step
with the new token of every row (batch,), and `end()` when the batch is done. `BatchStreamer` implements that
interface (transformers' `BaseStreamer`, duck-typed: no transformers import here) for a whole batch and splits each
step to the rows' listeners, so concurrent requests answered in one batch each receive their own text.

What a listener receives adds up to exactly what the generator returns for its row
(`tokenizer.decode(row, skip_special_tokens=True).strip()`): each step decodes the row's tokens so far and hands on
only the part that can no longer change: leading whitespace is dropped, trailing whitespace waits for the text that
follows it (the answer is stripped, and a tokenizer's clean-up may join it to the next token), and so does an
incomplete character (a byte-level token can end inside a UTF-8 sequence, decoded as U+FFFD).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import Any

Listener = Callable[[str], None]  # receives a row's next piece of text, on the generating thread
log = logging.getLogger("ragloop.stream")


def stable_text(text: str) -> str:
    """The part of a row's decoded text so far that later tokens cannot change (module docstring)."""
    return text.lstrip().rstrip("\ufffd").rstrip()


class _Row:
    def __init__(self, tokenizer: Any, listener: Listener | None, special: frozenset[int]) -> None:
        self.tokenizer, self.listener, self.special = tokenizer, listener, special
        self.ids: list[int] = []
        self.sent = ""

    def add(self, new: list[int]) -> None:
        self.ids.extend(new)
        if self.listener is not None and not self.special.issuperset(new):  # special tokens decode to nothing
            self._send(stable_text(self._decoded()))

    def finish(self) -> None:
        if self.listener is None:
            return
        final = self._decoded().strip()
        if not final.startswith(self.sent):  # a tokenizer whose decoding of a prefix is no prefix: never seen so far
            log.warning("a streamed answer parted from its final text after %d characters", len(self.sent))
            return
        self._send(final)

    def _decoded(self) -> str:
        return str(self.tokenizer.decode(self.ids, skip_special_tokens=True))

    def _send(self, text: str) -> None:
        if len(text) <= len(self.sent) or not text.startswith(self.sent) or self.listener is None:
            return
        piece, self.sent = text[len(self.sent) :], text
        try:
            self.listener(piece)
        except Exception:  # a listener that fails (its client is gone) loses its stream, never the batch
            log.exception("a stream listener failed; its row is no longer streamed")
            self.listener = None


class BatchStreamer:
    """`generate(streamer=BatchStreamer(tokenizer, listeners))`: row i's text goes to `listeners[i]` (None: not
    streamed) as it is generated."""

    def __init__(self, tokenizer: Any, listeners: Sequence[Listener | None]) -> None:
        special = frozenset(getattr(tokenizer, "all_special_ids", ()))
        self.rows = [_Row(tokenizer, listener, special) for listener in listeners]
        self._prompt_seen = False

    def put(self, value: Any) -> None:
        if not self._prompt_seen:  # the first call is the prompts: nothing generated yet
            self._prompt_seen = True
            return
        ids = value.tolist()
        for row, new in zip(self.rows, ids, strict=True):
            row.add(new if isinstance(new, list) else [new])

    def end(self) -> None:
        for row in self.rows:
            row.finish()
