"""The behaviour suite: the committed gate/train files, and every way load_cases refuses a bad file."""

from __future__ import annotations

import hashlib
import importlib.util
import json
import re
from collections import Counter
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from components.behaviour.suite import (
    OUT_OF_SCOPE,
    Case,
    SuiteError,
    check_disjoint,
    load_cases,
    load_labels,
    suite_hash,
)
from components.files import GATE_CASES, LABELS_FILE, TRAIN_CASES
from components.hashing import normalise, text_hash

REPO = Path(__file__).resolve().parents[2]
SUITE = REPO / "data" / "behaviour"
DOCS = REPO / "data" / "docs"
LABELS = {"fees", "card_lost", OUT_OF_SCOPE}


# ---------------------------------------------------------------- the committed files


@pytest.fixture(scope="module")
def labels() -> dict[str, str]:
    return load_labels(SUITE / LABELS_FILE)


@pytest.fixture(scope="module")
def gate(labels: dict[str, str]) -> list[Case]:
    return load_cases(SUITE / GATE_CASES, set(labels), DOCS)


@pytest.fixture(scope="module")
def train(labels: dict[str, str]) -> list[Case]:
    return load_cases(SUITE / TRAIN_CASES, set(labels), DOCS)


def test_labels_have_descriptions_and_include_out_of_scope(labels: dict[str, str]) -> None:
    assert len(labels) == 16
    assert OUT_OF_SCOPE in labels
    assert all(desc.strip() for desc in labels.values())


def test_committed_gate_and_train_are_disjoint(gate: list[Case], train: list[Case]) -> None:
    check_disjoint(gate, train)
    assert not {c.question_hash for c in gate} & {c.question_hash for c in train}


def test_gate_size_and_coverage(gate: list[Case]) -> None:
    assert len(gate) >= 170
    per_intent = Counter(c.intent for c in gate)
    assert per_intent[OUT_OF_SCOPE] >= 25
    assert sum(1 for intent, n in per_intent.items() if intent != OUT_OF_SCOPE and n >= 8) >= 10
    assert all(c.id.startswith("gate-") for c in gate)


def test_train_size_and_coverage(train: list[Case], labels: dict[str, str]) -> None:
    assert len(train) >= 350
    per_intent = Counter(c.intent for c in train)
    assert set(per_intent) == set(labels)
    assert per_intent[OUT_OF_SCOPE] >= 40
    assert all(c.id.startswith("train-") for c in train)


def test_out_of_scope_cases_have_no_answer_and_no_docs(gate: list[Case], train: list[Case]) -> None:
    for case in gate + train:
        assert case.in_scope == bool(case.gold_docs) == (case.answer is not None)


def test_paraphrases_of_one_seed_stay_on_one_side(gate: list[Case], train: list[Case]) -> None:
    side = {normalise(c.question): "gate" for c in gate} | {normalise(c.question): "train" for c in train}
    seeds = [json.loads(line) for line in (SUITE / "seeds.jsonl").read_text(encoding="utf-8").splitlines()]
    for seed in seeds:
        sides = {side[normalise(q)] for q in [seed["question"], *seed["paraphrases"]]}
        assert sides == {seed["split"]}, seed["seed"]


