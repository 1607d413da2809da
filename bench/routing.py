"""Routing measured on seeded faults: does every failure reach the fix that can repair it?

On the sample deployment (a temp copy of params.yaml, data/docs and data/behaviour, built as `make run` builds
it), faults whose truth is known are injected one at a time and the routes are read back, offline (the gate set,
`evaluate_model`: the same code as `ragloop evaluate`) and live (gate questions sent through `ragloop api` with the
official `openai` client, negative feedback on each, then `ragloop triage --json`). Each live question is asked
twice, as two users would: once with negative feedback alone (the question is all triage has) and once with the
gate's answer as the user's correction; the two are scored apart (`live`, `live_corrected`):

* behaviour: a degraded generator (the base model, before any fine-tune) with retrieval unchanged;
* retrieval: the current index, where a gold document ranks below the context's cut-off;
* stale: the answering text of several documents edited on disk (every figure changed) without re-indexing;
* missing: several documents deleted and the index rebuilt.

Truth comes from the fault and the gold documents, never from the router: a failing case is `stale` when a gold
document was edited, `missing` when every gold document was deleted, `retrieval` when a gold document exists and
none was in the context, else `behaviour`. Reported: the confusion matrix (truth x route) offline and live,
precision and recall per route, and the repair rate: after each route's action (fine-tune the generator, tune the
retriever, re-index, write the deleted documents back), the share of the cases routed there that pass.

    .venv/bin/python bench/routing.py [--live 15] [--faulty-docs 5] [--deployment DIR] [--skip-retriever]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

import _common as c  # sets the offline environment before the project imports
from api_load import RAGLOOP, build, drained, free_port, start_server

ROUTES = ("behaviour", "retrieval", "stale", "missing")
LIVE_ROUTES = (*ROUTES, "outage")


def cli_json(work: Path, *args: str) -> dict[str, Any]:
    done = subprocess.run([RAGLOOP, *args, "--json", "--params", str(work / "params.yaml")], cwd=work,
                          capture_output=True, text=True, check=False,
                          env={**os.environ, "RAGLOOP_PREFECT_SERVER": "ephemeral"})  # fmt: skip
    if done.returncode != 0:
        sys.exit(f"ragloop {' '.join(args)} failed ({done.returncode}):\n{done.stderr[-3000:]}")
    return json.loads(done.stdout)


def evaluate(work: Path) -> list[Any]:
    """The gate set answered by the serving model (the champion, else the base) on the published index, routed."""
    from components.behaviour.loop import evaluate_model
    from components.config import Settings, load_params
    from components.tracking.registry import champion

    params, settings = load_params(work / "params.yaml"), Settings.from_env()
    champ = champion(params, settings)
    ev = evaluate_model(params, settings, champ.adapter_dir if champ else None, None, "bench")
    return ev.outcomes


def truth(o: Any, edited: set[str], deleted: set[str]) -> str:
    gold = set(o.gold_docs)
    if gold & edited:
        return "stale"
    if gold and gold <= deleted:
        return "missing"
    if gold and not gold & set(o.retrieved):
        return "retrieval"
    return "behaviour"


def failing(outcomes: list[Any]) -> list[Any]:
    return [o for o in outcomes if o.route != "pass"]


def edit_figures(path: Path) -> None:
    """Every figure of the document changes (fees, limits, hours, days): the answering text is no longer true."""
    text = path.read_text(encoding="utf-8")
    path.write_text(re.sub(r"\d+", lambda m: str(int(m.group()) + 1), text), encoding="utf-8")


def ask_live(port: int, questions: list[str], corrections: dict[str, str]) -> list[str]:
    """Each question through the `openai` client, then negative feedback on its trace (with the correction when
    `corrections` has one); the trace ids."""
    import httpx
    from openai import OpenAI

    client = OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="loopback", max_retries=0, timeout=600)
    ids = []
    for q in questions:
        reply = client.chat.completions.create(model="ragloop", messages=[{"role": "user", "content": q}])
        trace_id = reply.model_extra["ragloop"]["trace_id"]
        body: dict[str, Any] = {"trace_id": trace_id, "value": False, "comment": "wrong answer"}
        if q in corrections:
            body["correction"] = corrections[q]
        r = httpx.post(f"http://127.0.0.1:{port}/v1/feedback", json=body, timeout=120)
        if r.status_code not in {200, 202}:  # 202: queued behind its trace, which the server delivers next
            sys.exit(f"feedback refused: {r.status_code} {r.text}")
        ids.append(trace_id)
    return ids


def ask_both(port: int, questions: list[str], answers: dict[str, str]) -> tuple[list[str], list[str]]:
    """The questions asked twice: negative feedback alone, then with the gate's answer as the correction."""
    return ask_live(port, questions, {}), ask_live(port, questions, answers)


