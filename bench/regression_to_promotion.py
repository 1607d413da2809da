"""Time from a detected behaviour regression to a promoted candidate, on the real defaults (params.yaml, the
sample knowledge base, the behaviour suite, the offline base model), 2 CPU cores.

A fresh deployment (own index, MLflow store, metrics) that shares the repo's docs, behaviour suite and built
base model: index, evaluate the base model (the detection: its answers break the contract's format floor),
then the `finetune` flow end to end (hard-example scan, LoRA training, candidate evaluation, registration,
gate, promotion). Reports each step and the LoRA training throughput.

    .venv/bin/python bench/regression_to_promotion.py
"""

from __future__ import annotations

import argparse
import json
import os

import _common as c


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--max-seconds", type=float, default=None, help="LoRA time budget (default: params.yaml)")
    args = ap.parse_args()
    import yaml

    repo = yaml.safe_load((c.ROOT / "params.yaml").read_text())
    base = c.ROOT / "data" / "models" / "base"
    if not (base / "model.safetensors").is_file():
        raise SystemExit(f"{base}: build the base model first (`ragloop base-model` or `dvc repro base_model`)")
    load_start = os.getloadavg()[0]
    with c.workdir("loop") as root:
        repo["paths"] = {"docs": str(c.ROOT / "data" / "docs"), "behaviour": str(c.ROOT / "data" / "behaviour"),
                         "index": "state/index", "metrics": "state/metrics", "mlflow": "state/mlflow",
                         "models": "state/models"}  # fmt: skip
        repo["generator"]["model"] = str(base)
        if args.max_seconds:
            repo["finetune"]["max_seconds"] = args.max_seconds
        (root / "params.yaml").write_text(yaml.safe_dump(repo))
        params_file = str(root / "params.yaml")

        from prefect.testing.utilities import prefect_test_harness

        from flows.behaviour import evaluate, finetune
        from flows.reindex import reindex

        with prefect_test_harness(server_startup_timeout=120):
            with c.Timer() as t_index:
                reindex(params_file=params_file, reason="bench")
            with c.Timer() as t_detect:
                detected = evaluate(params_file=params_file, reason="bench")
            c.log(f"detected: decision {detected['decision']}, regressed {detected['regressed_slices']}")
            if detected["decision"] != "finetune":
                raise SystemExit(f"no regression detected on the base model: {json.dumps(detected)[:500]}")
            with c.Timer() as t_fix:
                tuned = finetune(params_file=params_file, reason="bench")
    rows = [
        ["index the sample (55 docs)", f"{t_index.seconds:.1f}"],
        ["evaluate + detect (291 gate cases)", f"{t_detect.seconds:.1f}"],
        ["regression -> promoted candidate", f"{t_fix.seconds:.1f}"],
        ["  of which LoRA training", f"{tuned['train_seconds']:.1f}"],
    ]
    print(c.table(["step", "seconds"], rows))
    slices = {k: round(v["pass_rate"], 3) for k, v in tuned["candidate"]["slices"].items()}
    before = {k: round(v["pass_rate"], 3) for k, v in detected["slices"].items()}
    print(f"promoted: {tuned['promoted']}; slices before {before} after {slices}")
    print(f"LoRA: {tuned['train_tokens_per_s']:.0f} tokens/s over {tuned['training_pairs']} training pairs "
          f"({tuned['failing_train_cases']} failing training cases trained on again)")  # fmt: skip
    c.save("regression_to_promotion", {
        "index_seconds": round(t_index.seconds, 1), "detect_seconds": round(t_detect.seconds, 1),
        "regression_to_promoted_seconds": round(t_fix.seconds, 1), "train_seconds": tuned["train_seconds"],
        "train_tokens_per_s": tuned["train_tokens_per_s"], "training_pairs": tuned["training_pairs"],
        "failing_train_cases": tuned["failing_train_cases"], "promoted": tuned["promoted"],
        "reasons": tuned["reasons"], "slices_before": before, "slices_after": slices,
        "regressed_slices": detected["regressed_slices"], "load_average_at_start": round(load_start, 2),
        "machine": c.machine(),
    })  # fmt: skip


if __name__ == "__main__":
    main()
