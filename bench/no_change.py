"""No-change and small-change cost on a large docs folder: 10,000 generated documents.

1. full index (the model is loaded and warmed before timing);
2. a no-change `detect_changes` and a no-change `run_index`, each in a fresh session, as a new run would be;
3. modify the text of 1% of the files and time the incremental `run_index` against the full one.

    .venv/bin/python bench/no_change.py [--docs 10000] [--touch 0.01] [--repeats 5]
"""

from __future__ import annotations

import argparse
import random
import time

import _common as c  # sets the offline environment before the project imports

from components.knowledge.indexer import chunk_changes, detect_changes, embed_chunks, publish, run_index, tidy_store
from components.knowledge.session import open_index

TARGET_NO_CHANGE_S = 0.5
TARGET_INCREMENTAL_FRACTION = 0.03


def _options(text: str) -> list[str]:
    return text.split("|")


SUBJECTS = _options(
    "The billing service|A customer|The support team|Our mobile app|The card reader|The nightly job|A merchant|"
    "The fraud model|The help centre|An account manager|The payments API|The branch office"
)
VERBS = _options(
    "reviews|rejects|approves|updates|archives|retries|flags|reconciles|exports|schedules|cancels|verifies"
)
OBJECTS = _options(
    "pending transfers|disputed charges|overdraft fees|card replacements|address changes|loan applications|"
    "currency conversions|standing orders|identity checks|chargeback requests|savings goals|exchange rates"
)
WHEN = _options(
    "every morning|within two working days|after a failed login|before the monthly statement|on request|"
    "when the limit is reached|at the end of each quarter|during the holiday season|after manual review"
)
TOPICS = _options("Payments|Cards|Accounts|Loans|Security|Transfers|Statements|Fees|Savings|Disputes|Onboarding|Limits")


def document(i: int, revision: int = 1) -> str:
    """A deterministic, varied short document: a heading and 3-6 sentences (one chunk)."""
    rng = random.Random(i)
    topic = rng.choice(TOPICS)
    sentences = []
    for _ in range(rng.randint(3, 6)):
        amount = rng.randint(5, 5000)
        sentences.append(
            f"{rng.choice(SUBJECTS)} {rng.choice(VERBS)} {rng.choice(OBJECTS)} {rng.choice(WHEN)}"
            f" for amounts up to {amount} EUR (case {i}-{rng.randint(100, 999)})."
        )
    if revision > 1:
        sentences.append(
            f"Revised in revision {revision}: {rng.choice(SUBJECTS).lower()} now {rng.choice(VERBS)} them."
        )
    return f"# {topic} note {i}\n\n{' '.join(sentences)}\n"


def path_of(i: int) -> str:
    return f"section-{i % 100:02d}/doc-{i:05d}.md"


def timed_sessions(params: object, fn: str, repeats: int) -> dict:
    """Time `fn` (detect or run) in `repeats` fresh sessions; opening the session is timed separately."""
    opens, runs, others = [], [], []
    for _ in range(repeats):
        c.wait_quiet()
        t0 = time.perf_counter()
        with open_index(params) as s:  # type: ignore[arg-type]
            opens.append(time.perf_counter() - t0)
            with c.Timer() as t:
                out = detect_changes(s) if fn == "detect" else run_index(s)
        runs.append(t.seconds)
        others.append(t.others)
        if fn == "detect" and (out.added or out.modified or out.deleted or out.renamed):
            raise SystemExit(f"no-change detect found changes: {len(out.added)} added, {len(out.modified)} modified")
        if fn == "run" and out["published"]:
            raise SystemExit("a no-change run published a new version")
    return {
        "median_s": round(c.median(runs), 4),
        "best_s": round(min(runs), 4),
        "all_s": [round(x, 4) for x in runs],
        "open_index_median_s": round(c.median(opens), 4),
        "others_load": others,
    }