def triage_routes(work: Path, trace_ids: list[str]) -> dict[str, str]:
    """trace id -> the route `ragloop triage` gave it (a trace it did not route: 'unrouted')."""
    report = cli_json(work, "triage")
    routed = {x["trace_id"]: route for route, items in report["routed"].items() for x in items}
    return {t: routed.get(t, "unrouted") for t in trace_ids}


def scores(pairs: list[tuple[str, str]], labels: tuple[str, ...]) -> dict[str, Any]:
    """Confusion matrix (truth -> route -> n) and precision / recall per route."""
    matrix = {t: dict(Counter(r for tt, r in pairs if tt == t)) for t in labels}
    per = {}
    for label in ROUTES:
        tp = sum(1 for t, r in pairs if t == label and r == label)
        predicted = sum(1 for _, r in pairs if r == label)
        actual = sum(1 for t, _ in pairs if t == label)
        per[label] = {"precision": round(tp / predicted, 3) if predicted else None,
                      "recall": round(tp / actual, 3) if actual else None, "n": actual}  # fmt: skip
    return {"matrix": matrix, "per_route": per, "cases": len(pairs)}


def repair_rate(before: list[Any], after: list[Any], route: str) -> dict[str, Any]:
    routed = {o.id for o in before if o.route == route}
    fixed = sum(1 for o in after if o.id in routed and o.route == "pass")
    return {"routed": len(routed), "pass_after": fixed, "rate": round(fixed / len(routed), 3) if routed else None}


