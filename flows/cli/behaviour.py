"""`ragloop` commands of the behaviour path: base-model, evaluate, finetune, gate, promote, rollback, and run (the
whole loop); with the evaluation's table. DVC's stages base_model, evaluate, finetune and gate call them."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from flows.cli.common import JsonOpt, ParamsOpt, ReasonOpt, dict_table, emit, exits, fail, load, on_prefect_api


def base_model(params_file: ParamsOpt = Path("params.yaml"), as_json: JsonOpt = False) -> None:
    """Build the offline default generator (BPE tokenizer + small Llama pretrained on the corpus)."""
    from components.behaviour.base_model import build_base_model, corpus_texts, pretrain_chunking
    from components.behaviour.training import machine_info
    from components.config import Settings
    from components.tracking.mlflow_runs import log_base_model_run

    params = load(params_file)
    out = params.paths.models / "base"  # where generator.model points by default
    texts = corpus_texts(
        params.paths.docs, params.index.suffixes, params.index.max_file_bytes, pretrain_chunking(params)
    )
    info = {"path": str(out), **build_base_model(texts, out, params.base_model)}
    info["mlflow_run_id"] = log_base_model_run(params, Settings.from_env(), info, machine_info())
    emit(info, as_json, dict_table)
    if info["truncated"]:
        fail(f"truncated: base_model.max_seconds ({params.base_model.max_seconds} s) stopped pretraining after "
             f"{info['pretrain_steps']} of {info['pretrain_planned_steps']} steps; the model was saved but would not "
             "reproduce, so this stage fails (raise or remove the cap)", 3)  # fmt: skip


@on_prefect_api()
def evaluate(
    params_file: ParamsOpt = Path("params.yaml"), as_json: JsonOpt = False, reason: ReasonOpt = "manual"
) -> None:
    """Evaluate the champion on the gate set; route each failure (stale, missing, retrieval, behaviour) and decide
    the actions: reindex, write_documents, tune_retriever, finetune (the Prefect flow `evaluate`)."""
    from flows.behaviour import evaluate as evaluate_flow

    params = load(params_file)
    summary = evaluate_flow(params_file=str(params.source), reason=reason)
    emit(summary, as_json, evaluation_table)


@on_prefect_api()
def finetune(
    params_file: ParamsOpt = Path("params.yaml"),
    as_json: JsonOpt = False,
    if_needed: Annotated[
        bool, typer.Option("--if-needed", help="Only when the last evaluation decided 'finetune'; else record why not.")
    ] = False,
    run_gate: Annotated[
        bool, typer.Option("--gate/--no-gate", help="Gate (and maybe promote) the candidate, or leave it to `gate`.")
    ] = True,
    reason: ReasonOpt = "manual",
) -> None:
    """Train a LoRA candidate, register it, gate it against the champion, promote it only if it wins (the Prefect
    flow `finetune`, which writes data/metrics/finetune.json)."""
    from components.behaviour.training import TruncatedTraining
    from flows.behaviour import finetune as finetune_flow

    params = load(params_file)
    with exits({TruncatedTraining: 3}, prefix="truncated: "):
        result = finetune_flow(params_file=str(params.source), reason=reason, run_gate=run_gate, if_needed=if_needed)
    emit(result, as_json, dict_table)


@on_prefect_api()
def gate(
    version: Annotated[
        str | None, typer.Argument(help="The registered version to gate (default: the last fine-tune's).")
    ] = None,
    params_file: ParamsOpt = Path("params.yaml"),
    as_json: JsonOpt = False,
    if_needed: Annotated[
        bool, typer.Option("--if-needed", help="Only when the last fine-tune left an ungated candidate.")
    ] = False,
    calibrate: Annotated[
        bool,
        typer.Option(
            "--calibrate",
            help="First measure the seed noise: train a twin with finetune.seed + 1 (or reuse the stored measurement "
            "of the same recipe, data/metrics/calibration.json); a gain must exceed it.",
        ),
    ] = False,
) -> None:
    """Gate a registered candidate against the champion, case by case; promote it only if it wins (the Prefect
    flow `gate`, which writes data/metrics/gate.json)."""
    from components.behaviour.dvc_metrics import last_candidate

    params = load(params_file)
    if version is None and not if_needed:
        candidate, why = last_candidate(params)
        if candidate is None:
            fail(f"no candidate to gate: {why}; name a VERSION", 2)
    from flows.behaviour import gate as gate_flow

    with exits({RuntimeError: 1}):  # RegistryError, GateError, IndexMovedError among them
        result = gate_flow(version=version, params_file=str(params.source), if_needed=if_needed, calibrate=calibrate)
    emit(result, as_json, dict_table)


def promote(
    version: Annotated[str, typer.Argument(help="The registered model version to make champion.")],
    params_file: ParamsOpt = Path("params.yaml"),
    as_json: JsonOpt = False,
) -> None:
    """Move the `champion` alias to VERSION by hand (the old champion becomes `previous`)."""
    from components.config import Settings
    from components.tracking import registry

    params = load(params_file)
    emit(registry.promote(params, Settings.from_env(), version), as_json, dict_table)


def rollback(params_file: ParamsOpt = Path("params.yaml"), as_json: JsonOpt = False) -> None:
    """Restore the `previous` model as `champion`."""
    from components.config import Settings
    from components.tracking import registry

    params = load(params_file)
    with exits({registry.RegistryError: 1}):
        result = registry.rollback(params, Settings.from_env())
    emit(result, as_json, dict_table)


@on_prefect_api()
def run(params_file: ParamsOpt = Path("params.yaml"), as_json: JsonOpt = False) -> None:
    """The whole loop (the Prefect flow `pipeline`): reindex, evaluate, fine-tune only on a regression."""
    from flows.pipeline import pipeline

    params = load(params_file)
    emit(pipeline(params_file=str(params.source)), as_json, dict_table)


def evaluation_table(s: dict) -> Table:
    t = Table("slice", "pass rate", "95% interval", "n", title=f"{s['model_version']}: decision {s['decision']}")
    for name, v in s["slices"].items():
        t.add_row(name, f"{v['pass_rate']:.3f}", f"{v['ci_low']:.3f}-{v['ci_high']:.3f}", str(v["n"]))
    r = s["retrieval"]
    recall = next((f"{k.replace('_at_', '@')} {v:.3f}" for k, v in r.items() if k.startswith("recall_at_")), "")
    t.add_row("retrieval", f"hit@k {r['hit_at_k']:.3f}", f"mrr {r['mrr']:.3f} {recall}", "")
    t.add_row("routes", ", ".join(f"{k} {v}" for k, v in s["routes"].items()), "actions: "
              + (", ".join(s["actions"]) or "none"), str(sum(s["routes"].values())))  # fmt: skip
    labelled = s.get("labelled_retrieval")
    if labelled:  # paths.retrieval_queries
        m = labelled["metrics"]
        recall = next((f"{k} {v:.3f}" for k, v in m.items() if k.startswith("recall@")), "")
        t.add_row("labelled queries", recall, f"mrr {m['mrr']:.3f} ndcg@10 {m['ndcg@10']:.3f}", str(labelled["scored"]))
    return t
