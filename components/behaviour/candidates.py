"""Candidate training cases from live traffic: triage proposes them, a person accepts them into train.jsonl.

`data/behaviour/candidates.jsonl` (under `paths.behaviour`, tracked by DVC: candidates.jsonl.dvc) holds one JSON
object per behaviour-routed trace, keyed by its trace id. A candidate never enters the gate set, and accepting
one is refused when its question equals a gate question after normalisation (`check_disjoint` still holds), when
it equals a training question already, or when its target answer is unknown: a candidate without a correction
has no answer until the person gives one (`ragloop cases accept ID --answer ...`); none is ever invented.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from components.behaviour.contract import Contract
from components.behaviour.suite import (
    OUT_OF_SCOPE,
    Case,
    SuiteError,
    check_disjoint,
    load_cases,
    load_labels,
)
from components.config import Params
from components.files import CANDIDATES, GATE_CASES, LABELS_FILE, TRAIN_CASES
from components.hashing import normalise, text_hash
from components.jsonl import read_jsonl
from components.tracking.production import LiveTrace


class CandidateError(ValueError):
    """A candidate that cannot be accepted as it stands; the message says which and what it needs."""


def candidates_path(params: Params) -> Path:
    return params.paths.behaviour / CANDIDATES


def candidate_from(trace: LiveTrace, context_docs: tuple[str, ...], labels: Iterable[str],
                   contract: Contract) -> dict:  # fmt: skip
    """The proposed case: the target from the user's correction when there is one (an answer in the contract's
    format, or the answer text alone), else no answer; the intent from the correction, else the model's own label
    as the answer pipeline parsed it when it answered (recorded in the trace, never parsed again here; to be
    checked)."""
    known = set(labels) | {OUT_OF_SCOPE}
    fixed = contract.answer_of(trace.correction) if trace.correction else None
    intent: str | None
    source: str | None
    answer: str | None
    if fixed is not None:
        intent, source, answer = fixed.intent, "correction", fixed.answer
        docs = list(fixed.sources) or list(context_docs)
    else:
        answer = trace.correction
        intent = trace.intent if trace.intent in known else None
        source = "model" if intent else None
        docs = list(context_docs)
    if intent == OUT_OF_SCOPE:
        answer, docs = None, []
    return {
        "id": f"cand-{trace.trace_id.removeprefix('tr-')[:12]}", "trace_id": trace.trace_id,
        "question": trace.question, "intent": intent, "intent_source": source, "answer": answer,
        "answer_source": "correction" if trace.correction else None, "gold_docs": docs, "output": trace.output,
        "failed_checks": list(trace.failed_checks), "feedback": trace.feedback, "comment": trace.comment,
        "model_version": trace.model_version, "index_version": trace.index_version,
        "timestamp_ms": trace.timestamp_ms,
    }  # fmt: skip


def load_candidates(path: Path) -> list[dict]:
    if not path.is_file():
        return []
    out = []
    for lineno, row in read_jsonl(path, SuiteError):
        if not isinstance(row, dict) or not isinstance(row.get("id"), str) or not isinstance(row.get("question"), str):
            raise SuiteError(f"{path}:{lineno}: expected a candidate object with string fields 'id' and 'question'")
        out.append(row)
    return out


def save_candidates(path: Path, rows: list[dict]) -> None:
    _atomic_write(path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))


def add_candidates(path: Path, new: list[dict], gate: list[Case]) -> list[dict]:
    """Append the candidates whose trace is not in the file yet; each notes a gate question it collides with
    (such a candidate can never be accepted, and the person sees why at once). Returns the ones added."""
    rows = load_candidates(path)
    known = {r.get("trace_id") for r in rows}
    gate_ids = {normalise(c.question): c.id for c in gate}
    added = []
    for cand in new:
        if cand["trace_id"] in known:
            continue
        added.append({**cand, "gate_collision": gate_ids.get(normalise(cand["question"]))})
        known.add(cand["trace_id"])
    if added or not path.is_file():
        save_candidates(path, rows + added)
    return added


@dataclass(frozen=True)
class Accepted:
    candidate_id: str
    case_id: str
    question: str


def accept(params: Params, ids: list[str], answer: str | None = None, intent: str | None = None) -> list[Accepted]:
    """Move candidates into train.jsonl as training cases, all or none: the new train file is validated like any
    case file and proven disjoint from the gate set before it replaces the old one."""
    root = params.paths.behaviour
    path = candidates_path(params)
    rows = load_candidates(path)
    by_id = {r["id"]: r for r in rows}
    missing = [i for i in ids if i not in by_id]
    if missing:
        raise CandidateError(f"{path}: no candidate {', '.join(missing)} (`ragloop cases list` shows them)")
    if (answer is not None or intent is not None) and len(ids) != 1:
        raise CandidateError("--answer / --intent apply to one candidate at a time: name exactly one ID")
    labels = set(load_labels(root / LABELS_FILE))
    train_file, gate_file = root / TRAIN_CASES, root / GATE_CASES
    gate = load_cases(gate_file, labels)
    train_text = train_file.read_text(encoding="utf-8") if train_file.is_file() else ""
    lines = [json.dumps(_case(by_id[i], answer, intent, labels), ensure_ascii=False) for i in ids]
    new_text = train_text + ("" if not train_text or train_text.endswith("\n") else "\n") + "\n".join(lines) + "\n"
    trial = train_file.with_name(train_file.name + ".accept.tmp")
    trial.write_text(new_text, encoding="utf-8")
    try:
        train = load_cases(trial, labels, params.paths.docs)  # a duplicate of a training question is refused here
        check_disjoint(gate, train)
    except SuiteError as exc:
        trial.unlink()
        raise CandidateError(f"not accepted, {train_file} unchanged: {str(exc).replace(str(trial), str(train_file))}"
                             ) from None  # fmt: skip
    os.replace(trial, train_file)
    save_candidates(path, [r for r in rows if r["id"] not in set(ids)])
    return [Accepted(i, json.loads(line)["id"], by_id[i]["question"]) for i, line in zip(ids, lines, strict=True)]


def _case(row: dict, answer: str | None, intent: str | None, labels: set[str]) -> dict:
    where = f"candidate {row['id']}"
    label = intent or row.get("intent")
    if label is None:
        raise CandidateError(f"{where}: field 'intent': unknown (the answer had no valid label): give it with --intent")
    if label not in labels:
        raise CandidateError(f"{where}: field 'intent': expected one of {sorted(labels)}, got {label!r}")
    target = answer if answer is not None else row.get("answer")
    docs = list(row.get("gold_docs") or [])
    if label == OUT_OF_SCOPE:
        target, docs = None, []
    elif not target:
        raise CandidateError(f"{where}: field 'answer': the user gave no correction, so the target answer is unknown "
                             "and is never guessed: give it with --answer")  # fmt: skip
    return {"id": f"live-{text_hash(row['question'])[:10]}", "question": row["question"], "intent": label,
            "answer": target, "gold_docs": docs}  # fmt: skip


def _atomic_write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)
