"""Hard-example mining for a fine-tune: the training set's (prompt, target) pairs, plus extra copies of each
training case the champion fails on behaviour. Never a gate case: they come from train.jsonl, proven disjoint."""

from __future__ import annotations

from pathlib import Path

from components.behaviour.checks import CaseOutcome
from components.behaviour.contract import Contract, contract_for
from components.behaviour.finetune import training_pairs
from components.behaviour.suite import Case
from components.config import GeneratorParams, Params, Settings
from components.routes import BEHAVIOUR

Pairs = list[tuple[str, str]]


def behaviour_failures(outcomes: list[CaseOutcome]) -> list[int]:
    """Indexes of the cases whose right context was retrieved yet the output was wrong: what weights can fix (a
    stale, missing or retrieval failure is the retrieval pipeline's to fix; a case that passes needs no more
    weight)."""
    return [i for i, o in enumerate(outcomes) if o.route == BEHAVIOUR]


def with_hard_cases(train: list[Case], hits: list[list[dict]], outcomes: list[CaseOutcome] | None,
                    generator: GeneratorParams, repeats: int, contract: Contract) -> tuple[Pairs, int]:  # fmt: skip
    """(every training pair plus `repeats` more copies of the pairs of the cases failing on behaviour, how many
    cases failed). `outcomes` None (no champion yet) or `repeats` 0 mines nothing."""
    if len(hits) != len(train) or (outcomes is not None and len(outcomes) != len(train)):
        raise ValueError(f"{len(train)} training cases need as many hits and outcomes, got {len(hits)} hits and "
                         f"{'no' if outcomes is None else len(outcomes)} outcomes")  # fmt: skip
    pairs = training_pairs(train, hits, generator, contract)
    if not repeats or outcomes is None:
        return pairs, 0
    failing = behaviour_failures(outcomes)
    extra = training_pairs([train[i] for i in failing], [hits[i] for i in failing], generator, contract)
    return pairs + extra * repeats, len(failing)


def mine_training_pairs(params: Params, settings: Settings, champion_adapter: Path | None) -> tuple[Pairs, int]:
    """The fine-tune's training pairs: the training set retrieved once, and, with a champion (its adapter), answered
    by it to find its behaviour failures. With no champion yet (None) there is nothing to mine: the untrained base
    model fails every case alike, so repeating all of them is no signal."""
    from components.behaviour.evaluate import run_cases
    from components.behaviour.loop import load_suite
    from components.behaviour.pipeline import load_model
    from components.knowledge.retrieval import Retriever

    _, suite = load_suite(params)
    train = [c for c in suite if all((params.paths.docs / d).is_file() for d in c.gold_docs)]  # a target cites it
    k = params.generator.context_chunks
    repeats = params.finetune.failing_case_repeats
    contract = contract_for(params)
    outcomes = None
    with Retriever(params, settings) as retriever:
        hits = retriever.search([c.question for c in train], max(k, params.finetune.gold_context_depth))
        if repeats and champion_adapter is not None:
            model = load_model(params, champion_adapter, "champion")
            outcomes = run_cases(train, retriever, model, params.generator, k, contract)
    return with_hard_cases(train, hits, outcomes, params.generator, repeats, contract)
