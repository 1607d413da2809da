"""The behaviour suite: evaluation (gate) and training cases, their validation and their fingerprints.

A case file is JSON Lines, one object per line with exactly these fields:
    {"id": str, "question": str, "intent": label, "answer": str | null, "gold_docs": [doc path, ...]}
and optionally "group": str, shared by the cases that are wordings of one underlying question (make_suite.py
writes the seed's id); the paired tests count a group as one unit, and a case without one is its own group.
A contract's assertions may also read "facts" (a list of strings the answer must state), "tags" (a list of
strings its slices can select on) and "meta" (any JSON object, for a `python` assertion).
An in-scope case has a one-line answer and at least one gold document (a path relative to the docs folder);
an out-of-scope case has intent `out_of_scope`, answer null and no gold documents. See data/behaviour/README.md.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

from components.hashing import file_md5, normalise, text_hash
from components.jsonl import read_jsonl

OUT_OF_SCOPE = "out_of_scope"
CASE_FIELDS = ("id", "question", "intent", "answer", "gold_docs")
OPTIONAL_FIELDS = ("group", "facts", "tags", "meta")  # facts, tags, meta: what a contract's assertions may read
_MAX_LISTED = 5


class SuiteError(ValueError):
    """A case or label file that cannot be used, or a gate/train overlap; the message says where and why."""


@dataclass(frozen=True)
class Case:
    id: str
    question: str
    intent: str
    answer: str | None
    gold_docs: tuple[str, ...]
    group: str = ""  # the unit of the paired tests; empty: the case's own id
    extra: Mapping[str, Any] = field(default_factory=dict, compare=False, hash=False)  # facts, tags, meta

    def __post_init__(self) -> None:
        if not self.group:
            object.__setattr__(self, "group", self.id)

    @property
    def in_scope(self) -> bool:
        return self.intent != OUT_OF_SCOPE

    @property
    def question_hash(self) -> str:
        return text_hash(self.question)


def suite_hash(path: Path) -> str:
    """md5 (hex) of the file's bytes, the digest DVC records for a file out; SuiteError when it cannot be read."""
    try:
        return file_md5(Path(path))
    except OSError as exc:
        raise SuiteError(f"{path}: cannot read: {exc.strerror or exc}") from None


def load_labels(path: Path) -> dict[str, str]:
    """Label -> description, from {"labels": [{"label": ..., "description": ...}, ...]} or a flat mapping."""
    path = Path(path)
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise SuiteError(f"{path}: cannot read: {exc.strerror or exc}") from None
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise SuiteError(f"{path}: invalid JSON: {exc}") from None
    if isinstance(raw, dict) and "labels" in raw:
        entries = raw["labels"]
        if not isinstance(entries, list):
            raise SuiteError(f"{path}: field 'labels': expected a list of {{label, description}} objects")
        pairs: list[tuple[Any, Any]] = []
        for i, entry in enumerate(entries):
            if not isinstance(entry, dict) or "label" not in entry or "description" not in entry:
                raise SuiteError(f"{path}: labels[{i}]: expected an object with 'label' and 'description'")
            pairs.append((entry["label"], entry["description"]))
    elif isinstance(raw, dict):
        pairs = list(raw.items())
    else:
        raise SuiteError(f"{path}: expected a JSON object, got {type(raw).__name__}")
    labels: dict[str, str] = {}
    for label, description in pairs:
        if not isinstance(label, str) or not label.strip():
            raise SuiteError(f"{path}: label {label!r}: expected a non-empty string")
        if not isinstance(description, str):
            raise SuiteError(f"{path}: label {label!r}: expected a string description")
        if label in labels:
            raise SuiteError(f"{path}: label {label!r}: duplicate")
        labels[label] = description
    if not labels:
        raise SuiteError(f"{path}: no labels")
    return labels


def load_cases(path: Path, labels: set[str], docs_root: Path | None = None) -> list[Case]:
    """Every case of a JSONL file, validated line by line; the first problem raises SuiteError (file:line: field)."""
    cases: list[Case] = []
    first_id: dict[str, int] = {}
    first_question: dict[str, int] = {}
    for lineno, raw in read_jsonl(path, SuiteError):
        case = _parse_case(f"{path}:{lineno}", raw, labels, docs_root)
        if case.id in first_id:
            raise SuiteError(
                f"{path}:{lineno}: field 'id': duplicate id {case.id!r} (first on line {first_id[case.id]})"
            )
        key = normalise(case.question)
        if key in first_question:
            raise SuiteError(
                f"{path}:{lineno}: field 'question': same question as line {first_question[key]} after normalisation"
            )
        first_id[case.id] = lineno
        first_question[key] = lineno
        cases.append(case)
    if not cases:
        raise SuiteError(f"{path}: no cases")
    return cases


def check_disjoint(gate: list[Case], train: list[Case]) -> None:
    """Raise SuiteError when a gate question equals a training question after normalisation."""
    train_ids: dict[str, str] = {}
    for case in train:
        train_ids.setdefault(normalise(case.question), case.id)
    overlap = [(case, train_ids[key]) for case in gate if (key := normalise(case.question)) in train_ids]
    if overlap:
        listed = "; ".join(f"{case.question!r} ({case.id} = {train_id})" for case, train_id in overlap[:_MAX_LISTED])
        more = f"; and {len(overlap) - _MAX_LISTED} more" if len(overlap) > _MAX_LISTED else ""
        raise SuiteError(f"{len(overlap)} gate question(s) also in train after normalisation: {listed}{more}")


