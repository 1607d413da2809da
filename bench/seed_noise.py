"""How often the gate promotes a candidate that differs from the champion only by its training seed.

On the default model (data/models/base, built by `make run`), the champion's recipe (the training set, the
`finetune` params, no hard-example repeats: `make run`'s champion was trained from the base, which has nothing to
mine) is trained with seed 0 and with seeds 1..N; each adapter is evaluated on the gate set, and each of seeds
1..N is gated against seed 0 with the default gate settings (`regression` in params.yaml). Such a candidate is
no better than the champion by construction, so every promotion is a false one. The same pairs are also gated
with the old gate (case-level McNemar, no correction over the slices) for comparison, and the per-slice seed
noise (|rate difference|, discordant cases) is reported.

    taskset -c 1 .venv/bin/python bench/seed_noise.py --seeds 10     # train + evaluate what is missing, report
    .venv/bin/python bench/seed_noise.py --report                    # the report again from the stored outcomes

The per-case outcomes are written to bench/results/seed_noise.json after each seed (a crash loses at most the
seed in progress, and a rerun resumes); `--report` recomputes every verdict from them with the code as it is
now. Seed 0 reuses `make run`'s adapter (data/models/candidate) when data/metrics/finetune.json and dvc.lock
show it was trained with this recipe. Retrieval does not depend on the adapter, so the gate set's and the
training set's hits are computed once and every adapter is evaluated on the same hits.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench._common import RESULTS, ROOT, log, machine, save, table
from components.files import FINETUNE_METRICS

NAME = "seed_noise"


class _FixedHits:
    """The retriever's answers for the gate set, computed once (they do not depend on the adapter)."""

    def __init__(self, questions: list[str], hits: list[list[dict]], stale: set[str]) -> None:
        self._hits = dict(zip(questions, hits, strict=True))
        self._stale = stale

    def search(self, texts: list[str], k: int) -> list[list[dict]]:
        return [self._hits[t] for t in texts]

    def stale_docs(self) -> set[str]:
        return self._stale


def _recipe_key(params: Any, pairs: list[tuple[str, str]], gate: list[Any]) -> str:
    """What a seed's outcomes depend on besides the seed: the base model, the training pairs, the finetune
    params without the seed, generation, and the gate set's questions."""
    from components.behaviour.assistant import generator_identity

    finetune = params.finetune.model_dump(mode="json")
    finetune.pop("seed")
    parts = [generator_identity(params), json.dumps(pairs), json.dumps(finetune, sort_keys=True),
             params.generator.model_dump_json(), json.dumps([(c.id, c.question) for c in gate])]  # fmt: skip
    return hashlib.sha256("\0".join(parts).encode()).hexdigest()[:16]


def _reusable_champion(params: Any, pairs: list[tuple[str, str]]) -> Path | None:
    """make run's adapter, when it is this recipe with seed 0: its recorded hash, pair count and no repeats,
    and dvc.lock's finetune params equal to params.yaml's."""
    import yaml

    from components.hashing import folder_digest

    adapter, record = params.paths.models / "candidate", params.paths.metrics / FINETUNE_METRICS
    lock = ROOT / "dvc.lock"
    if not (adapter / "adapter_config.json").is_file() or not record.is_file() or not lock.is_file():
        return None
    info = json.loads(record.read_text())
    locked = yaml.safe_load(lock.read_text())["stages"].get("finetune", {}).get("params", {})
    locked = locked.get("params.yaml", {}).get("finetune")
    same = (info.get("failing_train_cases") == 0 and info.get("training_pairs") == len(pairs)
            and locked == params.finetune.model_dump(mode="json") and params.finetune.seed == 0
            and folder_digest(adapter, None) == info.get("adapter_sha256"))  # fmt: skip
    return adapter if same else None


def _train(params: Any, pairs: list[tuple[str, str]], seed: int, out: Path) -> dict:
    from components.behaviour.assistant import Generator
    from components.behaviour.finetune import save_adapter, train_lora

    generator = Generator(params, device="cpu")
    recipe = params.finetune.model_copy(update={"seed": seed})
    peft_model, trained = train_lora(generator.model, generator.tokenizer, pairs, recipe)
    if trained.truncated:
        raise SystemExit(f"seed {seed}: finetune.max_seconds cut training short; remove the cap to measure")
    save_adapter(peft_model, out, params.generator.model)
    return {"train_seconds": round(trained.seconds, 1), "train_tokens_per_s": round(trained.tokens_per_second, 1),
            "train_steps": trained.steps}  # fmt: skip


