"""A second team's contract through the whole loop: an assistant that must answer in JSON with a disclaimer
(data/behaviour/examples/json-disclaimer.yaml). The base model breaks it, the evaluation says behaviour regressed
on the declared slices, the fine-tune learns the JSON targets the contract writes, the gate promotes it, and the
champion then passes, and the API's live checks are the contract's own."""

from __future__ import annotations

import pytest

from components.behaviour.contract import contract_for
from components.config import Settings, load_params
from components.tracking import registry
from tests.behaviour.test_loop import QUESTIONS, write_suite
from tests.conftest import TINY, build_tiny_model
from tests.helpers import REPO, Deployment

pytestmark = pytest.mark.slow

EXAMPLE = REPO / "data/behaviour/examples/json-disclaimer.yaml"
SLICES = {"schema", "disclaimer", "label", "grounded", "refusal", "brief", "no_guarantees"}


@pytest.fixture(scope="module")
def json_dep(tmp_path_factory, prefect_server) -> Deployment:
    root = tmp_path_factory.mktemp("json-loop")
    dep = Deployment.create(root)
    write_suite(dep.root / "behaviour")
    (dep.root / "behaviour" / "contract.yaml").write_bytes(EXAMPLE.read_bytes())
    # a JSON answer is about 100 tokens of this tokenizer (the line one 50): a longer window than TINY's 256
    build_tiny_model(root / "base", TINY.model_copy(update={"context": 512}))
    dep.write_params(
        paths={"docs": "docs", "index": "state/index", "metrics": "state/metrics", "mlflow": "state/mlflow",
               "behaviour": "behaviour", "models": "state/models"},
        generator={"model": "base", "max_new_tokens": 120, "context_chunks": 2},
        retrieval={"mode": "dense"},
        regression={"min_cases": 3, "min_effect": 0.2, "floors": {"schema": 0.6, "disclaimer": 0.6}},
        finetune={"r": 8, "alpha": 16, "dropout": 0.0, "learning_rate": 1e-2, "batch_size": 12, "epochs": 400},
    )  # fmt: skip
    dep.index()
    return dep


def test_a_json_contract_regresses_is_fine_tuned_and_gated(json_dep: Deployment) -> None:
    from flows.behaviour import evaluate, finetune

    p = str(json_dep.params_file)
    params = load_params(json_dep.params_file)
    assert contract_for(params).name == "json-disclaimer"

    before = evaluate(params_file=p)
    assert set(before["slices"]) == SLICES  # the declared slices, none of the line contract's
    assert before["contract"]["name"] == "json-disclaimer"
    assert before["decision"] == "finetune"
    assert {"schema", "disclaimer"} <= set(before["regressed_slices"])  # floors breached: the base writes no JSON
    assert before["slices"]["schema"]["pass_rate"] == 0.0

    result = finetune(params_file=p)
    assert result["promoted"], result["reasons"]
    candidate = result["candidate"]["slices"]
    assert candidate["schema"]["pass_rate"] >= 0.6 and candidate["disclaimer"]["pass_rate"] >= 0.6, candidate
    champ = registry.champion(params, Settings.from_env())
    assert champ is not None and champ.version == result["version"]

    after = evaluate(params_file=p)
    assert after["model_version"] == f"v{champ.version}"
    assert after["decision"] == "none"
    assert after["slices"]["schema"] == candidate["schema"]


def test_the_champion_answers_in_json_and_is_checked_live_by_the_contract(json_dep: Deployment) -> None:
    from components.serving.engine import Engine

    params = load_params(json_dep.params_file)
    assert registry.champion(params, Settings.from_env()) is not None, "runs after the loop test"
    engine = Engine(params, Settings.from_env())
    try:
        question = "Hello, " + QUESTIONS["fees"][2][0]  # a gate wording (the tiny model learns fees and refusals)
        answered = engine.answer(question)
    finally:
        engine.close()
    assert set(answered.checks) == {"schema", "disclaimer", "brief", "no_guarantees", "label", "grounded"}
    reply = contract_for(params).parse(answered.raw)
    assert reply is not None, answered.raw
    assert reply["disclaimer"] == "This is not financial advice."
    assert answered.answer == reply["answer"] and answered.cited == tuple(reply["sources"])
    assert answered.checks["schema"] and answered.checks["disclaimer"], answered.raw