def steps(params: object) -> dict[str, float]:
    """One no-change run, step by step, to show where its time goes."""
    out = {}
    with open_index(params) as s:  # type: ignore[arg-type]
        t0 = time.perf_counter()
        ch = detect_changes(s)
        out["detect_changes"], t0 = time.perf_counter() - t0, time.perf_counter()
        plan = chunk_changes(s, ch)
        out["chunk_changes"], t0 = time.perf_counter() - t0, time.perf_counter()
        vectors = embed_chunks(s, plan)
        out["embed_chunks"], t0 = time.perf_counter() - t0, time.perf_counter()
        publish(s, plan, vectors)
        out["publish"], t0 = time.perf_counter() - t0, time.perf_counter()
        tidy_store(s)
        out["tidy_store"] = time.perf_counter() - t0
    return {k: round(v, 4) for k, v in out.items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--docs", type=int, default=10_000)
    ap.add_argument("--touch", type=float, default=0.01, help="fraction of the files to modify")
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args()
    with c.workdir("no-change") as work:
        print(f"warm-up (imports, Chroma, model): {c.warm_process(work / 'warm'):.1f} s")
        params = c.deployment(work / "deploy", {path_of(i): document(i) for i in range(args.docs)})
        c.log(f"wrote {args.docs:,} documents")
        with open_index(params) as s:
            c.warm_model(s)
            c.wait_quiet()
            c.log(f"full index of {args.docs:,} documents ...")
            with c.Timer() as t_full:
                full = run_index(s)
        c.log(f"full index: {t_full.seconds:.1f} s, {full['chunks']['embedded']:,} chunks embedded")
        detect = timed_sessions(params, "detect", args.repeats)
        noop = timed_sessions(params, "run", max(3, args.repeats // 2))
        c.log(f"no-change detect_changes {detect['median_s']} s, run_index {noop['median_s']} s (medians)")
        breakdown = steps(params)

        touched = sorted(random.Random(7).sample(range(args.docs), int(args.docs * args.touch)))
        c.write_docs(params.paths.docs, {path_of(i): document(i, revision=2) for i in touched})
        c.log(f"modified {len(touched)} files")
        with open_index(params) as s:
            c.warm_model(s)
            c.wait_quiet()
            with c.Timer() as t_inc:
                inc = run_index(s)
        with open_index(params) as s, c.Timer() as t_load:
            s.embedder._load()
        c.log(f"incremental run_index: {t_inc.seconds:.2f} s; removing the temp deployment")

    c.log("done")
    fraction = t_inc.seconds / t_full.seconds
    rows = [
        ["full index", round(t_full.seconds, 2), full["chunks"]["embedded"], full["documents"]["added"], "-"],
        ["no-change detect_changes", detect["median_s"], 0, 0, f"< {TARGET_NO_CHANGE_S} s"],
        ["no-change run_index", noop["median_s"], 0, 0, f"< {TARGET_NO_CHANGE_S} s"],
        [
            f"incremental run_index ({len(touched)} modified)",
            round(t_inc.seconds, 3),
            inc["chunks"]["embedded"],
            inc["documents"]["modified"],
            f"< {TARGET_INCREMENTAL_FRACTION:.0%} of full",
        ],
    ]
    print("\n" + c.table(["run", "seconds", "chunks embedded", "docs changed", "target"], rows))
    print(f"\nincremental / full = {fraction:.2%}; open_index (no-change) median {detect['open_index_median_s']} s")
    print("no-change run_index by step (s): " + ", ".join(f"{k} {v}" for k, v in breakdown.items()))
    checks = {
        "no_change_detect": detect["median_s"] < TARGET_NO_CHANGE_S,
        "no_change_run_index": noop["median_s"] < TARGET_NO_CHANGE_S,
        "incremental_fraction": fraction < TARGET_INCREMENTAL_FRACTION,
        "incremental_chunks": inc["chunks"]["embedded"] == len(touched),
    }
    print("targets: " + ", ".join(f"{k} {'met' if v else 'MISSED'}" for k, v in checks.items()))
    c.save(
        "no_change",
        {
            "documents": args.docs,
            "full": {"seconds": round(t_full.seconds, 3), "others_load": t_full.others, "report": _short(full)},
            "no_change_detect": detect,
            "no_change_run_index": noop,
            "no_change_steps_s": breakdown,
            "incremental": {
                "touched": len(touched),
                "seconds": round(t_inc.seconds, 3),
                "others_load": t_inc.others,
                "fraction_of_full": round(fraction, 4),
                "report": _short(inc),
            },
            "model_load_in_warm_process_s": round(t_load.seconds, 3),
            "targets": checks,
        },
    )


def _short(report: dict) -> dict:
    keys = ("documents", "chunks", "detect_seconds", "embed_seconds", "publish_seconds", "duration_s", "compacted")
    return {k: report[k] for k in keys}


if __name__ == "__main__":
    main()
