"""The retriever that learns, measured: the embedder fine-tuned by `ragloop tune-retriever`'s own steps against the
embedder it starts from, on the sample deployment (and, with --xquad, on a held-out split of a public corpus).

Sample: the repository's data/docs indexed with MiniLM (params.yaml's defaults), (question, best chunk of its gold
document) pairs from data/behaviour/train.jsonl, `retriever.steps` steps (--steps to shorten), the candidate embedded
into its own index; on the gate set's in-scope questions, for `retrieval.mode` dense and hybrid: hit@1 and hit@3 of
the context (a gold document among the k best chunks, as the assistant's context sees them) and recall@5/10 at the
document level; then the gate's own verdict (retrieval slices, paired group-level test, Holm).

XQuAD (--xquad, needs ../shared/data): one document per paragraph (240, of 48 articles); the articles split in two by
index: the even ones give every other question to training (the rest is held out), the odd ones none (documents it
never trained on). Reported for MiniLM, the tuned model and BM25 (ragloop's lexical mode).

    .venv/bin/python bench/retriever_tuning.py [--steps N] [--xquad]   -> bench/results/retriever_tuning.json
"""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path
from typing import Any

import _common as c  # sets the offline environment before the project imports

from components.behaviour import retriever_gate as rg
from components.behaviour.assistant import resolve_generator
from components.behaviour.retriever_tuning import Pair, build_pairs, train_retriever, training_questions
from components.config import Params, load_params
from components.knowledge.indexer import run_index
from components.knowledge.retrieval import Retriever
from components.knowledge.retriever_serving import build_candidate_index, candidate_params
from components.knowledge.session import open_index

MODES = ("dense", "hybrid")


def sample_params(work: Path, steps: int | None) -> Params:
    """The repository's sample deployment, its state (index, models, MLflow) in `work`."""
    repo = load_params(c.ROOT / "params.yaml")
    raw = {
        "paths": {"docs": str(repo.paths.docs), "behaviour": str(repo.paths.behaviour), "index": "index",
                  "metrics": "metrics", "mlflow": "mlflow", "models": "models"},
        "generator": {**repo.generator.model_dump(exclude={"model"}), "model": resolve_generator(repo)},
    }  # fmt: skip
    if steps is not None:
        raw["retriever"] = {"steps": steps}
    work.mkdir(parents=True, exist_ok=True)
    (work / "params.yaml").write_text(json.dumps(raw))
    return load_params(work / "params.yaml")


def with_mode(params: Params, mode: str) -> Params:
    return params.model_copy(update={"retrieval": params.retrieval.model_copy(update={"mode": mode})})


def measure(params: Params, questions: list[rg.Question]) -> dict[str, float]:
    """hit@1, hit@3 of the context (chunk level) and recall@5, recall@10 (document level) over `questions`."""
    texts = [q.text for q in questions]
    with Retriever(params) as r:
        chunks, docs = r.search(texts, 3), r.search_docs(texts, 10)
    out: dict[str, float] = {}
    for k in (1, 3):
        out[f"context_hit@{k}"] = _mean([bool({h["doc"] for h in hits[:k]} & set(q.gold))
                                         for q, hits in zip(questions, chunks, strict=True)])  # fmt: skip
    for k in (5, 10):
        out[f"recall@{k}"] = _mean([len(set(q.gold) & {h["doc"] for h in ranked[:k]}) / len(q.gold)
                                    for q, ranked in zip(questions, docs, strict=True)])  # fmt: skip
    return out


def _mean(values: list[float] | list[bool]) -> float:
    return round(sum(values) / len(values), 4) if values else 0.0


def tune(params: Params, pairs: list[Pair]) -> dict[str, Any]:
    """Train from params.yaml's embedder, embed the candidate apart; the training figures."""
    folder = params.paths.models / "retriever" / "candidate"
    with c.Timer() as t:
        log = train_retriever(params.embedder.model, pairs, params.retriever, folder)
    build_candidate_index(params, folder)
    return {"pairs": log.pairs, "steps": log.steps, "seconds": round(log.seconds, 1),
            "tokens": log.tokens, "tokens_per_s": round(log.tokens_per_s, 1), "others_load": t.others,
            "first_losses": [round(x, 4) for x in log.losses[:3]],
            "last_losses": [round(x, 4) for x in log.losses[-3:]]}  # fmt: skip