def _make_suite() -> ModuleType:
    spec = importlib.util.spec_from_file_location("make_suite", SUITE / "make_suite.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_committed_files_are_what_the_seeds_give() -> None:
    make_suite = _make_suite()
    built = make_suite.build(make_suite.read_seeds(SUITE / "seeds.jsonl"))
    for split in ("gate", "train"):
        assert make_suite.render(built[split]) == (SUITE / f"{split}.jsonl").read_text(encoding="utf-8"), split


def test_suite_hash_is_the_md5_of_the_bytes(tmp_path: Path) -> None:
    f = tmp_path / "cases.jsonl"
    f.write_bytes(b"abc")
    assert suite_hash(f) == "900150983cd24fb0d6963f7d28e17f72"
    gate_file = SUITE / GATE_CASES
    assert suite_hash(gate_file) == hashlib.md5(gate_file.read_bytes()).hexdigest()
    with pytest.raises(SuiteError, match="cannot read"):
        suite_hash(tmp_path / "missing.jsonl")


# ---------------------------------------------------------------- normalise / check_disjoint


def test_normalise_ignores_case_punctuation_and_spacing() -> None:
    assert normalise("  How do I  activate my NEW card?! ") == "how do i activate my new card"
    assert normalise("What's the fee?") == normalise("whats   the FEE")
    assert text_hash("How much is Plus?") == text_hash("how much is plus")
    assert text_hash("How much is Plus?") == hashlib.sha256(b"how much is plus").hexdigest()
    assert text_hash("How much is Plus?") != text_hash("How much is Premium?")


def _case(case_id: str, question: str) -> Case:
    return Case(id=case_id, question=question, intent="fees", answer="EUR 1.", gold_docs=("fees/x.md",))


def test_check_disjoint_catches_an_overlap_up_to_case_punctuation_and_whitespace() -> None:
    gate = [_case("gate-0001", "How much does Plus cost per year?"), _case("gate-0002", "Is SEPA free?")]
    train = [_case("train-0001", "how much  does plus cost, per year"), _case("train-0002", "Is SWIFT free?")]
    with pytest.raises(SuiteError) as info:
        check_disjoint(gate, train)
    message = str(info.value)
    assert message.startswith("1 gate question(s)")
    assert "How much does Plus cost per year?" in message
    assert "gate-0001" in message and "train-0001" in message
    check_disjoint(gate[1:], train)  # no overlap: no error


def test_check_disjoint_lists_at_most_five_and_counts_all() -> None:
    gate = [_case(f"gate-{i}", f"Question number {i}?") for i in range(8)]
    train = [_case(f"train-{i}", f"QUESTION number {i}") for i in range(8)]
    with pytest.raises(SuiteError) as info:
        check_disjoint(gate, train)
    message = str(info.value)
    assert message.startswith("8 gate question(s)")
    assert "Question number 4?" in message and "Question number 5?" not in message
    assert "and 3 more" in message


# ---------------------------------------------------------------- load_cases error paths

GOOD: dict[str, Any] = {
    "id": "gate-0001",
    "question": "How much does Plus cost per year?",
    "intent": "fees",
    "answer": "EUR 49.90.",
    "gold_docs": ["fees/fee-schedule-plus.html"],
}
OOS: dict[str, Any] = {"id": "gate-0002", "question": "Do you offer mortgages?", "intent": OUT_OF_SCOPE}
OOS |= {"answer": None, "gold_docs": []}


def _write(tmp_path: Path, *lines: str | dict[str, Any]) -> Path:
    f = tmp_path / "cases.jsonl"
    f.write_text("".join((x if isinstance(x, str) else json.dumps(x)) + "\n" for x in lines), encoding="utf-8")
    return f


def _with(base: dict[str, Any], **changes: Any) -> dict[str, Any]:
    return {**base, **changes}


def _without(base: dict[str, Any], field: str) -> dict[str, Any]:
    return {k: v for k, v in base.items() if k != field}


def test_a_valid_file_loads(tmp_path: Path) -> None:
    f = _write(tmp_path, GOOD, "", OOS)  # blank lines are skipped
    cases = load_cases(f, LABELS, DOCS)
    assert cases == [
        Case("gate-0001", "How much does Plus cost per year?", "fees", "EUR 49.90.", ("fees/fee-schedule-plus.html",)),
        Case("gate-0002", "Do you offer mortgages?", OUT_OF_SCOPE, None, ()),
    ]
    assert cases[0].in_scope and not cases[1].in_scope


@pytest.mark.parametrize(
    ("bad", "field", "expected"),
    [
        ('{"id": "gate-0009", "question": ', None, "invalid JSON"),
        ('["a", "list"]', None, "expected a JSON object"),
        (_without(GOOD, "id"), "id", "missing"),
        (_without(GOOD, "question"), "question", "missing"),
        (_without(GOOD, "intent"), "intent", "missing"),
        (_without(GOOD, "answer"), "answer", "missing"),
        (_without(GOOD, "gold_docs"), "gold_docs", "missing"),
        (_with(GOOD, gold_doc="x"), "gold_doc", "unexpected"),
        (_with(GOOD, id=7), "id", "expected a non-empty one-line string"),
        (_with(GOOD, id=""), "id", "expected a non-empty one-line string"),
        (_with(GOOD, question="   "), "question", "expected a non-empty one-line string"),
        (_with(GOOD, question="Is it\nfree?"), "question", "one-line"),
        (_with(GOOD, question="?!"), "question", "only punctuation"),
        (_with(GOOD, intent="fee"), "intent", "expected one of ['card_lost', 'fees', 'out_of_scope'], got 'fee'"),
        (_with(GOOD, intent=None), "intent", "expected one of"),
        (_with(GOOD, answer=None), "answer", "non-empty one-line string for intent 'fees'"),
        (_with(GOOD, answer="EUR 5 | EUR 6"), "answer", "no '|'"),
        (_with(OOS, answer="I don't know"), "answer", "expected null for intent 'out_of_scope'"),
        (_with(GOOD, gold_docs="fees/fee-schedule-plus.html"), "gold_docs", "expected a list of document paths"),
        (_with(GOOD, gold_docs=[3]), "gold_docs", "expected a list of document paths"),
        (_with(GOOD, gold_docs=[]), "gold_docs", "expected at least one document for intent 'fees'"),
        (_with(OOS, gold_docs=["fees/fee-schedule-plus.html"]), "gold_docs", "expected [] for intent 'out_of_scope'"),
        (_with(GOOD, gold_docs=["fees/nope.md"]), "gold_docs", "'fees/nope.md' does not exist under"),
        (_with(GOOD, gold_docs=["/etc/passwd"]), "gold_docs", "relative to the docs folder"),
        (_with(GOOD, gold_docs=["../README.md"]), "gold_docs", "relative to the docs folder"),
        (_with(GOOD, gold_docs=["./fees/fee-schedule-plus.html"]), "gold_docs", "relative to the docs folder"),
        (_with(GOOD, gold_docs=["fees/a,b.md"]), "gold_docs", "without ','"),
        (_with(GOOD, gold_docs=["fees/fee-schedule-plus.html"] * 2), "gold_docs", "distinct"),
    ],
)
def test_a_bad_line_names_the_file_the_line_and_the_field(
    tmp_path: Path, bad: str | dict[str, Any], field: str | None, expected: str
) -> None:
    f = _write(tmp_path, OOS, bad)  # the bad case is on line 2
    with pytest.raises(SuiteError) as info:
        load_cases(f, LABELS, DOCS)
    message = str(info.value)
    assert message.startswith(f"{f}:2: ")
    if field is not None:
        assert f"field '{field}'" in message
    assert expected in message


def test_a_duplicate_id_names_both_lines(tmp_path: Path) -> None:
    f = _write(tmp_path, GOOD, OOS, _with(OOS, id="gate-0001", question="Do you sell insurance?"))
    with pytest.raises(SuiteError) as info:
        load_cases(f, LABELS)
    assert str(info.value).startswith(f"{f}:3: field 'id': duplicate id 'gate-0001' (first on line 1)")


def test_a_question_repeated_after_normalisation_is_refused(tmp_path: Path) -> None:
    f = _write(tmp_path, GOOD, _with(GOOD, id="gate-0003", question="how much does PLUS cost, per year"))
    with pytest.raises(SuiteError) as info:
        load_cases(f, LABELS)
    assert str(info.value).startswith(f"{f}:2: field 'question': same question as line 1")


def test_gold_docs_are_only_checked_on_disk_with_a_docs_root(tmp_path: Path) -> None:
    f = _write(tmp_path, _with(GOOD, gold_docs=["fees/not-there.md"]))
    assert load_cases(f, LABELS)[0].gold_docs == ("fees/not-there.md",)
    with pytest.raises(SuiteError, match="does not exist"):
        load_cases(f, LABELS, DOCS)


def test_an_empty_or_missing_file_is_refused(tmp_path: Path) -> None:
    empty = _write(tmp_path, "")
    with pytest.raises(SuiteError, match=f"^{re.escape(str(empty))}: no cases"):
        load_cases(empty, LABELS)
    with pytest.raises(SuiteError, match="cannot read"):
        load_cases(tmp_path / "missing.jsonl", LABELS)


# ---------------------------------------------------------------- load_labels


def test_load_labels_reads_both_shapes(tmp_path: Path) -> None:
    listed = tmp_path / "listed.json"
    listed.write_text(json.dumps({"labels": [{"label": "fees", "description": "Fees."}]}))
    flat = tmp_path / "flat.json"
    flat.write_text(json.dumps({"fees": "Fees."}))
    assert load_labels(listed) == load_labels(flat) == {"fees": "Fees."}


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("{not json", "invalid JSON"),
        ("[1, 2]", "expected a JSON object"),
        ('{"labels": "fees"}', "field 'labels'"),
        ('{"labels": [{"label": "fees"}]}', "labels[0]"),
        ('{"labels": [{"label": "fees", "description": "a"}, {"label": "fees", "description": "b"}]}', "duplicate"),
        ('{"labels": []}', "no labels"),
        ('{"fees": 3}', "string description"),
    ],
)
def test_bad_label_files_are_refused(tmp_path: Path, text: str, expected: str) -> None:
    f = tmp_path / LABELS_FILE
    f.write_text(text)
    with pytest.raises(SuiteError) as info:
        load_labels(f)
    assert str(info.value).startswith(f"{f}: ")
    assert expected in str(info.value)


