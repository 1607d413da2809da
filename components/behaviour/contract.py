"""The behaviour contract, declared in a file (`paths.contract`, data/behaviour/contract.yaml): how an answer is
parsed (a line pattern, or JSON with a JSON Schema), how a training target is written, and its slices, each with
the cases it applies to, its assertion (components/behaviour/assertions.py), its live form and whether its
failure is a knowledge or a behaviour signal. The evaluation, the fine-tune's targets, the live checks of
`ragloop api` and triage all read the answer through it, so a team changes its contract in one file.

    contract: 1
    answer: {format: line, pattern: '^intent: (?P<intent>...) ...$', lists: [sources]}   # or format: json, schema
    roles: {label: intent, answer: answer, sources: sources}    # which answer field plays which part
    refusal: {label: out_of_scope, answer: "I don't know"}      # a refusal cites nothing
    target: {line: "intent: {label} | answer: {answer} | sources: [{sources}]"}   # or json: {field: "$answer"}
    slices:
      - {name: intent, cases: all, assert: {type: equals, field: intent, case_field: intent},
         live: {type: one_of, field: intent, labels: true}, signal: behaviour}
"""

from __future__ import annotations

import hashlib
import json
import re
import string
from collections.abc import Collection, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from components.behaviour.assertions import ContractError, Subject, build_assertion, check_schema
from components.files import LABELS_FILE

VERSION = 1
ROLES = ("label", "answer", "sources")
SIGNALS = ("behaviour", "knowledge")
SELECTORS = ("all", "in_scope", "out_of_scope")
_TOP = {"contract", "name", "answer", "roles", "refusal", "target", "grounding", "slices"}


@dataclass(frozen=True)
class Answer:
    """The parts of an answer ragloop itself needs (serving, triage, traces), read through the contract's roles."""

    intent: str | None
    answer: str
    sources: tuple[str, ...]


@dataclass(frozen=True)
class Slice:
    name: str
    cases: Any  # "all" | "in_scope" | "out_of_scope" | {intent: [...]} | {has: field} | {tags: [...]}
    check: Any  # an assertion
    live: Any | None  # the assertion for live answers; None: not checked live
    signal: str  # "behaviour" | "knowledge": what a failure of this slice says needs fixing

    def applies(self, case: Any) -> bool:
        sel = self.cases
        if sel == "all":
            return True
        if sel in ("in_scope", "out_of_scope"):
            return bool(case.gold_docs) == (sel == "in_scope")
        extra = getattr(case, "extra", None) or {}
        if "intent" in sel:
            return bool(case.intent in sel["intent"])
        if "tags" in sel:
            return bool(set(extra.get("tags") or ()) & set(sel["tags"]))
        name = sel["has"]
        value = getattr(case, name, None) if name in {"answer", "gold_docs"} else extra.get(name)
        return bool(value)


