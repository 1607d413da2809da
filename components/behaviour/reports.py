"""What the behaviour flows show of their work: the per-case rows of an evaluation's MLflow table, a fine-tune's
figures, result and markdown, and the champion's recorded slice rates an evaluation is compared against."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from components.behaviour.checks import CaseOutcome
from components.behaviour.finetune import TrainingLog
from components.hashing import folder_digest
from components.tracking import metric_names


def case_rows(outcomes: list[CaseOutcome]) -> list[dict[str, Any]]:
    """One row per case for the evaluation run's MLflow table; `errors` holds what a declared assertion raised on
    the case (that slice then failed for this case only)."""
    return [
        {"id": o.id, "question": o.question, "intent": o.intent, "slices": ", ".join(sorted(o.checks)),
         "failed_slices": ", ".join(sorted(k for k, ok in o.checks.items() if not ok)), "route": o.route,
         "route_reason": o.reason, "gold_rank": o.gold_rank,
         "passed": all(o.checks.values()), "output": o.output, "retrieved_sources": ", ".join(o.retrieved),
         "gold_sources": ", ".join(o.gold_docs), "group": o.group,
         "errors": "; ".join(f"{k}: {e}" for k, e in sorted(o.errors.items()))}
        for o in outcomes
    ]  # fmt: skip


def champion_baseline(results: dict[str, Any] | None) -> dict[str, dict] | None:
    """The champion's slice rates as recorded when it was registered (its gate-set evaluation; `results` is the
    version's stored results), None when there is no champion or it recorded none."""
    slices = (results or {}).get("summary", {}).get("slices")
    return dict(slices) if slices else None


def training_figures(log: TrainingLog, pairs: int, failing: int) -> dict[str, float]:
    """The work a fine-tune did (steps, tokens: the same on any machine) and what it cost here (seconds)."""
    return {"train_steps": log.steps, "train_planned_steps": log.planned_steps, "train_tokens": log.tokens,
            "train_padding_ratio": 1 - log.tokens / log.padded_tokens if log.padded_tokens else 0.0,
            "train_seconds": log.seconds, "train_tokens_per_s": log.tokens_per_second,
            "trainable_parameters": log.trainable_parameters, "training_pairs": pairs,
            "failing_train_cases": failing}  # fmt: skip


def candidate_rates(candidate_summary: dict[str, Any]) -> dict[str, float]:
    """The candidate's gate-set pass rates as the fine-tune run's metrics (`ragloop status` reads them back)."""
    return {metric_names.gate_pass_rate(k): v["pass_rate"] for k, v in candidate_summary["slices"].items()}


def finetune_result(version: str, champion_summary: dict[str, Any], candidate_summary: dict[str, Any], run_id: str,
                    pairs: int, failing: int, log: TrainingLog, adapter: Path) -> dict[str, Any]:  # fmt: skip
    """What `ragloop finetune --json` prints (a stable contract; the gate adds its keys when it ran)."""
    return {
        "version": version, "regressed_slices": champion_summary["regressed_slices"],
        "candidate": candidate_summary, "mlflow_run_id": run_id, "training_pairs": pairs,
        "failing_train_cases": failing, "train_steps": log.steps, "train_tokens": log.tokens,
        "train_seconds": round(log.seconds, 1), "train_tokens_per_s": round(log.tokens_per_second, 1),
        "adapter_sha256": folder_digest(adapter, None),
    }  # fmt: skip


def finetune_markdown(outcome: dict[str, Any], champion: dict[str, Any]) -> str:
    lines = [f"# Fine-tune: candidate version {outcome['version']}", "",
             f"Why: regressed slices {', '.join(outcome['regressed_slices']) or 'none'} "
             f"(champion {champion['model_version']}).", "",
             f"Trained on {outcome['training_pairs']} pairs ({outcome['failing_train_cases']} hard cases repeated) "
             f"for {outcome['train_seconds']} s at {outcome['train_tokens_per_s']} tokens/s; MLflow run "
             f"`{outcome['mlflow_run_id']}`.", "", "| slice | champion | candidate |", "|---|---|---|"]  # fmt: skip
    for k, v in sorted(outcome["candidate"]["slices"].items()):
        old = champion["slices"].get(k, {}).get("pass_rate")
        lines.append(f"| {k} | {'-' if old is None else f'{old:.2f}'} | {v['pass_rate']:.2f} |")
    return "\n".join(lines) + "\n"


def truncation_message(max_seconds: float | None, log: TrainingLog) -> str:
    return (f"finetune.max_seconds ({max_seconds} s) stopped the fine-tune after {log.steps} of "
            f"{log.planned_steps} planned steps: the candidate was not registered (it would not reproduce); "
            "raise or remove the cap")  # fmt: skip