def _evaluate(params: Any, adapter: Path, gate: list[Any], retriever: _FixedHits) -> dict:
    from components.behaviour.assistant import Generator, generator_identity
    from components.behaviour.checks import retrieval_metrics, slice_results
    from components.behaviour.contract import contract_for
    from components.behaviour.evaluate import run_cases
    from components.behaviour.pipeline import Model
    from components.hashing import folder_digest

    t0 = time.perf_counter()
    contract = contract_for(params)
    model = Model(Generator(params, adapter, device="cpu"), "seed", None, generator_identity(params))
    outcomes = run_cases(gate, retriever, model, params.generator, params.generator.context_chunks, contract)
    behaviour = slice_results(outcomes, contract.slice_names, behaviour_only=True)
    every = slice_results(outcomes, contract.slice_names)
    return {
        "evaluate_seconds": round(time.perf_counter() - t0, 1),
        "adapter_sha256": folder_digest(adapter, None),
        "rates": {s: round(sum(v.values()) / len(v), 4) for s, v in every.items() if v},
        "retrieval": retrieval_metrics(outcomes),
        # per slice: the behaviour-only cases (what the gate pairs), as a string of 0/1 in sorted case-id order
        "behaviour": {
            s: {"ids": sorted(v), "passed": "".join("1" if v[k] else "0" for k in sorted(v))}
            for s, v in behaviour.items()
        },
    }


def _load(path: Path) -> dict:
    return json.loads(path.read_text()) if path.is_file() else {}


def collect(seeds: int, cache: Path) -> None:
    import torch

    from components.behaviour.contract import contract_for
    from components.behaviour.finetune import training_pairs
    from components.behaviour.loop import load_suite
    from components.config import Settings, load_params
    from components.knowledge.retrieval import Retriever

    if len(os.sched_getaffinity(0)) == 1:
        torch.set_num_threads(1)  # pinned to one core: a second thread would only contend with the first
    params, settings = load_params(ROOT / "params.yaml"), Settings.from_env()
    if not (params.paths.models / "base" / "config.json").is_file():
        raise SystemExit("data/models/base not found: run `make run` (or `ragloop base-model`) first")
    gate, train = load_suite(params)
    depth = max(params.generator.context_chunks, params.finetune.gold_context_depth)
    with Retriever(params, settings) as found:
        train_hits = found.search([c.question for c in train], depth)
        gate_hits = found.search([c.question for c in gate], params.generator.context_chunks)
        retriever = _FixedHits([c.question for c in gate], gate_hits, set(found.stale_docs()))
    pairs = training_pairs(train, train_hits, params.generator, contract_for(params))
    key = _recipe_key(params, pairs, gate)
    out = RESULTS / f"{NAME}.json"
    stored = _load(out)
    runs = stored.get("runs", {}) if stored.get("recipe_key") == key else {}
    log(f"recipe {key}: {len(pairs)} training pairs, {len(gate)} gate cases; stored seeds {sorted(runs, key=int)}")
    for seed in range(seeds + 1):
        if str(seed) in runs:
            continue
        adapter = cache / f"seed-{seed}"
        reused = _reusable_champion(params, pairs) if seed == 0 else None
        if reused is not None:
            shutil.copytree(reused, adapter, dirs_exist_ok=True)
            trained: dict[str, Any] = {"reused": "data/models/candidate (make run's champion)"}
        else:
            trained = _train(params, pairs, seed, adapter)
        run = {"seed": seed, **trained, **_evaluate(params, adapter, gate, retriever), "cpu": machine()["cpu"],
               "torch_threads": torch.get_num_threads()}  # fmt: skip
        runs[str(seed)] = run
        save(NAME, {"recipe_key": key, "training_pairs": len(pairs), "gate_cases": len(gate), "runs": runs})
        log(f"seed {seed}: {run['rates']} (train {trained.get('train_seconds', 'reused')} s)")


def _results(run: dict) -> dict[str, dict[str, bool]]:
    return {s: {k: ch == "1" for k, ch in zip(v["ids"], v["passed"], strict=True)} for s, v in run["behaviour"].items()}