def pick(outcomes: list[Any], want: str, n: int, edited: set[str], deleted: set[str], rng: random.Random) -> list[Any]:
    cases = [o for o in outcomes if o.gold_docs and truth(o, edited, deleted) == want]
    rng.shuffle(cases)
    return cases[:n]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--live", type=int, default=15, help="live questions per route")
    ap.add_argument("--faulty-docs", type=int, default=5, help="documents edited (stale) and deleted (missing)")
    ap.add_argument("--deployment", type=Path, help="reuse a deployment built by an earlier run (BENCH_KEEP=1)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--skip-retriever", action="store_true", help="stop before the retriever's repair (its training)")
    args = ap.parse_args()
    rng = random.Random(args.seed)
    with c.workdir("routing") as tmp:
        work = args.deployment or tmp
        if args.deployment is None:
            build(work, champion=False)  # the champion comes from the behaviour phase's fine-tune
        from components.behaviour.loop import load_suite
        from components.config import load_params

        gate = {case.id: case for case in load_suite(load_params(work / "params.yaml"))[0]}
        answers = {case.question: case.answer for case in gate.values() if case.answer}
        offline: list[tuple[str, str]] = []
        live: list[tuple[str, str]] = []
        live_corrected: list[tuple[str, str]] = []

        def live_phase(truth_label: str, questions: list[str]) -> int:
            plain, told = ask_both(port, questions, answers)
            drained(f"http://127.0.0.1:{port}")  # the traces and feedback in the store before triage reads them
            routes = triage_routes(work, plain + told)  # one triage, as production runs it (stale: it re-indexes)
            live.extend((truth_label, routes[t]) for t in plain)
            live_corrected.extend((truth_label, routes[t]) for t in told)
            return len(plain)

        phases: dict[str, Any] = {}
        port = free_port()
        server = start_server(work, port)
        try:
            # behaviour: the base model (no champion yet) with retrieval unchanged
            base = evaluate(work)
            offline += [(truth(o, set(), set()), o.route) for o in failing(base)]
            chosen = pick(failing(base), "behaviour", args.live, set(), set(), rng)
            n = live_phase("behaviour", [o.question for o in chosen])
            c.log(f"behaviour phase: {len(failing(base))} failing offline, {n} live (each asked twice)")

            # the action for behaviour: a fine-tune, gated (it becomes the champion only if it wins)
            tuned = cli_json(work, "finetune")
            champ = evaluate(work)
            phases["behaviour"] = {"finetune": {k: tuned.get(k) for k in ("version", "promoted", "train_seconds")},
                                   "repair": repair_rate(base, champ, "behaviour")}  # fmt: skip

            # retrieval: the current index, gold documents ranked below the context's cut-off
            offline += [(truth(o, set(), set()), o.route) for o in failing(champ)]
            chosen = pick(failing(champ), "retrieval", args.live, set(), set(), rng)
            n = live_phase("retrieval", [o.question for o in chosen])
            c.log(f"retrieval phase: {sum(o.route == 'retrieval' for o in champ)} routed offline, {n} live")

            # stale: the answering text of the most-asked documents edited, no re-index
            in_context = Counter(d for o in champ if o.gold_docs for d in o.gold_docs if d in o.retrieved)
            edited = {d for d, _ in in_context.most_common(args.faulty_docs)}
            deleted_pool = [d for d, _ in in_context.most_common() if d not in edited]
            for d in edited:
                edit_figures(work / "data/docs" / d)
            stale = evaluate(work)
            offline += [(truth(o, edited, set()), o.route) for o in failing(stale) if set(o.gold_docs) & edited]
            askable = [o for o in champ if set(o.gold_docs) & edited and set(o.gold_docs) & set(o.retrieved)]
            rng.shuffle(askable)
            live_phase("stale", [o.question for o in askable[: args.live]])  # triage re-indexes: the action
            fresh = evaluate(work)
            phases["stale"] = {"documents": sorted(edited), "repair": repair_rate(stale, fresh, "stale")}

            # missing: documents deleted and the index rebuilt; then written back (the gap report's answer)
            deleted = set(deleted_pool[: args.faulty_docs])
            saved = {d: (work / "data/docs" / d).read_bytes() for d in deleted}
            for d in deleted:
                (work / "data/docs" / d).unlink()
            cli_json(work, "index", "--direct")
            gone = evaluate(work)
            offline += [(truth(o, set(), deleted), o.route) for o in failing(gone) if set(o.gold_docs) <= deleted
                        and o.gold_docs]  # fmt: skip
            askable = [o for o in champ if o.gold_docs and set(o.gold_docs) <= deleted]
            rng.shuffle(askable)
            live_phase("missing", [o.question for o in askable[: args.live]])
            for d, data in saved.items():
                (work / "data/docs" / d).write_bytes(data)
            cli_json(work, "index", "--direct")
            written = evaluate(work)
            phases["missing"] = {"documents": sorted(deleted), "repair": repair_rate(gone, written, "missing")}
        finally:
            server.terminate()  # SIGTERM; a slow machine may need longer than a fast one to stop: then kill
            try:
                server.wait(timeout=180)
            except subprocess.TimeoutExpired:
                server.kill()
                server.wait()

        # the action for retrieval: a tuned retriever, gated; then the same gate set
        before = written
        routed_retrieval = {o.id for o in before if o.route == "retrieval"}
        phases["retrieval"] = {"repair": {"routed": len(routed_retrieval), "pass_after": None, "rate": None}}
        if args.skip_retriever:
            finish(offline, live, live_corrected, phases, args)
            return
        t0 = time.perf_counter()
        tuned_retriever = cli_json(work, "tune-retriever")
        after = evaluate(work)
        phases["retrieval"] = {"tune_retriever": tuned_retriever, "seconds": round(time.perf_counter() - t0, 1),
                               "repair": repair_rate(before, after, "retrieval")}  # fmt: skip

    finish(offline, live, live_corrected, phases, args)


def finish(offline: list[tuple[str, str]], live: list[tuple[str, str]], live_corrected: list[tuple[str, str]],
           phases: dict[str, Any], args: argparse.Namespace) -> None:  # fmt: skip
    result = {
        "offline": scores(offline, ROUTES),
        "live": scores(live, LIVE_ROUTES),
        "live_corrected": scores(live_corrected, LIVE_ROUTES),
        "phases": phases,
        "live_per_route": args.live,
        "faulty_docs": args.faulty_docs,
    }
    report(result)
    c.save("routing", result)


def report(result: dict[str, Any]) -> None:
    for side in ("offline", "live", "live_corrected"):
        print(f"\n{side}: truth x route")
        labels = ROUTES if side == "offline" else LIVE_ROUTES
        matrix = result[side]["matrix"]
        rows = [[t, *(matrix[t].get(r, 0) for r in labels), matrix[t].get("unrouted", 0)] for t in ROUTES]
        print(c.table(["truth", *labels, "unrouted"], rows))
        per = result[side]["per_route"]
        print(c.table(["route", "precision", "recall", "n"], [[r, v["precision"], v["recall"], v["n"]]
                                                             for r, v in per.items()]))  # fmt: skip
    print("\nrepair rate per route (the share of the cases routed there that pass after the route's action):")
    rows = [[r, p["repair"]["routed"], p["repair"]["pass_after"], p["repair"]["rate"]]
            for r, p in result["phases"].items()]  # fmt: skip
    print(c.table(["route", "routed", "pass after", "rate"], rows))


if __name__ == "__main__":
    main()