def sample(work: Path, steps: int | None) -> dict[str, Any]:
    params = sample_params(work, steps)
    c.log("indexing the sample with MiniLM")
    with open_index(params) as s:
        run_index(s)
    with Retriever(params) as r:
        pairs = build_pairs(r, training_questions(params))
    questions = [q for q in rg.gate_questions(params) if q.source == "retrieval"]
    c.log(f"{len(pairs)} pairs, {len(questions)} gate questions; training {params.retriever.steps} steps")
    training = tune(params, pairs)
    candidate = candidate_params(params, params.paths.models / "retriever" / "candidate")
    figures: dict[str, Any] = {}
    for mode in MODES:
        figures[mode] = {"before": measure(with_mode(params, mode), questions),
                         "after": measure(with_mode(candidate, mode), questions)}  # fmt: skip
        c.log(f"{mode}: {figures[mode]}")
    with Retriever(params) as a, Retriever(candidate) as b:
        retrieval = rg.retrieval_results(params, a, questions), rg.retrieval_results(params, b, questions)
    assistant = assistant_slices(params, candidate)
    verdict = rg.judge(*retrieval, rg.groups_of(questions), params, assistant)
    return {"recipe": params.retriever.model_dump(), "training": training, "gate_questions": len(questions),
            "metrics": figures, "gate": {"promote": verdict.promote, "reasons": verdict.reasons,
                                         "rates": verdict.rates, "assistant_rates": verdict.assistant}}  # fmt: skip


def assistant_slices(params: Params, candidate: Params) -> tuple[Any, Any] | None:
    """The generator (the base model `make run` builds, no adapter) answering from each side's context; None when
    it has not been built."""
    from components.behaviour.loop import evaluate_model
    from components.config import Settings

    if not Path(params.generator.model).is_dir():
        c.log(f"no generator at {params.generator.model} (`make run` builds it): assistant slices not measured")
        return None
    before = evaluate_model(params, Settings.from_env(), None, None, "retriever champion")
    after = evaluate_model(candidate, Settings.from_env(), None, None, "retriever candidate")
    return before.results, after.results


def xquad(work: Path, steps: int | None) -> dict[str, Any]:
    from index_throughput import XQUAD

    (path,) = c.require_shared(XQUAD)
    articles = json.loads(path.read_text(encoding="utf-8"))["data"]
    docs, train, held, unseen = {}, [], [], []
    for i, art in enumerate(articles):
        j = 0
        for p, para in enumerate(art["paragraphs"]):
            name = f"a{i:02d}-p{p:02d}.txt"  # one document a paragraph: the one holding the answer is relevant
            docs[name] = para["context"].strip() + "\n"
            for qa in para["qas"]:
                row = {"id": qa["id"], "query": qa["question"].strip(), "relevant": [name]}
                (unseen if i % 2 else train if j % 2 == 0 else held).append(row)
                j += 1
    c.write_docs(work / "docs", docs)
    for name, rows in (("train", train), ("held", held), ("unseen", unseen)):
        (work / f"{name}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    raw = {"paths": {"docs": "docs", "index": "index", "metrics": "metrics", "mlflow": "mlflow", "models": "models",
                     "behaviour": "none", "retrieval_train": "train.jsonl", "retrieval_queries": "held.jsonl"},
           "generator": {"context_chunks": 1}, "retriever": {"steps": steps} if steps else {}}  # fmt: skip
    (work / "params.yaml").write_text(json.dumps(raw))
    params = load_params(work / "params.yaml")
    with open_index(params) as s:
        run_index(s)
    with Retriever(params) as r:
        pairs = build_pairs(r, training_questions(params))
    c.log(f"xquad: {len(docs)} paragraphs, {len(pairs)} pairs, {len(held)} held-out, {len(unseen)} unseen")
    training = tune(params, pairs)
    candidate = candidate_params(params, params.paths.models / "retriever" / "candidate")
    sets = {name: [rg.Question(r["id"], r["query"], tuple(r["relevant"]), r["id"], "labelled") for r in rows]
            for name, rows in (("held_out", held), ("unseen_documents", unseen))}  # fmt: skip
    systems = {"minilm": with_mode(params, "dense"), "tuned": with_mode(candidate, "dense"),
               "bm25": with_mode(params, "lexical")}  # fmt: skip
    return {"training": training, "documents": len(docs),
            "metrics": {s: {n: measure(p, qs) for n, qs in sets.items()} for s, p in systems.items()}}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=None, help="training steps (default: params.yaml retriever)")
    parser.add_argument("--xquad", action="store_true", help="also the held-out XQuAD split (needs ../shared/data)")
    parser.add_argument("--no-sample", action="store_true", help="skip the sample deployment (with --xquad)")
    args = parser.parse_args()
    previous = c.RESULTS / "retriever_tuning.json"
    runs: dict[str, Any] = json.loads(previous.read_text())["runs"] if previous.is_file() else {}
    steps = args.steps or load_params(c.ROOT / "params.yaml").retriever.steps
    result: dict[str, Any] = {"machine": c.machine()}
    with c.workdir("retriever") as work:
        if not args.no_sample:
            result["sample"] = sample(work / "sample", args.steps)
        if args.xquad:
            result["xquad"] = xquad(work / "xquad", args.steps)
        shutil.rmtree(work, ignore_errors=True)
    runs[f"steps={steps}"] = {**runs.get(f"steps={steps}", {}), **result}  # one entry per recipe length
    c.save("retriever_tuning", {"runs": runs})


if __name__ == "__main__":
    main()
