"""The disk spool both the feedback and the traces wait in: whole records, oldest first, rejects kept aside, one
delivery at a time."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from components.tracking.spool import Spool


def test_records_are_whole_files_named_oldest_first_and_found_by_key(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "queue")
    assert spool.pending() == [] and spool.depth() == 0 and not spool.holds("a")
    first = spool.put("a", {"n": 1})
    second = spool.put("b", {"n": 2})
    assert spool.pending() == [first, second] and first.name.endswith("-a.json")
    assert [json.loads(p.read_text()) for p in spool.pending()] == [{"n": 1}, {"n": 2}]
    assert spool.holds("b") and not spool.holds("c") and spool.depth() == 2
    assert not list((tmp_path / "queue").glob("*.tmp"))  # written aside, then renamed into the queue


def test_a_rejected_record_leaves_the_queue_with_its_reason(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "queue", rejected=tmp_path / "rejected")
    path = spool.put("a", {"n": 1})
    spool.reject(path, {"n": 1, "reason": "no such trace"})
    assert spool.depth() == 0
    assert json.loads((tmp_path / "rejected" / path.name).read_text())["reason"] == "no such trace"
    with pytest.raises(ValueError, match="keeps no rejected records"):
        Spool(tmp_path / "other").reject(path, {})


def test_records_are_read_oldest_first_and_an_unreadable_one_never_holds_up_the_rest(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "queue", rejected=tmp_path / "rejected")
    first = spool.put("a", {"n": 1})
    bad = spool.put("b", {"n": 2})
    bad.write_text('{"n": ', encoding="utf-8")  # cut short (a disk that lied about its fsync)
    spool.put("c", {"n": 3})
    read = [(path.name, record) for path, record in spool.records()]
    assert read == [(first.name, {"n": 1}), (bad.name, None), (spool.pending()[-1].name, {"n": 3})]
    assert "unreadable spool file" in json.loads((tmp_path / "rejected" / bad.name).read_text())["reason"]
    assert spool.depth() == 2  # the bad one is out of the queue, the others wait for their delivery
    assert list(spool.records(until=0.0)) == []  # a deadline already passed: nothing more is read


def test_one_holder_of_the_lock_at_a_time(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "queue")
    with spool.locked(wait=True) as held:
        assert held
        with Spool(tmp_path / "queue").locked(wait=False) as again:  # another open file description: refused
            assert not again
    with spool.locked(wait=False) as held:
        assert held
