"""The declared contract: every assertion type on answers that pass and answers that fail, declaration errors that
name the file, the slice and the field, an assertion that raises failing its case only, live forms, and targets
that parse back as what they were written from."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from components.behaviour.assertions import ContractError, build_assertion
from components.behaviour.checks import route_case
from components.behaviour.contract import Contract, load_contract
from components.behaviour.suite import Case
from tests.helpers import REPO

LINE = REPO / "data/behaviour/contract.yaml"
JSON = REPO / "data/behaviour/examples/json-disclaimer.yaml"
LABELS = {"fees", "card_lost"}
FEES = Case("g1", "How much is SWIFT?", "fees", "9 EUR", ("fees.md",))
OOS = Case("g2", "Do you sell crypto?", "out_of_scope", None, ())


def line(intent: str, answer: str, sources: str) -> str:
    return f"intent: {intent} | answer: {answer} | sources: [{sources}]"


def write(tmp_path: Path, body: dict, name: str = "contract.yaml") -> Path:
    path = tmp_path / name
    path.write_text(json.dumps(body))  # JSON is YAML
    return path


def minimal(**over: object) -> dict:
    body: dict = {
        "contract": 1,
        "answer": {"format": "json"},
        "roles": {"answer": "text"},
        "refusal": {"answer": "I don't know"},
        "target": {"json": {"text": "$answer"}},
        "slices": [{"name": "parses", "assert": "parses"}],
    }
    body.update(over)
    return body


def test_without_a_labels_file_any_label_is_known_live() -> None:
    assert load_contract(LINE, None).live_check(line("anything", "x", "fees.md"), ("fees.md",))[0]["intent"]
    assert load_contract(LINE, LABELS).live_slices == ("format", "intent", "citation")


@pytest.mark.parametrize("path", [LINE, JSON])
@pytest.mark.parametrize("case", [FEES, OOS])
def test_a_target_parses_back_and_passes_every_slice(path: Path, case: Case) -> None:
    contract = load_contract(path, LABELS)
    cited = list(case.gold_docs)
    target = contract.target_for(case, cited)
    answer = contract.answer_of(target)
    assert answer is not None
    assert answer.sources == tuple(cited)
    assert answer.answer == (case.answer or "I don't know")
    checks, errors = contract.check(case, target, (*cited, "other.md"))
    assert errors == {} and checks and all(checks.values()), checks


def test_a_line_target_keeps_its_separator_out_of_the_answer() -> None:
    contract = load_contract(LINE, LABELS)
    target = contract.target_for(Case("c", "q", "fees", "2 EUR |  or  3\tEUR", ("fees.md",)), ["fees.md"])
    assert target == line("fees", "2 EUR / or 3 EUR", "fees.md")


@pytest.mark.parametrize(
    ("output", "failed"),
    [
        ('{"label": "fees", "answer": "9 EUR", "sources": ["fees.md"], "disclaimer": "This is not financial advice."}',
         set()),
        ('Sure! {"label": "fees", "answer": "9 EUR", "sources": ["fees.md"], '
         '"disclaimer": "This is not financial advice."} Anything else?', set()),  # the first object is read
        ('{"label": "fees", "answer": "9 EUR", "sources": ["fees.md"], "disclaimer": "Trust me."}', {"disclaimer"}),
        ('{"label": "fees", "answer": "9 EUR", "sources": ["fees.md"]}', set(LABELLED := {"schema", "disclaimer",
         "label", "grounded", "brief", "no_guarantees"})),  # no disclaimer: the schema fails, so nothing parses
        ('{"label": "fees", "answer": "We guarantee 9 EUR", "sources": ["fees.md"], '
         '"disclaimer": "This is not financial advice."}', {"no_guarantees"}),
        ('{"label": "fees", "answer": "' + "word " * 41 + '", "sources": ["fees.md"], '
         '"disclaimer": "This is not financial advice."}', {"brief"}),
        ('{"label": "fees", "answer": "9 EUR", "sources": ["x.md"], "disclaimer": "This is not financial advice."}',
         {"grounded"}),
        ("intent: fees | answer: 9 EUR | sources: [fees.md]", LABELLED),
    ],
)  # fmt: skip
def test_the_json_contract(output: str, failed: set[str]) -> None:
    checks, errors = load_contract(JSON, LABELS).check(FEES, output, ("fees.md",))
    assert {name for name, ok in checks.items() if not ok} == failed
    assert errors == {}


def test_a_knowledge_slice_routes_its_failure_to_the_retrieval_pipeline(tmp_path: Path) -> None:
    body = minimal(slices=[{"name": "parses", "assert": "parses"},
                           {"name": "facts", "cases": {"has": "facts"}, "signal": "knowledge",
                            "assert": {"type": "contains_facts", "field": "text"}}])  # fmt: skip
    contract = load_contract(write(tmp_path, body))
    case = Case("c", "q", "fees", "2 EUR", ("fees.md",), extra={"facts": ["2 EUR", "fifth withdrawal"]})
    checks, _ = contract.check(case, '{"text": "It costs 2 eur."}', ("fees.md",))
    assert checks == {"parses": True, "facts": False}
    indexed = {"fees.md"}
    route, docs, why = route_case(case.gold_docs, ("fees.md",), checks, indexed, (), contract.knowledge_slices)
    assert (route, docs) == ("retrieval", ("fees.md",)) and "knowledge signal facts" in why
    stale = route_case(case.gold_docs, ("fees.md",), checks, indexed, {"fees.md"}, contract.knowledge_slices)
    assert stale[0] == "stale"
    assert contract.check(case, '{"text": "2 EUR after the fifth  Withdrawal"}', ())[0]["facts"]
    assert "facts" not in contract.check(FEES, '{"text": "x"}', ())[0]  # a case without facts is not in the slice


def raises_on_refusals(answer: dict | None, output: str, case: Case | None, retrieved: tuple) -> bool:
    if case is not None and case.intent == "out_of_scope":
        raise RuntimeError("no rule for refusals")
    return bool(answer) and answer.get("text") == "ok"


def test_an_assertion_that_raises_fails_that_case_only_with_its_error(tmp_path: Path) -> None:
    body = minimal(slices=[{"name": "parses", "assert": "parses"},
                           {"name": "custom", "assert": {"type": "python", "needs_case": True,
                            "function": "tests.behaviour.test_contract:raises_on_refusals"}}])  # fmt: skip
    contract = load_contract(write(tmp_path, body))
    assert contract.check(FEES, '{"text": "ok"}', ()) == ({"parses": True, "custom": True}, {})
    checks, errors = contract.check(OOS, '{"text": "ok"}', ())
    assert checks == {"parses": True, "custom": False}
    assert errors == {"custom": "RuntimeError: no rule for refusals"}
    assert contract.live_slices == ("parses",)  # needs the case: not checked live unless a live form is declared


@pytest.mark.parametrize(
    ("spec", "value", "passed"),
    [
        ({"type": "regex", "pattern": r"\d+ EUR"}, "it is 9 EUR", True),
        ({"type": "regex", "pattern": r"\d+ EUR", "full": True}, "it is 9 EUR", False),
        ({"type": "regex", "pattern": "eur", "ignore_case": True}, "9 EUR", True),
        ({"type": "contains", "text": ["9 eur", "swift"]}, "SWIFT costs 9  EUR", True),
        ({"type": "contains", "text": "sepa"}, "SWIFT costs 9 EUR", False),
        ({"type": "not_contains", "text": ["guarantee"]}, "We GUARANTEE it", False),
        ({"type": "max_length", "chars": 5}, "123456", False),
        ({"type": "max_length", "words": 2, "chars": 100}, "two words", True),
        ({"type": "one_of", "values": ["a", "9 EUR"]}, "9 EUR", True),
        ({"type": "json_schema", "schema": {"type": "string", "maxLength": 3}}, "9 EUR", False),
        ({"type": "equals", "value": "9 EUR"}, "9 EUR", True),
    ],
)
def test_each_field_assertion(spec: dict, value: str, passed: bool, tmp_path: Path) -> None:
    slice_ = {"name": "s", "assert": {**spec, "field": "text"}}
    contract = load_contract(write(tmp_path, minimal(slices=[slice_])))
    assert contract.check(FEES, json.dumps({"text": value}), ())[0] == {"s": passed}
    assert contract.check(FEES, "not json", ())[0] == {"s": False}  # a field of an answer that does not parse


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"contract": 2}, "field 'contract': expected 1"),
        ({"colour": "red"}, "field 'colour': unknown"),
        ({"answer": {"format": "xml"}}, "answer: field 'format': expected 'line' or 'json'"),
        ({"answer": {"format": "line", "pattern": "(unclosed"}}, "field 'pattern': not a regular expression"),
        ({"answer": {"format": "line", "pattern": "^(.*)$"}}, "expected a regular expression with named groups"),
        ({"answer": {"format": "json", "schema": {"type": "strin"}}}, "field 'schema': not a valid JSON Schema"),
        ({"roles": {"label": "x"}}, "field 'roles'"),
        ({"refusal": {"tone": "sorry"}}, "field 'refusal'"),
        ({"target": {"json": []}}, "field 'target.json'"),
        ({"slices": []}, "field 'slices': expected a non-empty list"),
        ({"slices": [{"name": "Bad Name", "assert": "parses"}]}, "field 'name': expected a lower-case identifier"),
        ({"slices": [{"name": "a", "assert": "parses"}, {"name": "a", "assert": "parses"}]}, "slice 'a': field 'name'"),
        ({"slices": [{"name": "a", "assert": "shouts"}]}, "slice 'a': field 'assert': field 'type': unknown 'shouts'"),
        ({"slices": [{"name": "a", "assert": {"type": "regex", "field": "text"}}]},
         "slice 'a': field 'assert': field 'pattern': missing"),
        ({"slices": [{"name": "a", "assert": {"type": "regex", "pattern": "x", "feild": "t"}}]},
         "slice 'a': field 'assert': field 'feild': unknown"),
        ({"slices": [{"name": "a", "assert": {"type": "max_length", "chars": 0}}]}, "slice 'a': field 'assert'"),
        ({"slices": [{"name": "a", "assert": "parses", "signal": "both"}]}, "slice 'a': field 'signal'"),
        ({"slices": [{"name": "a", "assert": "parses", "cases": "some"}]}, "slice 'a': field 'cases'"),
        ({"slices": [{"name": "a", "assert": {"type": "python", "function": "no.such.module:f"}}]},
         "slice 'a': field 'assert': field 'function': cannot import 'no.such.module:f'"),
        ({"slices": [{"name": "a", "assert": {"type": "equals", "field": "text", "case_field": "intent"},
                      "live": True}]}, "slice 'a': field 'live': the assertion needs the case"),
        ({"slices": [{"name": "a", "assert": "parses",
                      "live": {"type": "cites_retrieved", "field": "text"}}]}, "slice 'a': field 'live'"),
    ],
)  # fmt: skip
def test_a_declaration_error_names_the_file_the_slice_and_the_field(tmp_path: Path, change: dict,
                                                                    message: str) -> None:  # fmt: skip
    path = write(tmp_path, minimal(**change))
    with pytest.raises(ContractError) as err:
        load_contract(path)
    assert str(err.value).startswith(str(path)), err.value
    assert message in str(err.value), err.value


def test_an_unreadable_contract_names_its_path(tmp_path: Path) -> None:
    with pytest.raises(ContractError, match="cannot read the contract"):
        load_contract(tmp_path / "missing.yaml")
    (tmp_path / "bad.yaml").write_text("slices: [")
    with pytest.raises(ContractError, match=r"bad\.yaml: not valid YAML"):
        load_contract(tmp_path / "bad.yaml")


def test_every_type_is_reachable_from_a_declaration() -> None:
    from components.behaviour.assertions import TYPES

    assert {"equals", "one_of", "regex", "contains", "not_contains", "json_schema", "cites_retrieved", "refusal",
            "contains_facts", "max_length", "python", "parses"} <= set(TYPES)  # fmt: skip
    with pytest.raises(ContractError, match="expected a type name or a mapping"):
        build_assertion(3, "here")


def test_the_contract_is_reloaded_when_its_file_changes(tmp_path: Path) -> None:
    path = write(tmp_path, minimal())
    first: Contract = load_contract(path)
    assert load_contract(path) is first
    import os

    path.write_text(json.dumps(minimal(name="renamed")))
    os.utime(path, ns=(first_ns := path.stat().st_mtime_ns + 10**9, first_ns))
    assert load_contract(path).name == "renamed"


def test_an_assertion_error_is_in_the_case_row_of_the_evaluation_table(tmp_path: Path) -> None:
    from components.behaviour.checks import CaseOutcome
    from components.behaviour.reports import case_rows

    body = minimal(slices=[{"name": "custom", "assert": {"type": "python", "needs_case": True,
                            "function": "tests.behaviour.test_contract:raises_on_refusals"}}])  # fmt: skip
    checks, errors = load_contract(write(tmp_path, body)).check(OOS, '{"text": "ok"}', ())
    outcome = CaseOutcome(OOS.id, OOS.question, OOS.intent, (), (), '{"text": "ok"}', checks, "behaviour",
                          errors=errors, group="s9")  # fmt: skip
    (row,) = case_rows([outcome])
    assert (row["failed_slices"], row["errors"], row["group"]) == ("custom", "custom: RuntimeError: no rule for "
                                                                   "refusals", "s9")  # fmt: skip