def check_questions_disjoint(gate: Mapping[str, str], train: list[tuple[str, str]]) -> None:
    """Raise SuiteError when a training question (text, where: "file:line") equals a gate question after
    normalisation; `gate` maps each gate question's normalised text to where it is. The first overlap is named."""
    for question, where in train:
        if (found := gate.get(normalise(question))) is not None:
            raise SuiteError(f"{where}: field 'question': {question!r} is a gate question ({found}): a model never "
                             "trains on what gates it")  # fmt: skip


def _parse_case(where: str, raw: Any, labels: set[str], docs_root: Path | None) -> Case:
    if not isinstance(raw, dict):
        raise SuiteError(f"{where}: expected a JSON object with fields {list(CASE_FIELDS)}, got {type(raw).__name__}")
    missing = [f for f in CASE_FIELDS if f not in raw]
    if missing:
        raise SuiteError(f"{where}: field {missing[0]!r}: missing (a case has fields {list(CASE_FIELDS)})")
    extra = sorted(set(raw) - set(CASE_FIELDS) - set(OPTIONAL_FIELDS))
    if extra:
        raise SuiteError(
            f"{where}: field {extra[0]!r}: unexpected (a case has fields {list(CASE_FIELDS)}, optionally "
            f"{list(OPTIONAL_FIELDS)})"
        )

    case_id = _text(where, "id", raw["id"])
    question = _text(where, "question", raw["question"])
    if not normalise(question):
        raise SuiteError(f"{where}: field 'question': expected words, got only punctuation {question!r}")
    intent = raw["intent"]
    if not isinstance(intent, str) or intent not in labels:
        raise SuiteError(f"{where}: field 'intent': expected one of {sorted(labels)}, got {intent!r}")

    answer = raw["answer"]
    if intent == OUT_OF_SCOPE:
        if answer is not None:
            raise SuiteError(f"{where}: field 'answer': expected null for intent {OUT_OF_SCOPE!r}, got {answer!r}")
    else:
        answer = _text(where, "answer", answer, f"a non-empty one-line string for intent {intent!r}")
        if "|" in answer:
            raise SuiteError(f"{where}: field 'answer': expected no '|' (the output line's separator), got {answer!r}")

    docs = raw["gold_docs"]
    if not isinstance(docs, list) or not all(isinstance(d, str) for d in docs):
        raise SuiteError(f"{where}: field 'gold_docs': expected a list of document paths, got {docs!r}")
    if intent == OUT_OF_SCOPE and docs:
        raise SuiteError(f"{where}: field 'gold_docs': expected [] for intent {OUT_OF_SCOPE!r}, got {docs!r}")
    if intent != OUT_OF_SCOPE and not docs:
        raise SuiteError(f"{where}: field 'gold_docs': expected at least one document for intent {intent!r}, got []")
    if len(set(docs)) != len(docs):
        raise SuiteError(f"{where}: field 'gold_docs': expected distinct documents, got {docs!r}")
    for doc in docs:
        _check_doc(where, doc, docs_root)
    group = _text(where, "group", raw["group"], "a non-empty one-line string (the cases' shared question)") if (
        "group" in raw) else case_id  # fmt: skip
    fields: dict[str, Any] = {k: raw[k] for k in ("facts", "tags") if k in raw}
    for name, value in fields.items():
        if not isinstance(value, list) or not all(isinstance(v, str) and v.strip() for v in value):
            raise SuiteError(f"{where}: field {name!r}: expected a list of non-empty strings, got {value!r}")
    if "meta" in raw:
        if not isinstance(raw["meta"], dict):
            raise SuiteError(f"{where}: field 'meta': expected a JSON object, got {raw['meta']!r}")
        fields["meta"] = raw["meta"]
    return Case(id=case_id, question=question, intent=intent, answer=answer, gold_docs=tuple(docs), group=group,
                extra=fields)  # fmt: skip


def _text(where: str, field: str, value: Any, expected: str = "a non-empty one-line string") -> str:
    if not isinstance(value, str) or not value.strip() or "\n" in value or "\r" in value:
        raise SuiteError(f"{where}: field {field!r}: expected {expected}, got {value!r}")
    return value


def _check_doc(where: str, doc: str, docs_root: Path | None) -> None:
    pure = PurePosixPath(doc)
    if not doc or "\\" in doc or pure.is_absolute() or ".." in pure.parts or str(pure) != doc:
        raise SuiteError(
            f"{where}: field 'gold_docs': expected a normalised path relative to the docs folder "
            f"(e.g. 'fees/atm-fees.md'), got {doc!r}"
        )
    if any(ch in doc for ch in ",[]|"):
        raise SuiteError(f"{where}: field 'gold_docs': expected a path without ',', '[', ']' or '|', got {doc!r}")
    if docs_root is not None and not (Path(docs_root) / doc).is_file():
        raise SuiteError(f"{where}: field 'gold_docs': {doc!r} does not exist under {docs_root}")
