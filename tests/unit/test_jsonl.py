"""The one JSON Lines reader: values with their line numbers, blank lines skipped, every problem named file:line."""

from __future__ import annotations

from pathlib import Path

import pytest

from components.jsonl import read_jsonl


class _Refused(ValueError):
    pass


def test_values_come_with_their_line_numbers_and_blank_lines_are_skipped(tmp_path: Path) -> None:
    path = tmp_path / "rows.jsonl"
    path.write_text('{"a": 1}\n\n   \n[2, 3]\n"x"\n', encoding="utf-8")
    assert list(read_jsonl(path)) == [(1, {"a": 1}), (4, [2, 3]), (5, "x")]


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b'{"a": 1}\n{"a": \n', r"rows\.jsonl:2: invalid JSON: Expecting value at column 7$"),
        (b'{"a": 1}\n\n{not json}\n', r"rows\.jsonl:3: invalid JSON: .* at column 2$"),
        (b'{"a": "\xff"}\n', r"rows\.jsonl: not UTF-8: "),
    ],
)
def test_a_bad_line_or_file_raises_the_callers_error_naming_file_and_line(
    tmp_path: Path, content: bytes, message: str
) -> None:
    path = tmp_path / "rows.jsonl"
    path.write_bytes(content)
    with pytest.raises(_Refused, match=message):
        list(read_jsonl(path, _Refused))


def test_a_missing_file_cannot_be_read(tmp_path: Path) -> None:
    with pytest.raises(_Refused, match=r"absent\.jsonl: cannot read: No such file or directory"):
        list(read_jsonl(tmp_path / "absent.jsonl", _Refused))