@dataclass(frozen=True)
class Contract:
    source: Path
    digest: str  # md5 of the file: lineage on every evaluation
    name: str
    format: str  # "line" | "json"
    pattern: re.Pattern[str] | None
    lists: tuple[str, ...]
    schema: Mapping[str, Any] | None
    roles: Mapping[str, str]
    refusal: Mapping[str, Any]  # answer field -> value in a refusal
    target: Any  # the line template (str) or the JSON object template (mapping)
    grounding: Mapping[str, str] | None  # markers for grounded decoding (line contracts only)
    slices: tuple[Slice, ...]
    labels: Collection[str] | None = None

    @property
    def slice_names(self) -> tuple[str, ...]:
        return tuple(s.name for s in self.slices)

    @property
    def knowledge_slices(self) -> frozenset[str]:
        return frozenset(s.name for s in self.slices if s.signal == "knowledge")

    @property
    def live_slices(self) -> tuple[str, ...]:
        return tuple(s.name for s in self.slices if s.live is not None)

    def parse(self, output: str) -> dict[str, Any] | None:
        """The answer's fields, or None when the output does not follow the contract."""
        return _parse_line(self, output) if self.format == "line" else _parse_json(self, output)

    def answer_of(self, output: str) -> Answer | None:
        return self._roles(self.parse(output))

    def check(self, case: Any, output: str, retrieved: tuple[str, ...]) -> tuple[dict[str, bool], dict[str, str]]:
        """(slice -> passed, slice -> error) for every slice that applies to the case. An assertion that raises
        fails its slice for this case only, and its error is kept for the case's row."""
        return _run(self._case_slices(case), self._subject(output, retrieved, case))

    def live_check(self, output: str, retrieved: tuple[str, ...]) -> tuple[dict[str, bool], dict[str, str]]:
        """The slices that have a live form, on an answer whose right answer nobody knows."""
        return _run(self._live_slices(), self._subject(output, retrieved))

    def judge(self, output: str, retrieved: tuple[str, ...],
              case: Any = None) -> tuple[Answer | None, dict[str, bool], dict[str, str]]:  # fmt: skip
        """The output parsed once: its roles (None: not in the contract's format) and its checks, `check` for a
        gate case, `live_check` for a live answer (`case` None)."""
        subject = self._subject(output, retrieved, case)
        checks, errors = _run(self._live_slices() if case is None else self._case_slices(case), subject)
        return self._roles(subject.parsed), checks, errors

    def _case_slices(self, case: Any) -> list[tuple[str, Any]]:
        return [(s.name, s.check) for s in self.slices if s.applies(case)]

    def _live_slices(self) -> list[tuple[str, Any]]:
        return [(s.name, s.live) for s in self.slices if s.live is not None]

    def _roles(self, parsed: Mapping[str, Any] | None) -> Answer | None:
        if parsed is None:
            return None
        label, sources = parsed.get(self.roles.get("label", "")), parsed.get(self.roles.get("sources", ""))
        text = parsed.get(self.roles["answer"])
        return Answer(label if isinstance(label, str) else None, text if isinstance(text, str) else "",
                      tuple(str(s) for s in sources) if isinstance(sources, list | tuple) else ())  # fmt: skip

    def target_for(self, case: Any, cited: list[str] | tuple[str, ...]) -> str:
        """What the fine-tune teaches for a case: its gold intent, answer and the cited documents, or the
        refusal for an out-of-scope case, written in the contract's format."""
        refuse = not case.gold_docs or not case.answer
        values: dict[str, Any] = {"label": case.intent, "answer": case.answer, "sources": list(cited)}
        if refuse:
            values.update({role: self.refusal[f] for role, f in self.roles.items() if f in self.refusal})
            values["sources"] = []
        if self.format == "line":
            text = {k: ", ".join(v) if isinstance(v, list) else " ".join(str(v).replace("|", "/").split())
                    for k, v in values.items()}  # fmt: skip
            return str(self.target).format(**text)
        obj = {k: values[v[1:]] if isinstance(v, str) and v[1:] in values and v.startswith("$") else v
               for k, v in self.target.items()}  # fmt: skip
        return json.dumps(obj, ensure_ascii=False)

    def _subject(self, output: str, retrieved: tuple[str, ...], case: Any = None) -> Subject:
        return Subject(output, self.parse(output), tuple(retrieved), case, self.labels, self.refusal)


def _run(named: list[tuple[str, Any]], subject: Subject) -> tuple[dict[str, bool], dict[str, str]]:
    checks: dict[str, bool] = {}
    errors: dict[str, str] = {}
    for name, assertion in named:
        try:
            checks[name] = bool(assertion(subject))
        except Exception as exc:
            checks[name] = False
            errors[name] = f"{type(exc).__name__}: {exc}"
    return checks, errors


def _parse_line(contract: Contract, output: str) -> dict[str, Any] | None:
    assert contract.pattern is not None
    first = output.strip().split("\n", 1)[0].strip()
    m = contract.pattern.match(first)
    if m is None:
        return None
    fields: dict[str, Any] = {k: (v or "").strip() for k, v in m.groupdict().items()}
    for name in contract.lists:
        fields[name] = [s.strip() for s in fields[name].split(",") if s.strip()]
    return fields


def _parse_json(contract: Contract, output: str) -> dict[str, Any] | None:
    text = output.strip()
    start = text.find("{")
    if start < 0:
        return None
    try:
        value, _ = json.JSONDecoder().raw_decode(text[start:])
    except json.JSONDecodeError:
        return None
    if not isinstance(value, dict):
        return None
    if contract.schema is not None:
        import jsonschema

        if any(True for _ in jsonschema.Draft202012Validator(dict(contract.schema)).iter_errors(value)):
            return None
    return value


_CACHE: dict[tuple[Path, int, str | None], Contract] = {}


def contract_for(params: Any) -> Contract:
    """The deployment's contract (`paths.contract`), with the suite's labels (`paths.behaviour`/labels.json)."""
    from components.behaviour.suite import load_labels

    labels_file = params.paths.behaviour / LABELS_FILE
    labels = tuple(load_labels(labels_file)) if labels_file.is_file() else None
    return load_contract(params.paths.contract or params.paths.behaviour / "contract.yaml", labels)


