"""The assertion vocabulary of a declared contract: one small class per `type`, each built from its YAML
mapping (validated here, so a declaration error names the field) and called on one answer.

An assertion sees a `Subject`: the raw output, the parsed answer (a dict, or None when the output does not parse),
the documents retrieved for it, the case (None online, where no gold exists) and the label set. It returns a bool;
if it raises, the evaluation fails that case for that slice and records the error in the case's row.

To add a type: write a class with `build(spec, where)`, `needs_case` and `__call__(subject)`, and add it to
`TYPES`. That is the one place.
"""

from __future__ import annotations

import importlib
import re
import unicodedata
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass
from typing import Any, ClassVar


class ContractError(ValueError):
    """A contract file that cannot be used; the message names the file, the slice and the field."""


@dataclass(frozen=True)
class Subject:
    output: str
    parsed: Mapping[str, Any] | None
    retrieved: tuple[str, ...]
    case: Any | None  # a suite Case offline; None for a live answer
    labels: Collection[str] | None  # the suite's labels (labels.json); None when a deployment has none
    refusal: Mapping[str, Any]  # answer field -> the value it takes in a refusal (the contract's `refusal`)

    def value(self, field: str | None) -> Any:
        """The answer field (dotted for nested JSON), the whole output when `field` is None; None if absent."""
        if field is None:
            return self.output
        value: Any = self.parsed
        for part in field.split("."):
            if not isinstance(value, Mapping) or part not in value:
                return None
            value = value[part]
        return value

    def is_refusal(self, apart_from: str | None = None) -> bool:
        """The answer is the contract's refusal (every refusal field but `apart_from` takes its value)."""
        fields = [(f, v) for f, v in self.refusal.items() if f != apart_from]
        return self.parsed is not None and all(_same(self.value(f), v) for f, v in fields)

    def case_value(self, name: str) -> Any:
        if self.case is None:
            raise ValueError(f"case field {name!r} is needed, and a live answer has no case")
        if name in {"id", "question", "intent", "answer", "gold_docs"}:
            return getattr(self.case, name)
        extra = getattr(self.case, "extra", None) or {}
        if name not in extra:
            raise ValueError(f"case {self.case.id} has no field {name!r}")
        return extra[name]


def _same(got: Any, expected: Any) -> bool:
    if isinstance(expected, list | tuple):
        return isinstance(got, list | tuple) and list(got) == list(expected)
    return bool(got == expected)


def _norm(text: str) -> str:
    return " ".join(unicodedata.normalize("NFKC", text).casefold().split())


class _Spec:
    """Reads one assertion's mapping and says exactly which field is wrong."""

    def __init__(self, spec: Mapping[str, Any], where: str, allowed: set[str]) -> None:
        self.spec, self.where = spec, where
        unknown = sorted(set(spec) - allowed - {"type"})
        if unknown:
            raise ContractError(f"{where}: field {unknown[0]!r}: unknown, expected one of {sorted(allowed)}")

    def get(self, name: str, kinds: type | tuple[type, ...], default: Any = ..., what: str = "") -> Any:
        if name not in self.spec:
            if default is ...:
                raise ContractError(f"{self.where}: field {name!r}: missing, expected {what or _kind(kinds)}")
            return default
        value = self.spec[name]
        if not isinstance(value, kinds) or (isinstance(value, bool) and bool not in _tuple(kinds)):
            raise ContractError(f"{self.where}: field {name!r}: expected {what or _kind(kinds)}, got {value!r}")
        return value

    def strings(self, name: str, default: Any = ...) -> tuple[str, ...]:
        value = self.get(name, (str, list), default, "a string or a list of strings")
        items = [value] if isinstance(value, str) else list(value)
        if not all(isinstance(v, str) and v for v in items):
            raise ContractError(f"{self.where}: field {name!r}: expected non-empty strings, got {value!r}")
        return tuple(items)


def _tuple(kinds: type | tuple[type, ...]) -> tuple[type, ...]:
    return kinds if isinstance(kinds, tuple) else (kinds,)


def _kind(kinds: type | tuple[type, ...]) -> str:
    return " or ".join(k.__name__ for k in _tuple(kinds))


@dataclass(frozen=True)
class Parses:
    """The output parses as the contract's answer (and, for JSON, matches its schema)."""

    needs_case: ClassVar[bool] = False

    @classmethod
    def build(cls, spec: Mapping[str, Any], where: str) -> Parses:
        _Spec(spec, where, set())
        return cls()

    def __call__(self, s: Subject) -> bool:
        return s.parsed is not None


@dataclass(frozen=True)
class Equals:
    """An answer field equals a fixed `value`, or the case's field `case_field` (e.g. the gold intent)."""

    field: str
    value: Any = None
    case_field: str | None = None

    @property
    def needs_case(self) -> bool:
        return self.case_field is not None

    @classmethod
    def build(cls, spec: Mapping[str, Any], where: str) -> Equals:
        r = _Spec(spec, where, {"field", "value", "case_field"})
        if ("value" in spec) == ("case_field" in spec):
            raise ContractError(f"{where}: expected exactly one of 'value' or 'case_field'")
        return cls(r.get("field", str), spec.get("value"), r.get("case_field", str, None))

    def __call__(self, s: Subject) -> bool:
        expected = s.case_value(self.case_field) if self.case_field else self.value
        return s.parsed is not None and _same(s.value(self.field), expected)