def test_the_loop_loads_a_suite_whose_gold_document_was_deleted(tmp_path: Path) -> None:
    """A deleted document is the `missing` route's to report (the evaluation names it), not an error that stops
    every evaluation: the loop's suite loads without the on-disk check; the fine-tune leaves such cases out."""
    from components.behaviour.loop import load_suite
    from components.config import load_params

    behaviour = tmp_path / "behaviour"
    behaviour.mkdir()
    (behaviour / LABELS_FILE).write_text(json.dumps({label: label for label in LABELS}))
    case = {"id": "g1", "question": "How much is an ATM withdrawal?", "intent": "fees", "answer": "2 EUR",
            "gold_docs": ["fees/deleted.md"]}  # fmt: skip
    (behaviour / GATE_CASES).write_text(json.dumps(case) + "\n")
    (behaviour / TRAIN_CASES).write_text(json.dumps({**case, "id": "t1", "question": "ATM fee?"}) + "\n")
    (tmp_path / "docs").mkdir()
    (tmp_path / "params.yaml").write_text(json.dumps({"paths": {"docs": "docs", "behaviour": "behaviour"}}))
    gate, train = load_suite(load_params(tmp_path / "params.yaml"))
    assert [c.gold_docs for c in gate + train] == [("fees/deleted.md",), ("fees/deleted.md",)]
    # a person checking the suite (load_cases with the docs folder) still gets the strict error
    with pytest.raises(SuiteError, match=re.escape("'fees/deleted.md' does not exist under")):
        load_cases(behaviour / GATE_CASES, LABELS, tmp_path / "docs")