def load_contract(path: Path, labels: Collection[str] | None = None) -> Contract:
    """Read and validate a contract file; the first problem raises ContractError naming file, slice and field."""
    path = Path(path)
    try:
        data = path.read_bytes()
        key = (path.resolve(), path.stat().st_mtime_ns, ",".join(sorted(labels)) if labels is not None else None)
    except OSError as exc:
        raise ContractError(f"{path}: cannot read the contract: {exc.strerror or exc}") from None
    if key not in _CACHE:
        _CACHE[key] = _declare(path, data, labels)
    return _CACHE[key]


def _declare(path: Path, data: bytes, labels: Collection[str] | None) -> Contract:
    try:
        raw = yaml.safe_load(data.decode("utf-8"))
    except (UnicodeDecodeError, yaml.YAMLError) as exc:
        raise ContractError(f"{path}: not valid YAML: {exc}") from None
    if not isinstance(raw, dict):
        raise ContractError(f"{path}: expected a mapping with fields {sorted(_TOP)}")
    unknown = sorted(set(raw) - _TOP)
    if unknown:
        raise ContractError(f"{path}: field {unknown[0]!r}: unknown, expected one of {sorted(_TOP)}")
    if raw.get("contract") != VERSION:
        got = raw.get("contract")
        raise ContractError(f"{path}: field 'contract': expected {VERSION} (the format version), got {got!r}")
    fmt, pattern, lists, schema = _answer(path, raw.get("answer"))
    roles = _mapping(path, raw, "roles", required=True)
    if "answer" not in roles or not set(roles) <= set(ROLES) or not all(isinstance(v, str) for v in roles.values()):
        raise ContractError(f"{path}: field 'roles': expected answer field names for 'answer' (required), "
                            f"'label' and 'sources', got {roles!r}")  # fmt: skip
    if pattern is not None and not set(roles.values()) <= set(pattern.groupindex):
        missing = sorted(set(roles.values()) - set(pattern.groupindex))
        raise ContractError(f"{path}: field 'roles': {missing} are not named groups of answer.pattern")
    refusal = _refusal(path, raw, roles)
    target = _target(path, raw, fmt, roles)
    grounding = _grounding(path, raw, fmt)
    slices = _slices(path, raw.get("slices"))
    digest = hashlib.md5(data).hexdigest()
    name = str(raw.get("name") or path.stem)
    return Contract(path, digest, name, fmt, pattern, lists, schema, roles, refusal, target, grounding, slices,
                    None if labels is None else frozenset(labels))  # fmt: skip


def _mapping(path: Path, raw: Mapping[str, Any], field: str, required: bool = False) -> dict[str, Any]:
    value = raw.get(field)
    if value is None and not required:
        return {}
    if not isinstance(value, dict):
        raise ContractError(f"{path}: field {field!r}: expected a mapping, got {value!r}")
    return dict(value)


def _answer(path: Path, spec: Any) -> tuple[str, re.Pattern[str] | None, tuple[str, ...], dict | None]:
    where = f"{path}: answer"
    if not isinstance(spec, dict) or spec.get("format") not in ("line", "json"):
        raise ContractError(f"{where}: field 'format': expected 'line' or 'json', got {spec!r}")
    if spec["format"] == "json":
        schema = spec.get("schema")
        if schema is not None:
            if not isinstance(schema, dict):
                raise ContractError(f"{where}: field 'schema': expected a JSON Schema (a mapping), got {schema!r}")
            check_schema(schema, f"{where}: field 'schema'")
        return "json", None, (), schema
    try:
        pattern = re.compile(spec.get("pattern") or "")
    except re.error as exc:
        raise ContractError(f"{where}: field 'pattern': not a regular expression: {exc}") from None
    if not pattern.groupindex:
        raise ContractError(f"{where}: field 'pattern': expected a regular expression with named groups (?P<name>...)")
    lists = spec.get("lists") or []
    if not isinstance(lists, list) or not set(lists) <= set(pattern.groupindex):
        raise ContractError(f"{where}: field 'lists': expected named groups of the pattern, got {lists!r}")
    return "line", pattern, tuple(lists), None


