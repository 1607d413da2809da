"""BatchStreamer: each row's pieces add up to exactly what the generator returns for it (its decoded tokens,
stripped), pieces leave as soon as they cannot change, and one failing listener loses only its own stream."""

from __future__ import annotations

import pytest

from components.behaviour.token_stream import BatchStreamer, stable_text

PAD = 0
VOCAB = {PAD: "", 1: " ", 2: "Freeze", 3: " it", 4: "\n", 5: ".", 6: "\xe2", 7: "\x82\xac"}  # 6+7: "€" in two bytes


class Tokenizer:
    all_special_ids = (PAD,)

    def decode(self, ids: list[int], skip_special_tokens: bool = True) -> str:
        assert skip_special_tokens
        raw = "".join(VOCAB[i] for i in ids if i != PAD).encode("latin-1")
        return raw.decode("utf-8", errors="replace")


class Tensor(list):  # what `generate` hands a streamer: `.tolist()` of a (batch,) or (batch, width) tensor
    def tolist(self) -> list:
        return list(self)


def _stream(steps: list[list[int]], rows: int) -> tuple[list[list[str]], list[str]]:
    """Run the streamer over `steps` (one token per row each); (pieces per row, final text per row)."""
    pieces: list[list[str]] = [[] for _ in range(rows)]
    streamer = BatchStreamer(Tokenizer(), [got.append for got in pieces])
    streamer.put(Tensor([[9, 9]] * rows))  # the prompts: never streamed
    for step in steps:
        streamer.put(Tensor(step))
    streamer.end()
    tok = Tokenizer()
    finals = [tok.decode([step[r] for step in steps]).strip() for r in range(rows)]
    return pieces, finals


def test_each_row_gets_its_own_text_piece_by_piece_and_the_pieces_add_up_to_its_answer() -> None:
    steps = [[1, 2], [2, 3], [3, 5], [1, PAD], [5, PAD], [4, PAD]]  # row 1 ends early: padded
    pieces, finals = _stream(steps, 2)
    assert ["".join(p) for p in pieces] == finals == ["Freeze it .", "Freeze it."]
    assert pieces[0] == ["Freeze", " it", " ."]  # leading whitespace dropped; a trailing one waits for its text
    assert pieces[1] == ["Freeze", " it", "."]


def test_an_incomplete_character_waits_for_its_last_byte() -> None:
    pieces, finals = _stream([[2], [1], [6], [7], [5]], 1)
    assert pieces[0] == ["Freeze", " €", "."] and "".join(pieces[0]) == finals[0]
    assert stable_text(" a\n\ufffd") == "a"


def test_text_held_back_at_the_end_is_sent_when_the_batch_ends() -> None:
    pieces, finals = _stream([[2], [6]], 1)  # ends inside a character: the final text has U+FFFD
    assert "".join(pieces[0]) == finals[0] == "Freeze\ufffd"


def test_rows_without_a_listener_cost_nothing_and_a_failing_listener_stops_only_its_own_stream() -> None:
    got: list[str] = []

    def broken(piece: str) -> None:
        raise RuntimeError("client gone")

    streamer = BatchStreamer(Tokenizer(), [None, broken, got.append])
    streamer.put(Tensor([[9]] * 3))
    for step in ([2, 2, 2], [3, 3, 3]):
        streamer.put(Tensor(step))
    streamer.end()
    assert "".join(got) == "Freeze it"
    assert streamer.rows[0].ids == [2, 3] and streamer.rows[1].listener is None


@pytest.mark.parametrize("width", [1, 2])
def test_several_tokens_per_row_in_one_step_are_taken_in_order(width: int) -> None:
    got: list[str] = []
    streamer = BatchStreamer(Tokenizer(), [got.append])
    streamer.put(Tensor([[9]]))
    tokens = [2, 3, 5, 1]
    for i in range(0, len(tokens), width):
        streamer.put(Tensor([tokens[i : i + width]] if width > 1 else tokens[i : i + 1]))
    streamer.end()
    assert "".join(got) == "Freeze it."
