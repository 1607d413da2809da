"""Build gate.jsonl and train.jsonl from seeds.jsonl (deterministic; see README.md).

    .venv/bin/python data/behaviour/make_suite.py            # rewrite the two files next to this script
    .venv/bin/python data/behaviour/make_suite.py --check    # fail if they differ from what the seeds give

Each seed is one underlying question with its hand-written rewordings and its side ("gate" or "train").
Its cases are the question, every rewording, and the question wrapped in one conversational frame; all of
them go to the seed's side, so paraphrases of one question never straddle the split, and all of them carry the
seed's id as their `group`, so the paired tests count the wordings of one question as one unit.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from components.behaviour.suite import check_disjoint, load_cases, load_labels, normalise

HERE = Path(__file__).resolve().parent
DOCS = HERE.parent / "docs"
SPLITS = ("gate", "train")

# Conversational frames around the original wording; seed n gets FRAMES[n % len(FRAMES)].
FRAMES = (
    "Hi, quick question. {q}",
    "Hello! {q}",
    "{q} Thanks in advance.",
    "Hi there, I'm a Northwind Pay customer. {q}",
    "Sorry if this is obvious: {q}",
    "{q} I couldn't find it in the app.",
    "Good morning. {q}",
    "{q} Please keep it short.",
    "Can you help me? {q}",
    "{q} Thank you!",
)


def read_seeds(path: Path) -> list[dict]:
    seeds = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    for seed in seeds:
        if seed.get("split") not in SPLITS:
            raise SystemExit(f"{path}: seed {seed.get('seed')!r}: split must be one of {SPLITS}")
    return seeds


def variants(seed: dict, number: int) -> list[str]:
    frame = FRAMES[number % len(FRAMES)]
    return [seed["question"], *seed["paraphrases"], frame.format(q=seed["question"])]


def build(seeds: list[dict]) -> dict[str, list[dict]]:
    """Cases per split, ids numbered in seed order (appending seeds keeps existing ids)."""
    out: dict[str, list[dict]] = {split: [] for split in SPLITS}
    seen: dict[str, str] = {}
    for number, seed in enumerate(seeds, start=1):
        for question in variants(seed, number):
            key = normalise(question)
            if key in seen:
                raise SystemExit(f"seed {seed['seed']}: {question!r} repeats a question of seed {seen[key]}")
            seen[key] = seed["seed"]
            cases = out[seed["split"]]
            cases.append(
                {
                    "id": f"{seed['split']}-{len(cases) + 1:04d}",
                    "question": question,
                    "intent": seed["intent"],
                    "answer": seed["answer"],
                    "gold_docs": seed["gold_docs"],
                    "group": seed["seed"],
                }
            )
    return out


def render(cases: list[dict]) -> str:
    return "".join(json.dumps(case, ensure_ascii=False) + "\n" for case in cases)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="compare instead of writing")
    args = parser.parse_args(argv)
    built = build(read_seeds(HERE / "seeds.jsonl"))
    stale = []
    for split, cases in built.items():
        target = HERE / f"{split}.jsonl"
        text = render(cases)
        if args.check:
            if not target.exists() or target.read_text(encoding="utf-8") != text:
                stale.append(target.name)
        else:
            target.write_text(text, encoding="utf-8")
    if stale:
        print(f"out of date with seeds.jsonl: {', '.join(stale)}; run data/behaviour/make_suite.py", file=sys.stderr)
        return 1
    labels = set(load_labels(HERE / "labels.json"))
    gate = load_cases(HERE / "gate.jsonl", labels, DOCS)
    train = load_cases(HERE / "train.jsonl", labels, DOCS)
    check_disjoint(gate, train)
    print(f"gate: {len(gate)} cases, train: {len(train)} cases")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