def _refusal(path: Path, raw: Mapping[str, Any], roles: Mapping[str, str]) -> dict[str, Any]:
    refusal = _mapping(path, raw, "refusal", required=True)
    if not refusal or not set(refusal) <= {"label", "answer"}:
        raise ContractError(f"{path}: field 'refusal': expected 'answer' and/or 'label' values, got {refusal!r}")
    if "label" in refusal and "label" not in roles:
        raise ContractError(f"{path}: field 'refusal.label': the contract has no label role")
    out = {roles[role]: value for role, value in refusal.items()}
    if "sources" in roles:
        out[roles["sources"]] = []
    return out


def _target(path: Path, raw: Mapping[str, Any], fmt: str, roles: Mapping[str, str]) -> Any:
    target = _mapping(path, raw, "target", required=True)
    if fmt == "line":
        line = target.get("line")
        try:
            names = {n for _, n, _, _ in string.Formatter().parse(line or "") if n}
        except ValueError as exc:
            raise ContractError(f"{path}: field 'target.line': not a format string: {exc}") from None
        if not isinstance(line, str) or not names or not names <= set(roles):
            raise ContractError(f"{path}: field 'target.line': expected a template using {{{'}, {'.join(roles)}}}, "
                                f"got {line!r}")  # fmt: skip
        return line
    obj = target.get("json")
    if not isinstance(obj, dict) or not obj:
        raise ContractError(f"{path}: field 'target.json': expected the answer object, with '$label', '$answer', "
                            f"'$sources' where the case's values go, got {obj!r}")  # fmt: skip
    return obj


def _grounding(path: Path, raw: Mapping[str, Any], fmt: str) -> dict[str, str] | None:
    grounding = _mapping(path, raw, "grounding")
    if not grounding:
        return None
    if fmt != "line" or set(grounding) - {"label_after", "sources_after"}:
        raise ContractError(f"{path}: field 'grounding': expected 'label_after' and/or 'sources_after' markers "
                            f"of a line contract, got {grounding!r}")  # fmt: skip
    return {k: str(v) for k, v in grounding.items()}


def _slices(path: Path, raw: Any) -> tuple[Slice, ...]:
    if not isinstance(raw, list) or not raw:
        raise ContractError(f"{path}: field 'slices': expected a non-empty list of slices")
    out: list[Slice] = []
    for i, spec in enumerate(raw):
        name = spec.get("name") if isinstance(spec, dict) else None
        where = f"{path}: slice {name or i!r}"
        if not isinstance(name, str) or not re.fullmatch(r"[a-z][a-z0-9_]{0,39}", name):
            raise ContractError(f"{where}: field 'name': expected a lower-case identifier, got {name!r}")
        if name in {s.name for s in out}:
            raise ContractError(f"{where}: field 'name': duplicate slice")
        unknown = sorted(set(spec) - {"name", "cases", "assert", "live", "signal", "description"})
        if unknown:
            raise ContractError(f"{where}: field {unknown[0]!r}: unknown, expected name, cases, assert, live, signal")
        cases = _selector(where, spec.get("cases", "all"))
        check = build_assertion(spec.get("assert"), f"{where}: field 'assert'")
        signal = spec.get("signal", "behaviour")
        if signal not in SIGNALS:
            raise ContractError(f"{where}: field 'signal': expected one of {list(SIGNALS)}, got {signal!r}")
        out.append(Slice(name, cases, check, _live(where, spec.get("live"), check, cases), signal))
    return tuple(out)


def _selector(where: str, sel: Any) -> Any:
    if sel in SELECTORS:
        return sel
    keys = {"intent", "tags", "has"}
    ok = isinstance(sel, dict) and len(sel) == 1 and set(sel) <= keys
    if ok and "has" in sel:
        ok = isinstance(sel["has"], str)
    elif ok:
        ok = isinstance(next(iter(sel.values())), list)
    if not ok:
        raise ContractError(f"{where}: field 'cases': expected one of {list(SELECTORS)} or one of "
                            f"{{intent: [labels]}}, {{tags: [tags]}}, {{has: case field}}, got {sel!r}")  # fmt: skip
    return sel


def _live(where: str, spec: Any, check: Any, cases: Any) -> Any | None:
    """None (not live) by default when the assertion needs the case or the slice selects cases; `true`: the
    offline assertion as it is; a mapping: its own assertion."""
    if spec is None:
        return None if check.needs_case or cases != "all" else check
    if spec is False:
        return None
    if spec is True:
        if check.needs_case:
            raise ContractError(f"{where}: field 'live': the assertion needs the case's gold; declare a live form")
        return check
    live = build_assertion(spec, f"{where}: field 'live'")
    if live.needs_case:
        raise ContractError(f"{where}: field 'live': a live answer has no case; this assertion needs one")
    return live