@dataclass(frozen=True)
class OneOf:
    """An answer field is one of `values`, or (`labels: true`) a label of the suite or the refusal's."""

    field: str
    values: tuple[str, ...] = ()
    labels: bool = False
    needs_case: ClassVar[bool] = False

    @classmethod
    def build(cls, spec: Mapping[str, Any], where: str) -> OneOf:
        r = _Spec(spec, where, {"field", "values", "labels"})
        labels = r.get("labels", bool, False)
        values = r.strings("values", ())
        if bool(values) == labels:
            raise ContractError(f"{where}: expected exactly one of 'values' (a list) or 'labels: true'")
        return cls(r.get("field", str), values, labels)

    def __call__(self, s: Subject) -> bool:
        got = s.value(self.field)
        if s.parsed is None or not isinstance(got, str):
            return False
        if not self.labels:
            return got in self.values
        return s.labels is None or got in s.labels or got == s.refusal.get(self.field)


@dataclass(frozen=True)
class Regex:
    """`pattern` is found in an answer field (the whole output without `field`); `full: true` must match it all."""

    pattern: re.Pattern[str]
    field: str | None = None
    full: bool = False
    needs_case: ClassVar[bool] = False

    @classmethod
    def build(cls, spec: Mapping[str, Any], where: str) -> Regex:
        r = _Spec(spec, where, {"field", "pattern", "full", "ignore_case"})
        flags = re.IGNORECASE if r.get("ignore_case", bool, False) else 0
        try:
            pattern = re.compile(r.get("pattern", str), flags)
        except re.error as exc:
            raise ContractError(f"{where}: field 'pattern': not a regular expression: {exc}") from None
        return cls(pattern, r.get("field", str, None), r.get("full", bool, False))

    def __call__(self, s: Subject) -> bool:
        got = s.value(self.field)
        if not isinstance(got, str):
            return False
        return bool(self.pattern.fullmatch(got) if self.full else self.pattern.search(got))


@dataclass(frozen=True)
class Contains:
    """Every one of `text` occurs in an answer field or the output (case and spacing ignored); `negate`: none
    does (and the field must be there)."""

    texts: tuple[str, ...]
    field: str | None = None
    negate: bool = False
    needs_case: ClassVar[bool] = False

    @classmethod
    def build(cls, spec: Mapping[str, Any], where: str, negate: bool = False) -> Contains:
        r = _Spec(spec, where, {"field", "text"})
        return cls(r.strings("text"), r.get("field", str, None), negate)

    def __call__(self, s: Subject) -> bool:
        got = s.value(self.field)
        if not isinstance(got, str):  # an answer that does not parse, or lacks the field, fails either way
            return False
        text = _norm(got)
        found = [_norm(t) in text for t in self.texts]
        return not any(found) if self.negate else all(found)


@dataclass(frozen=True)
class ContainsFacts:
    """Every fact of the case (its field `facts`, a list of strings) occurs in an answer field."""

    field: str
    case_field: str = "facts"
    needs_case: ClassVar[bool] = True

    @classmethod
    def build(cls, spec: Mapping[str, Any], where: str) -> ContainsFacts:
        r = _Spec(spec, where, {"field", "case_field"})
        return cls(r.get("field", str), r.get("case_field", str, "facts"))

    def __call__(self, s: Subject) -> bool:
        facts = s.case_value(self.case_field)
        if not isinstance(facts, list) or not all(isinstance(f, str) for f in facts):
            raise ValueError(f"case field {self.case_field!r}: expected a list of strings, got {facts!r}")
        got = s.value(self.field)
        return isinstance(got, str) and all(_norm(f) in _norm(got) for f in facts)


@dataclass(frozen=True)
class JsonSchema:
    """An answer field (the whole parsed answer without `field`) validates against a JSON Schema."""

    schema: Mapping[str, Any]
    field: str | None = None
    needs_case: ClassVar[bool] = False

    @classmethod
    def build(cls, spec: Mapping[str, Any], where: str) -> JsonSchema:
        r = _Spec(spec, where, {"field", "schema"})
        schema = r.get("schema", dict, what="a JSON Schema (a mapping)")
        check_schema(schema, f"{where}: field 'schema'")
        return cls(schema, r.get("field", str, None))

    def __call__(self, s: Subject) -> bool:
        import jsonschema

        if s.parsed is None:
            return False
        value = s.parsed if self.field is None else s.value(self.field)
        return not any(True for _ in jsonschema.Draft202012Validator(dict(self.schema)).iter_errors(value))


