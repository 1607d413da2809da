"""The retriever that learns, on a tiny real stack (a random one-layer BERT as the embedder, six documents, labelled
queries): pairs and the gate-question refusal, seeded training, the candidate's own index, the gate, promotion
through the registry, rollback without re-embedding, the memory of a rejected candidate, and --if-needed."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from components.behaviour.retriever_tuning import (
    TuningError,
    build_pairs,
    check_not_gate,
    train_retriever,
    training_questions,
)
from components.config import Settings
from components.files import EVALUATION_METRICS, RETRIEVER_METRICS
from components.knowledge.retrieval import Retriever
from components.knowledge.retriever_pointer import read_pointer
from components.knowledge.retriever_serving import build_candidate_index, candidate_params
from tests.helpers_retriever import TOPICS, build_tiny_embedder, tiny_retrieval_deployment, write_jsonl


@pytest.fixture(scope="session")
def tiny_embedder(tmp_path_factory) -> Path:
    return build_tiny_embedder(tmp_path_factory.mktemp("embedder") / "tiny")


@pytest.fixture(scope="module")
def indexed(tmp_path_factory, tiny_embedder):
    dep = tiny_retrieval_deployment(tmp_path_factory.mktemp("retriever"), tiny_embedder)
    dep.index()
    return dep


def test_pairs_hold_the_gold_documents_best_chunk(indexed) -> None:
    params = indexed.params()
    questions = training_questions(params)
    check_not_gate(params, questions)
    with Retriever(params) as retriever:
        pairs = build_pairs(retriever, questions)
    assert len(pairs) == len(questions) == 4 * len(TOPICS)
    for pair in pairs:
        text, word = TOPICS[pair.doc]
        assert word in pair.question and pair.positive.split()[-1] in text  # the gold document's own chunk
    assert pairs == sorted(pairs)


def test_a_gate_question_among_the_training_questions_is_refused_with_file_and_line(indexed) -> None:
    params = indexed.params()
    gate_row = json.loads((params.paths.retrieval_queries or Path()).read_text().splitlines()[2])
    train = params.paths.retrieval_train
    assert train is not None
    extra = {"id": "leak", "query": gate_row["query"].upper() + "!", "relevant": gate_row["relevant"]}
    leaky = write_jsonl(train.with_name("leaky.jsonl"), [{"id": "ok", "query": "fine", "relevant": ["fees.md"]}, extra])
    questions = training_questions(params.model_copy(update={"paths": params.paths.model_copy(
        update={"retrieval_train": leaky})}))  # fmt: skip
    where = r"leaky.jsonl:2: field 'question': .* is a gate question \(.*gate.jsonl:3\)"
    with pytest.raises(TuningError, match=where):
        check_not_gate(params, questions)


def test_training_is_fixed_by_steps_and_seed(indexed, tiny_embedder, tmp_path) -> None:
    import torch
    from safetensors.torch import load_file

    params = indexed.params()
    with Retriever(params) as retriever:
        pairs = build_pairs(retriever, training_questions(params))
    recipe = params.retriever.model_copy(update={"steps": 2})
    logs = [train_retriever(str(tiny_embedder), pairs, recipe, tmp_path / name) for name in ("a", "b")]
    train_retriever(str(tiny_embedder), pairs, recipe.model_copy(update={"seed": 1}), tmp_path / "c")
    a, b, c = (load_file(tmp_path / name / "model.safetensors") for name in ("a", "b", "c"))
    assert a.keys() == b.keys() and all(torch.allclose(a[k], b[k], atol=0, rtol=0) for k in a)
    assert not all(torch.equal(a[k], c[k]) for k in a)  # another seed, another order: other weights
    assert logs[0].steps == 2 and len(logs[0].losses) == 2 and logs[0].losses == logs[1].losses
    assert (tmp_path / "a" / "modules.json").is_file() and not (tmp_path / "a" / "README.md").exists()


def test_the_candidate_is_embedded_apart_and_the_published_version_is_untouched(indexed, tiny_embedder) -> None:
    params = indexed.params()
    with indexed.session() as s:
        before = (s.manifest.published(), s.manifest.version(s.manifest.published()))
    report = build_candidate_index(params, tiny_embedder)
    assert report["published"] and report["chunks"]["embedded"] == len(TOPICS)
    with indexed.session() as s:
        assert (s.manifest.published(), s.manifest.version(s.manifest.published())) == before
    with Retriever(candidate_params(params, tiny_embedder)) as candidate:
        assert candidate.info.embedder.startswith(str(tiny_embedder)) and candidate.version == 1


@pytest.mark.slow
def test_a_better_retriever_is_promoted_published_and_rolled_back_without_reembedding(
    tmp_path, tiny_embedder, prefect_server
) -> None:
    from components.tracking import registry
    from flows.retriever import rollback_retriever, tune_retriever

    dep = tiny_retrieval_deployment(tmp_path, tiny_embedder)
    dep.index()
    params, settings = dep.params(), Settings.from_env()
    with dep.session() as s:
        base_identity = s.embedder_id
    result = tune_retriever(params_file=str(dep.params_file))
    assert result["promoted"], result["reasons"]
    assert result["rates"]["labelled.context_hit"][1] > result["rates"]["labelled.context_hit"][0]
    assert result["aliases"] == {"champion": "1", "previous": None}
    assert result["index"]["copied_vectors"] == len(TOPICS) and result["index"]["chunks"]["embedded"] == 0
    champion, previous = read_pointer(params)
    assert (champion.version, champion.folder, previous and previous.version) == ("1", "retriever/v1", "base")
    with Retriever(params) as served:  # every reader follows the published version's embedder
        assert served.version == 2 and served.info.embedder.startswith(str(params.paths.models / "retriever/v1"))
    assert json.loads((params.paths.metrics / RETRIEVER_METRICS).read_text())["promoted"] is True
    versions = registry.client_for(params, settings).search_model_versions("name='ragloop-retriever'")
    assert [v.tags["gate"] for v in versions] == ["promoted"]

    back = rollback_retriever(params, settings)
    assert back["champion"] == "base" and back["aliases"] == {"champion": None, "previous": "1"}
    assert back["index"]["published"] and back["index"]["chunks"]["embedded"] == 0  # the retained collection
    with dep.session() as s:
        assert s.embedder_id == base_identity
        assert s.manifest.version(s.manifest.published()).embedder == base_identity  # type: ignore[union-attr]

    import shutil

    shutil.rmtree(params.paths.models / "retriever" / "v1")  # the registry holds it: fetched, same vectors reused
    again = rollback_retriever(params, settings)
    assert again["champion"] == "1" and again["aliases"] == {"champion": "1", "previous": None}
    assert again["index"]["chunks"]["embedded"] == 0 and (params.paths.models / "retriever/v1/modules.json").is_file()


@pytest.mark.slow
def test_a_rejected_candidate_is_not_trained_again_on_the_same_evidence(tmp_path, tiny_embedder, prefect_server):
    from flows.retriever import tune_retriever

    dep = tiny_retrieval_deployment(tmp_path, tiny_embedder, steps=2, learning_rate=1e-9)  # learns nothing
    dep.index()
    first = tune_retriever(params_file=str(dep.params_file))
    assert not first["promoted"] and "no slice is significantly better" in first["reasons"][0]
    second = tune_retriever(params_file=str(dep.params_file))
    assert second["skipped"] and second["rejected_version"] == "1" and second["evidence"] == first["evidence"]
    assert "version 1, which the gate rejected" in second["why"] and "more training cases" in second["why"]
    assert read_pointer(dep.params())[0].version == "base"
    folder = dep.params().paths.models / "retriever" / "candidate"
    assert [p.name for p in folder.iterdir()] == ["skipped.json"]


@pytest.mark.parametrize(
    ("evaluation", "needed"),
    [
        (None, True),  # no evaluation yet (a deployment with labelled queries alone has none)
        ({"decision": "reindex", "actions": ["reindex", "tune_retriever"]}, True),
        ({"decision": "finetune", "actions": ["finetune"]}, False),
        ({"decision": "none", "actions": []}, False),
        ({"decision": "tune_retriever"}, True),  # an evaluation from before `actions`
        ({"decision": "reindex"}, False),
    ],
)
def test_if_needed_reads_the_evaluations_actions(deployment, evaluation, needed) -> None:
    from components.behaviour.retriever_metrics import tuning_not_needed

    params = deployment.params()
    if evaluation is not None:
        write_jsonl(params.paths.metrics / EVALUATION_METRICS, [evaluation])
    why = tuning_not_needed(params)
    assert (why is None) == needed
    assert needed or "tune_retriever" in (why or "")


@pytest.mark.slow
def test_the_command_skips_when_not_asked_and_has_no_rollback_at_first(tmp_path, tiny_embedder, prefect_server):
    """`ragloop tune-retriever --if-needed --json` as the DVC stage runs it: no training, a stale candidate cleared,
    the reason printed and in retriever.json; `--rollback` with no previous retriever exits 1 and says so."""
    from typer.testing import CliRunner

    from flows.cli import app

    dep = tiny_retrieval_deployment(tmp_path, tiny_embedder)
    params = dep.params()
    write_jsonl(params.paths.metrics / EVALUATION_METRICS, [{"decision": "finetune", "actions": ["finetune"]}])
    stale = params.paths.models / "retriever" / "candidate" / "model.safetensors"
    stale.parent.mkdir(parents=True)
    stale.write_text("an older run's model")
    done = CliRunner().invoke(app, ["tune-retriever", "--if-needed", "--json", "--params", str(dep.params_file)])
    assert done.exit_code == 0, done.output
    result = json.loads(done.stdout)
    assert result == {"skipped": True, "why": "the last evaluation asked for finetune (decision 'finetune'), not "
                      "'tune_retriever'"}  # fmt: skip
    assert [p.name for p in stale.parent.iterdir()] == ["skipped.json"]
    assert json.loads((params.paths.metrics / RETRIEVER_METRICS).read_text()) == result
    back = CliRunner().invoke(app, ["tune-retriever", "--rollback", "--params", str(dep.params_file)])
    assert back.exit_code == 1 and "no previous retriever to roll back to (champion: base)" in back.output


def test_a_behaviour_suite_gives_the_training_cases_and_the_gate_questions(tmp_path, tiny_embedder) -> None:
    """With a gate set: training questions are the in-scope train.jsonl cases with gold documents, the gate
    questions the gate set's and the labelled queries'; the labelled queries of tests/behaviour/test_loop.py repeat
    training questions, which a retriever must never train on."""
    from components.behaviour import retriever_gate as rg
    from tests.behaviour.test_loop import QUESTIONS, write_suite
    from tests.helpers import DOCS, Deployment

    dep = Deployment.create(tmp_path)
    write_suite(tmp_path / "behaviour")
    paths = {"docs": "docs", "index": "state/index", "metrics": "state/metrics", "mlflow": "state/mlflow",
             "behaviour": "behaviour", "models": "state/models"}  # fmt: skip
    dep.write_params(paths=paths, embedder={"model": str(tiny_embedder)})
    dep.index()
    params = dep.params()
    questions = training_questions(params)
    in_scope = [w for _, (doc, _, wordings) in QUESTIONS.items() if doc for w in wordings]
    assert len(questions) == 2 * len(in_scope) and all(q.where.split(":")[0].endswith("train.jsonl") for q in questions)
    check_not_gate(params, questions)
    gate = rg.gate_questions(params)
    assert [q.source for q in gate] == ["retrieval"] * len(in_scope) and rg.has_suite(params)
    with Retriever(params) as r:
        results = rg.retrieval_results(params, r, gate)
    assert set(results) == {"context_hit", f"recall_at_{params.regression.recall_k}"}
    assert len(results["context_hit"]) == len(in_scope) and len(DOCS) == 3

    dep.write_params(paths={**paths, "retrieval_queries": "behaviour/retrieval.jsonl"},
                     embedder={"model": str(tiny_embedder)})  # fmt: skip
    where = r"train.jsonl:1: field 'question'.* is a gate question \(.*retrieval.jsonl:1\)"
    with pytest.raises(TuningError, match=where):
        check_not_gate(dep.params(), questions)