def report() -> dict:
    """Every stored seed gated against seed 0 with the default gate and with the old one; the seed noise."""
    from components.behaviour.loop import load_suite
    from components.behaviour.stats import detect_regression, gate
    from components.config import load_params

    params = load_params(ROOT / "params.yaml")
    cases, _ = load_suite(params)
    groups = {c.id: c.group for c in cases}
    data = _load(RESULTS / f"{NAME}.json")
    runs = data.get("runs", {})
    if "0" not in runs or len(runs) < 2:
        raise SystemExit("bench/results/seed_noise.json holds no seed 0 and another seed yet: run the collection")
    old = params.regression.model_copy(update={"unit": "case", "correction": "none"})
    champion, champ_run = _results(runs["0"]), runs["0"]
    regressed = detect_regression(champion, champion, params.regression, groups).regressed_slices  # floors only
    rows, noise = [], {s: [] for s in sorted(champion)}
    for seed in sorted((s for s in runs if s != "0"), key=int):
        run, candidate = runs[seed], _results(runs[seed])
        new_verdict = gate(champion, candidate, regressed, params.regression, champ_run["retrieval"],
                           run["retrieval"], groups)  # fmt: skip
        old_verdict = gate(champion, candidate, regressed, old, champ_run["retrieval"], run["retrieval"], groups)
        for c in new_verdict.comparisons:
            noise[c.slice].append({"seed": int(seed), "delta": round(c.delta, 4), "b": c.b, "c": c.c,
                                   "groups_worse": c.groups_worse, "groups_better": c.groups_better,
                                   "p_case": c.p_value, "p_group": c.p_group, "p_adjusted": c.p_adjusted})  # fmt: skip
        rows.append({"seed": int(seed), "promoted": new_verdict.promote, "promoted_old_gate": old_verdict.promote,
                     "reasons": new_verdict.reasons, "reasons_old_gate": old_verdict.reasons})  # fmt: skip
    summary = {
        "candidates": len(rows),
        "promoted": sum(r["promoted"] for r in rows),
        "promoted_old_gate": sum(r["promoted_old_gate"] for r in rows),
        "gate": params.regression.model_dump(mode="json"),
        "champion_regressed_slices": regressed,
        "noise": {s: _spread([abs(v["delta"]) for v in vals]) for s, vals in noise.items()},
        "significant_case_level": {
            s: sum(v["p_case"] < params.regression.alpha for v in vals) for s, vals in noise.items()
        },
        "significant_group_level_adjusted": {
            s: sum(v["p_adjusted"] < params.regression.alpha for v in vals) for s, vals in noise.items()
        },
    }
    summary["all_ordered_pairs"] = _all_pairs(runs, groups, params.regression, old)
    save(NAME, {**{k: data[k] for k in ("recipe_key", "training_pairs", "gate_cases", "runs")},
                "report": {"summary": summary, "verdicts": rows, "per_slice": noise}})  # fmt: skip
    _print(summary, rows, noise)
    return summary


def _all_pairs(runs: dict, groups: dict[str, str], new: Any, old: Any) -> dict[str, int]:
    """Every seed as champion against every other as candidate (dependent pairs: a denser, not an independent,
    estimate of how often two equal candidates pass the gate)."""
    from components.behaviour.stats import detect_regression, gate

    counts = {"pairs": 0, "promoted": 0, "promoted_old_gate": 0}
    for a in sorted(runs, key=int):
        champion = _results(runs[a])
        regressed = detect_regression(champion, champion, new, groups).regressed_slices
        for b in sorted(runs, key=int):
            if a == b:
                continue
            candidate, ra, rb = _results(runs[b]), runs[a]["retrieval"], runs[b]["retrieval"]
            counts["pairs"] += 1
            counts["promoted"] += gate(champion, candidate, regressed, new, ra, rb, groups).promote
            counts["promoted_old_gate"] += gate(champion, candidate, regressed, old, ra, rb, groups).promote
    return counts


def _spread(values: list[float]) -> dict[str, float]:
    if not values:
        return {}
    return {"min": min(values), "median": round(statistics.median(values), 4), "max": max(values)}


def _print(summary: dict, rows: list[dict], noise: dict[str, list[dict]]) -> None:
    print(f"\npromoted {summary['promoted']} of {summary['candidates']} seed-only candidates with the default gate "
          f"({summary['gate']['unit']}-level, correction {summary['gate']['correction']}); "
          f"{summary['promoted_old_gate']} with the old gate (case-level, no correction)")  # fmt: skip
    pairs = summary["all_ordered_pairs"]
    print(f"all {pairs['pairs']} ordered pairs of seeds: {pairs['promoted']} promoted by the default gate, "
          f"{pairs['promoted_old_gate']} by the old one")  # fmt: skip
    headers = ["slice", "min |d|", "median |d|", "max |d|", "p_case<a", "p_adj<a"]
    print(table(headers, [[s, *summary["noise"][s].values(), summary["significant_case_level"][s],
                           summary["significant_group_level_adjusted"][s]] for s in noise]))  # fmt: skip
    for row in rows:
        print(f"seed {row['seed']}: default gate {'PROMOTED' if row['promoted'] else 'rejected'}, old gate "
              f"{'PROMOTED' if row['promoted_old_gate'] else 'rejected'}")  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, default=10, help="candidates with seeds 1..N against seed 0 (default 10)")
    ap.add_argument("--cache", type=Path, default=Path(tempfile.gettempdir()) / "ragloop-seed-noise")
    ap.add_argument("--report", action="store_true", help="only recompute the report from the stored outcomes")
    ap.add_argument("--no-report", action="store_true", help="only train and evaluate what is missing")
    args = ap.parse_args()
    if not args.report:
        args.cache.mkdir(parents=True, exist_ok=True)
        collect(args.seeds, args.cache)
    if not args.no_report:
        report()


if __name__ == "__main__":
    main()
