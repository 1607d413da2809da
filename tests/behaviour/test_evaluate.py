"""Evaluation on the real stack (tiny index, tiny model built from nothing): each failing case's route (stale,
missing, retrieval, behaviour) and the actions the evaluation takes."""

from __future__ import annotations

import pytest

from components.behaviour.assistant import Generator, generator_identity
from components.behaviour.contract import contract_for
from components.behaviour.evaluate import run_cases, summarise
from components.behaviour.finetune import train_lora, training_pairs
from components.behaviour.pipeline import Model
from components.behaviour.suite import Case
from components.config import FinetuneParams, RegressionParams, load_params
from components.knowledge.retrieval import Retriever
from tests.conftest import build_tiny_model
from tests.helpers import DOCS, Deployment

pytestmark = pytest.mark.slow

CASES = [
    Case("c1", "How much does a SWIFT transfer cost?", "fees", "9 EUR", ("fees.md",)),
    Case("c2", "I lost my card, what do I do?", "card_lost", "Freeze it in the app", ("cards/lost-card.md",)),
    Case("c3", "When is support open?", "app_support", "8:00 to 20:00", ("support.txt",)),
    Case("c4", "Do you offer mortgages?", "out_of_scope", None, ()),
]
LENIENT = RegressionParams(min_cases=2, min_effect=0.05, floors={"format": 0.9})


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A deployment whose assistant has learned the four cases (so any later failure has another cause)."""
    root = tmp_path_factory.mktemp("eval")
    dep = Deployment.create(root)
    build_tiny_model(root / "base")
    dep.write_params(generator={"model": "base", "max_new_tokens": 90, "context_chunks": 2})
    dep.index()
    params = load_params(dep.params_file)
    gen = Generator(params)
    with Retriever(params) as r:
        hits = r.search([c.question for c in CASES], 2)
    pairs = training_pairs(CASES, hits, params.generator, contract_for(params))
    assert len(pairs) == 4
    ft = FinetuneParams(r=8, alpha=16, dropout=0.0, learning_rate=1e-2, batch_size=4, epochs=400)
    gen.model, _ = train_lora(gen.model, gen.tokenizer, pairs, ft)
    return dep, gen


def _evaluate(dep: Deployment, gen, baseline=None, cases=CASES, k=2, changed=None, regression=LENIENT):
    params = load_params(dep.params_file)
    with Retriever(params) as r:
        contract = contract_for(params)
        model = Model(gen, "test", None, generator_identity(params))
        outcomes = run_cases(cases, r, model, params.generator, k, contract, changed=changed)
        return summarise(outcomes, baseline, regression, "test", r.version, contract)


def test_untrained_base_model_breaches_the_format_floor(trained) -> None:
    dep, _ = trained
    base = Generator(load_params(dep.params_file))
    ev = _evaluate(dep, base)
    assert ev.summary["slices"]["format"]["pass_rate"] == 0.0
    assert ev.summary["decision"] == "finetune" and ev.summary["actions"] == ["finetune"]
    assert ev.summary["regressed_slices"] == ["format"]
    assert ev.summary["routes"] == {"pass": 0, "behaviour": 4, "retrieval": 0, "stale": 0, "missing": 0}


def test_a_document_edited_since_the_index_is_stale_and_asks_for_a_reindex_before_the_fine_tune(trained) -> None:
    """The documents on disk moved on since the published version: the case that needs the edited one is stale
    (a re-index fixes it), the others stay behaviour; both actions apply, in the order the loop runs them."""
    dep, _ = trained
    base = Generator(load_params(dep.params_file))
    ev = _evaluate(dep, base, changed={"support.txt"})
    stale = [o for o in ev.outcomes if o.route == "stale"]
    assert [o.id for o in stale] == ["c3"] and stale[0].route_docs == ("support.txt",)
    assert "support.txt changed since the published index version" in stale[0].reason
    assert ev.summary["routes"] == {"pass": 0, "behaviour": 3, "retrieval": 0, "stale": 1, "missing": 0}
    assert ev.summary["actions"] == ["reindex", "finetune"] and ev.summary["decision"] == "reindex"
    assert ev.summary["reindex_documents"] == ["support.txt"]
    assert "c3" not in ev.results["format"]  # the regression test counts only cases whose context was right


def test_a_gold_document_ranked_below_the_context_is_a_retrieval_miss_not_a_reindex(trained) -> None:
    """The gold document is indexed and current but the question ranks another first (k=1): the retriever's to
    fix. A re-index cannot change it, so it is never asked for; the document's rank is the evidence. Retrieval
    misses ask for a tuned retriever only when they are significant (here: surely below a floor)."""
    dep, gen = trained
    misses = [Case("c5", "How much does a SWIFT transfer cost?", "fees", "9 EUR", ("support.txt",)),
              Case("c6", "What does a SWIFT transfer cost?", "fees", "9 EUR", ("support.txt",))]  # fmt: skip
    ev = _evaluate(dep, gen, cases=misses, k=1)
    for o in ev.outcomes:
        assert o.route == "retrieval" and o.route_docs == ("support.txt",) and o.retrieved != ("support.txt",)
        assert o.gold_rank is not None and o.gold_rank > 1
        assert f"ranked {o.gold_rank} at the document level" in o.reason
    assert ev.summary["actions"] == [] and ev.summary["decision"] == "none"  # not significant: nothing to run
    assert ev.summary["reindex_documents"] == [] and ev.summary["missing_documents"] == []
    assert ev.summary["retrieval"]["recall_at_10"] == 1.0  # found deeper: the retriever can learn to rank it
    assert ev.summary["retrieval_test"]["slices"]["context_hit"]["pass_rate"] == 0.0
    floors = RegressionParams(min_cases=2, min_effect=0.05, floors={"context_hit": 0.9})
    breached = _evaluate(dep, gen, cases=misses, k=1, regression=floors)
    assert breached.summary["actions"] == ["tune_retriever"] and breached.summary["decision"] == "tune_retriever"
    assert breached.summary["retrieval_test"]["regressed"] == ["context_hit"]
    assert breached.results == {"format": {}, "intent": {}, "citation": {}, "refusal": {}}  # none had its context


def test_a_trained_model_passes_and_re_evaluating_it_never_triggers(trained) -> None:
    dep, gen = trained
    first = _evaluate(dep, gen)
    assert first.summary["routes"] == {"pass": 4, "behaviour": 0, "retrieval": 0, "stale": 0, "missing": 0}
    assert first.summary["retrieval"]["hit_at_k"] == 1.0
    again = _evaluate(dep, gen, baseline=first.results)
    assert again.summary["decision"] == "none"
    assert again.results == first.results  # greedy decoding: the same model gives the same outputs


def test_a_deleted_and_reindexed_document_is_missing_and_asks_for_it_to_be_written(trained) -> None:
    dep, gen = trained
    baseline = _evaluate(dep, gen).results
    (dep.docs / "support.txt").unlink()
    dep.index()
    ev = _evaluate(dep, gen, baseline=baseline)
    assert ev.summary["decision"] == "write_documents" and ev.summary["actions"] == ["write_documents"]
    assert ev.summary["missing_documents"] == ["support.txt"] and ev.summary["reindex_documents"] == []
    assert ev.summary["routes"]["missing"] == 1 and ev.summary["routes"]["retrieval"] == 0
    assert ev.summary["regressed_slices"] == []
    dep.write("support.txt", DOCS["support.txt"])
    dep.index()


def test_each_gate_case_is_a_trace_like_a_live_answer_linked_to_its_run(trained) -> None:
    """One trace per case in the evaluation experiment, with the live answer's spans and lineage tags, the case's
    checks as CODE assessments and its gold as expectations, linked to the evaluation's run: two evaluation runs'
    traces can be compared case by case."""
    from mlflow import MlflowClient

    from components.behaviour.evaluation_traces import trace_evaluation
    from components.config import Settings
    from components.tracking.mlflow_runs import log_evaluation_run, tracking_uri
    from components.tracking.trace_schema import (
        ANSWER_SPAN,
        CHECK_PREFIX,
        GENERATE_SPAN,
        ORIGIN_EVALUATION,
        RETRIEVE_SPAN,
        TAG_CASE_ID,
        TAG_INDEX_VERSION,
        TAG_ORIGIN,
    )

    dep, gen = trained
    params, settings = load_params(dep.params_file), Settings.from_env()
    client = MlflowClient(tracking_uri(params, settings))
    runs = []
    for _ in range(2):
        ev = _evaluate(dep, gen)
        run_id = log_evaluation_run(params, settings, ev.summary, [], {}, "test", None)
        ids = trace_evaluation(params, settings, ev.outcomes, run_id, (0.2, 1.0))
        assert len(ids) == len(CASES) == len(set(ids))
        runs.append((run_id, ev))
    exp = client.get_experiment_by_name(params.tracking.evaluation_experiment)
    for run_id, ev in runs:
        traces = client.search_traces(locations=[exp.experiment_id], run_id=run_id)
        assert len(traces) == len(CASES)
        by_case = {t.info.tags[TAG_CASE_ID]: t for t in traces}
        for o in ev.outcomes:
            t = by_case[o.id]
            assert t.info.tags[TAG_ORIGIN] == ORIGIN_EVALUATION
            assert t.info.tags[TAG_INDEX_VERSION] == str(ev.summary["index_version"])
            spans = {s.name: s for s in t.data.spans}
            assert set(spans) == {ANSWER_SPAN, RETRIEVE_SPAN, GENERATE_SPAN}
            assert [d["metadata"]["doc_uri"] for d in spans[RETRIEVE_SPAN].outputs] == [h["doc"] for h in o.hits]
            assert spans[GENERATE_SPAN].outputs == {"text": o.output}
            assert spans[GENERATE_SPAN].attributes["tokens_in"] > 0
            assert o.answered is not None  # the trace is the answer pipeline's record, not a re-count of it
            assert spans[GENERATE_SPAN].attributes["tokens_in"] == o.answered.tokens_in
            assert spans[GENERATE_SPAN].attributes["tokens_out"] == o.answered.tokens_out
            assert spans[GENERATE_SPAN].inputs == {"prompt": o.answered.prompt}
            mine = [a for a in t.info.assessments if a.name.startswith(CHECK_PREFIX)]
            assert {a.name[len(CHECK_PREFIX) :]: a.value for a in mine} == o.checks
            gold = {a.name: a.value for a in t.info.assessments if not a.name.startswith(CHECK_PREFIX)}
            assert gold == {"intent": o.intent, "gold_docs": list(o.gold_docs)}
