"""The behaviour path's steps with their I/O: load the suite, evaluate a model, build training pairs."""

from __future__ import annotations

import dataclasses
from pathlib import Path

from components.behaviour.assistant import generator_identity
from components.behaviour.contract import contract_for
from components.behaviour.evaluate import Evaluation, run_cases, summarise
from components.behaviour.pipeline import answer_batch, load_model
from components.behaviour.stats import Results
from components.behaviour.suite import Case, check_disjoint, load_cases, load_labels, suite_hash
from components.config import Params, Settings
from components.files import GATE_CASES, LABELS_FILE, TRAIN_CASES
from components.knowledge.retrieval import Retriever


def load_suite(params: Params) -> tuple[list[Case], list[Case]]:
    """(gate, train), validated and proven disjoint: an overlap is an error on every run. A gold document absent
    from the docs folder is no error here: a deleted document is what the `missing` route reports (its name in
    the evaluation's `missing_documents`, a typo included), and the fine-tune leaves its cases out."""
    root = params.paths.behaviour
    labels = set(load_labels(root / LABELS_FILE))
    gate = load_cases(root / GATE_CASES, labels)
    train = load_cases(root / TRAIN_CASES, labels)
    check_disjoint(gate, train)
    return gate, train


def data_lineage(params: Params) -> dict[str, str]:
    root = params.paths.behaviour
    return {
        "base_model": generator_identity(params),
        "gate_data_md5": suite_hash(root / GATE_CASES),
        "train_data_md5": suite_hash(root / TRAIN_CASES),
        "contract_md5": contract_for(params).digest,
    }


def finetune_evidence(params: Params, parent_version: str) -> dict[str, str]:
    """What a fine-tune is a function of, as registry tags: training data, recipe, base model, contract and the
    parent it mines hard cases with. A candidate the gate rejected is found again by these (registry.rejected_with),
    so the same evidence never starts the same training twice."""
    import hashlib
    import json

    lineage = data_lineage(params)
    recipe = json.dumps(params.finetune.model_dump(mode="json"), sort_keys=True)
    return {"train_data_md5": lineage["train_data_md5"], "base_model": lineage["base_model"],
            "contract_md5": lineage["contract_md5"], "parent_version": parent_version,
            "recipe_md5": hashlib.md5(recipe.encode()).hexdigest()}  # fmt: skip


def changed_documents(params: Params, settings: Settings) -> set[str]:
    """Documents changed on disk since the published index version (a case failing on one is `stale`)."""
    from components.knowledge.indexer import changed_since_published
    from components.knowledge.session import open_index

    with open_index(params, settings, lock=False) as s:
        return changed_since_published(s)


def evaluate_model(params: Params, settings: Settings, adapter: Path | None, baseline: Results | None,
                   model_version: str, retrieval_baseline: Results | None = None) -> Evaluation:  # fmt: skip
    """The gate set answered by the generator (with `adapter`) on the published index, routed and summarised;
    the baselines are the champion's recorded behaviour and retrieval results (None: floors only)."""
    gate, _ = load_suite(params)
    contract = contract_for(params)
    model = load_model(params, adapter, model_version)
    seconds: dict[str, float] = {}
    changed = changed_documents(params, settings)
    with Retriever(params, settings) as retriever:
        k, reg = params.generator.context_chunks, params.regression
        outcomes = run_cases(gate, retriever, model, params.generator, k, contract, seconds, changed,
                             reg.recall_k)  # fmt: skip
        ev = summarise(outcomes, baseline, reg, model_version, retriever.version, contract, retrieval_baseline)
    return dataclasses.replace(ev, seconds=(seconds["retrieve"], seconds["generate"]))


def answer_question(params: Params, settings: Settings, question: str, adapter: Path | None,
                    model_version: str) -> dict:  # fmt: skip
    """`ragloop ask`: the answer, what it cites, the retrieved sources, and which model and index answered (the
    answer pipeline's record, as `ragloop api` serves it)."""
    with Retriever(params, settings) as retriever:  # first: no index published fails before the model loads
        model = load_model(params, adapter, model_version)
        (answered,) = answer_batch([question], retriever, model, contract_for(params), params.generator)
    return {
        "answer": answered.answer,
        "intent": answered.intent,
        "cited": list(answered.cited),
        "sources": answered.sources(),
        "model_version": answered.model_version,
        "index_version": answered.index_version,
        "raw": answered.raw,
    }