@dataclass(frozen=True)
class CitesRetrieved:
    """The sources field is non-empty, names only retrieved documents and (`gold: true`) at least one gold one;
    with `refusal_cites_none: true` a refusal must cite nothing instead."""

    field: str
    gold: bool = True
    refusal_cites_none: bool = False

    @property
    def needs_case(self) -> bool:
        return self.gold

    @classmethod
    def build(cls, spec: Mapping[str, Any], where: str) -> CitesRetrieved:
        r = _Spec(spec, where, {"field", "gold", "refusal_cites_none"})
        return cls(r.get("field", str), r.get("gold", bool, True), r.get("refusal_cites_none", bool, False))

    def __call__(self, s: Subject) -> bool:
        cited = s.value(self.field)
        if s.parsed is None or not isinstance(cited, list | tuple):
            return False
        if self.refusal_cites_none and s.is_refusal(apart_from=self.field):
            return not cited
        ok = bool(cited) and set(cited) <= set(s.retrieved)
        return ok and (not self.gold or bool(set(cited) & set(s.case_value("gold_docs"))))


@dataclass(frozen=True)
class Refusal:
    """The answer is the contract's refusal: every field of `refusal` takes its declared value."""

    needs_case: ClassVar[bool] = False

    @classmethod
    def build(cls, spec: Mapping[str, Any], where: str) -> Refusal:
        _Spec(spec, where, set())
        return cls()

    def __call__(self, s: Subject) -> bool:
        return s.is_refusal()


@dataclass(frozen=True)
class MaxLength:
    """An answer field (the whole output without `field`) has at most `chars` characters and/or `words` words."""

    field: str | None = None
    chars: int | None = None
    words: int | None = None
    needs_case: ClassVar[bool] = False

    @classmethod
    def build(cls, spec: Mapping[str, Any], where: str) -> MaxLength:
        r = _Spec(spec, where, {"field", "chars", "words"})
        chars, words = r.get("chars", int, None), r.get("words", int, None)
        if (chars is None and words is None) or any(v is not None and v < 1 for v in (chars, words)):
            raise ContractError(f"{where}: expected 'chars' and/or 'words', each a positive integer")
        return cls(r.get("field", str, None), chars, words)

    def __call__(self, s: Subject) -> bool:
        got = s.value(self.field)
        if not isinstance(got, str):
            return False
        return (self.chars is None or len(got) <= self.chars) and (self.words is None or len(got.split()) <= self.words)


@dataclass(frozen=True)
class Python:
    """`function: module:function`, called as f(answer, output, case, retrieved) -> bool (case None online)."""

    function: Callable[..., Any]
    name: str
    needs_case: bool = False

    @classmethod
    def build(cls, spec: Mapping[str, Any], where: str) -> Python:
        r = _Spec(spec, where, {"function", "needs_case"})
        name = r.get("function", str, what="'module:function'")
        module, _, attr = name.partition(":")
        try:
            target = getattr(importlib.import_module(module), attr) if module and attr else None
        except (ImportError, AttributeError) as exc:
            raise ContractError(f"{where}: field 'function': cannot import {name!r}: {exc}") from None
        if not callable(target):
            raise ContractError(f"{where}: field 'function': expected 'module:function' naming a callable, "
                                f"got {name!r}")  # fmt: skip
        return cls(target, name, r.get("needs_case", bool, False))

    def __call__(self, s: Subject) -> bool:
        result = self.function(s.parsed, s.output, s.case, s.retrieved)
        if not isinstance(result, bool):
            raise TypeError(f"{self.name} returned {result!r}, expected True or False")
        return result


def check_schema(schema: Mapping[str, Any], where: str) -> None:
    import jsonschema

    try:
        jsonschema.Draft202012Validator.check_schema(dict(schema))
    except jsonschema.SchemaError as exc:
        raise ContractError(f"{where}: not a valid JSON Schema: {exc.message}") from None


TYPES: dict[str, Callable[[Mapping[str, Any], str], Any]] = {
    "parses": Parses.build,
    "equals": Equals.build,
    "one_of": OneOf.build,
    "regex": Regex.build,
    "contains": Contains.build,
    "not_contains": lambda spec, where: Contains.build(spec, where, negate=True),
    "contains_facts": ContainsFacts.build,
    "json_schema": JsonSchema.build,
    "cites_retrieved": CitesRetrieved.build,
    "refusal": Refusal.build,
    "max_length": MaxLength.build,
    "python": Python.build,
}


def build_assertion(spec: Any, where: str) -> Any:
    """`type` alone (a string) or a mapping with `type` and its fields."""
    if isinstance(spec, str):
        spec = {"type": spec}
    if not isinstance(spec, Mapping) or not isinstance(spec.get("type"), str):
        raise ContractError(f"{where}: expected a type name or a mapping with 'type', one of {sorted(TYPES)}")
    kind = spec["type"]
    if kind not in TYPES:
        raise ContractError(f"{where}: field 'type': unknown {kind!r}, expected one of {sorted(TYPES)}")
    return TYPES[kind](spec, where)
