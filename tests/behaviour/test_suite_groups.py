"""The optional `group` field of a case: the committed files carry the seed of every case, the loader checks
the field's type and defaults it to the case's id (an ungrouped case is its own unit of the paired tests)."""

from __future__ import annotations

import importlib.util
import json
from collections import defaultdict
from pathlib import Path
from typing import Any

import pytest

from components.behaviour.suite import OUT_OF_SCOPE, Case, SuiteError, load_cases, load_labels, normalise
from components.files import LABELS_FILE

REPO = Path(__file__).resolve().parents[2]
SUITE = REPO / "data" / "behaviour"
DOCS = REPO / "data" / "docs"
LABELS = {"fees", OUT_OF_SCOPE}
GOOD = {"id": "gate-0001", "question": "How much does Plus cost per year?", "intent": "fees",
        "answer": "EUR 49.90.", "gold_docs": ["fees/fee-schedule-plus.html"]}  # fmt: skip


def _write(tmp_path: Path, *rows: dict[str, Any]) -> Path:
    path = tmp_path / "cases.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def _seeds() -> list[dict]:
    return [json.loads(line) for line in (SUITE / "seeds.jsonl").read_text(encoding="utf-8").splitlines() if line]


@pytest.mark.parametrize("split", ["gate", "train"])
def test_every_committed_case_carries_its_seed_as_group(split: str) -> None:
    labels = set(load_labels(SUITE / LABELS_FILE))
    cases = load_cases(SUITE / f"{split}.jsonl", labels, DOCS)
    raw = [json.loads(line) for line in (SUITE / f"{split}.jsonl").read_text(encoding="utf-8").splitlines()]
    assert all("group" in r for r in raw), "make_suite.py writes the group of every case"
    seeds = {s["seed"]: s for s in _seeds() if s["split"] == split}
    members: dict[str, list[Case]] = defaultdict(list)
    for case in cases:
        members[case.group].append(case)
    assert set(members) == set(seeds)
    for seed_id, group in members.items():
        seed = seeds[seed_id]
        assert {c.intent for c in group} == {seed["intent"]}
        assert normalise(seed["question"]) in {normalise(c.question) for c in group}
        assert len(group) == 2 + len(seed["paraphrases"])  # the question, its rewordings, one framed wording


def test_make_suite_check_passes_on_the_committed_files() -> None:
    spec = importlib.util.spec_from_file_location("make_suite", SUITE / "make_suite.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert module.main(["--check"]) == 0


def test_a_case_without_group_is_its_own_group(tmp_path: Path) -> None:
    (case,) = load_cases(_write(tmp_path, GOOD), LABELS, DOCS)
    assert case.group == "gate-0001"
    assert Case("x-1", "Is it free?", "fees", "Yes.", ("fees/a.md",)).group == "x-1"


def test_a_declared_group_is_kept(tmp_path: Path) -> None:
    other = {**GOOD, "id": "gate-0002", "question": "What does Plus cost a year?", "group": "s007"}
    cases = load_cases(_write(tmp_path, {**GOOD, "group": "s007"}, other), LABELS, DOCS)
    assert [c.group for c in cases] == ["s007", "s007"]


@pytest.mark.parametrize("bad", [7, None, "", "   ", "s0\n07", ["s007"], {"seed": "s007"}])
def test_a_bad_group_names_the_file_the_line_and_the_field(tmp_path: Path, bad: object) -> None:
    path = _write(tmp_path, {**GOOD, "group": bad})
    with pytest.raises(SuiteError) as info:
        load_cases(path, LABELS, DOCS)
    message = str(info.value)
    assert message.startswith(f"{path}:1: field 'group': expected a non-empty one-line string")


def test_an_unknown_field_still_lists_the_optional_group(tmp_path: Path) -> None:
    with pytest.raises(SuiteError, match=r"field 'groups': unexpected .* optionally \['group'[],]"):
        load_cases(_write(tmp_path, {**GOOD, "groups": "s007"}), LABELS, DOCS)
