"""`ragloop advise`: "RAG or fine-tuning, what goes where?" answered from this system's recorded history.

Knowledge (facts that change) belongs in retrieval; behaviour (format, label, tone, refusals) belongs in the
weights, but only when the evaluations show behaviour failures, there are enough labelled examples to learn
from, and past fine-tunes actually bought something at the gate. Each part of the answer lists the evidence it
rests on and what would change it. The thresholds are below; `evidence` (components/behaviour/history.py) is the
input, so the rule can be checked on any history.
"""

from __future__ import annotations

from components.routes import (
    BEHAVIOUR,
    FINETUNE,
    KNOWLEDGE_ROUTES,
    MISSING,
    RETRIEVAL,
    STALE,
    TUNE_RETRIEVER,
    WRITE_DOCUMENTS,
)

BEHAVIOUR_SHARE = 0.10  # of evaluated cases failing on behaviour (right context, wrong answer): worth the weights
KNOWLEDGE_SHARE = 0.10  # of evaluated cases failing on knowledge: retrieval needs work, not a fine-tune
MIN_EXAMPLES = 100  # labelled training examples below which a LoRA fine-tune has too little to learn from
FUTILE_TRIES = 2  # this many fine-tunes in the window with none promoted: stop and change data or base model
MIN_LIVE = 20  # live answers below which production shares are shown but never move a verdict


def _pct(x: float | None) -> str:
    return "n/a" if x is None else f"{100 * x:.0f}%"


LIVE_ACTIONS = {STALE: "re-index", MISSING: "write the document", RETRIEVAL: "tune the retriever",
                BEHAVIOUR: "candidate cases for a fine-tune"}  # fmt: skip


def live_shares(ev: dict) -> tuple[float | None, float | None]:
    """(stale + missing + retrieval, behaviour) shares of the live answers triage routed: the retrieval pipeline's
    failures and the weights'; None without enough live traffic."""
    live = ev.get("production") or {}
    n = live.get("traces", 0)
    if n < MIN_LIVE:
        return None, None
    routes = live["routes"]
    return sum(routes.get(r, 0) for r in KNOWLEDGE_ROUTES) / n, routes.get(BEHAVIOUR, 0) / n


def production_lines(ev: dict) -> list[str]:
    """The production evidence: live traffic, its failure mix (as triage routed it) and the feedback rate."""
    live, days = ev.get("production") or {}, ev["days"]
    if not live.get("traces"):
        return [f"no live traffic in the last {days} days" + (f" ({live['note']})" if live.get("note") else "")
                + ": `ragloop api` serves and traces answers, `ragloop triage` routes their failures"]  # fmt: skip
    r, fb, n = live["routes"], live["feedback"], live["traces"]
    routed = ", ".join(f"{r.get(route, 0)} {route} ({LIVE_ACTIONS[route]})" for route in (*KNOWLEDGE_ROUTES, BEHAVIOUR))
    lines = [f"live: {n} answers in {days} days, {live['failing']} failing: {routed}, {live['untriaged_failing']} "
             "not triaged yet",
             f"live feedback on {_pct(fb['rate'])} of answers ({fb['negative']} negative, {fb['corrections']} "
             "corrections)"]  # fmt: skip
    if live["slices"]:
        lines.append("live contract failures: " + ", ".join(f"{s} {v['fail_rate']:.2f} of {v['n']}"
                                                            for s, v in live["slices"].items()))  # fmt: skip
    return lines


def _routes_line(latest: dict) -> str:
    r = latest["routes"]
    n = sum(r.values())
    return (f"latest evaluation ({latest['model_version']}, index v{latest['index_version']}): of {n} gate cases, "
            f"{r[RETRIEVAL]} retrieval misses (the document indexed and current, not in the context), {r[STALE]} "
            f"stale (a document changed since the index), {r[MISSING]} missing (no document answers them); "
            f"actions {', '.join(latest['actions']) or 'none'}")  # fmt: skip


def _knowledge_actions(latest: dict | None, index: dict) -> list[str]:
    """The retrieval pipeline's fixes that can change something now: a re-index only while the documents differ
    from the published version, the others only when the latest evaluation asked for them."""
    advice = []
    if index.get("reindex_pending"):
        advice.append(f"re-index: {index['reason']} (the reindex deployment does it on a schedule and on "
                      "`ragloop.documents.changed`)")  # fmt: skip
    if latest is None:
        return advice
    r, actions = latest["routes"], latest["actions"]
    if WRITE_DOCUMENTS in actions:
        advice.append(f"write the missing documents: {r[MISSING]} gate case(s) have no document in the index "
                      "that answers them (`ragloop evaluate --json`: missing_documents; live: `ragloop triage`'s "
                      "gap report)")  # fmt: skip
    if TUNE_RETRIEVER in actions:
        advice.append(f"tune the retriever: {r[RETRIEVAL]} retrieval misses are significant (`ragloop "
                      "tune-retriever`; the loop starts it on `ragloop.retrieval.regression`)")  # fmt: skip
    return advice


def _knowledge(ev: dict) -> dict:
    k, b, days = ev["knowledge"], ev["behaviour"], ev["days"]
    index = ev.get("index") or {}
    docs = k["documents"]
    evidence = []
    if k["index_runs"]:
        evidence.append(
            f"the documents changed in {k['published_versions']} of {k['index_runs']} index runs in the last {days} "
            f"days ({docs['added']} added, {docs['modified']} modified, {docs['deleted']} deleted, {docs['renamed']} "
            f"renamed): {k['chunks_embedded']} chunks embedded and {k['chunks_deleted']} removed, churn "
            f"{_pct(k['churn'])} of the {k['chunks_now']} chunks now indexed"
        )
        evidence.append(f"re-indexing took {k['index_seconds']} s in all, with no training")
        if k["first_index_in_window"]:
            evidence.append("the window includes the first build of the index (every document counted as added)")
    else:
        evidence.append(f"no index run recorded in the last {days} days")
    if index.get("version") is not None:
        evidence.append(f"the index now: version {index['version']}, {index['reason']}")
    latest = b["latest"]
    if b["knowledge_share"] is not None:
        evidence.append(f"{sum(b['cases'][r] for r in KNOWLEDGE_ROUTES)} of {sum(b['cases'].values())} evaluated "
                        f"cases ({_pct(b['knowledge_share'])}) failed on knowledge (stale, missing or not "
                        "retrieved)")  # fmt: skip
    if latest:
        evidence.append(_routes_line(latest))
        if latest["retrieval"]:
            evidence.append("latest retrieval on the gate set: "
                            + ", ".join(f"{m} {v:.2f}" for m, v in sorted(latest["retrieval"].items())))  # fmt: skip
    advice = ["keep facts in retrieval: re-index when documents change, write what no document answers, tune the "
              "retriever when it misses documents it holds; never retrain the generator for a fact"]  # fmt: skip
    actions = _knowledge_actions(latest, index)
    advice += actions
    would_change = [
        f"putting these facts into the weights would take a fine-tune after each of the {k['published_versions']} "
        f"changes in {days} days; retrieval would only become optional if the documents stopped changing and "
        f"knowledge failures stayed under {_pct(KNOWLEDGE_SHARE)}",
        "retrieval misses significantly worse than the champion's, or below the floors of `regression.floors` "
        "(context_hit, recall_at_k), start a retriever fine-tune",
    ]
    live_knowledge, _ = live_shares(ev)
    if live_knowledge is not None and live_knowledge >= KNOWLEDGE_SHARE:
        r = ev["production"]["routes"]
        fixes = [f"{LIVE_ACTIONS[route]} ({r.get(route, 0)} {route})" for route in KNOWLEDGE_ROUTES if r.get(route)]
        advice.append(f"{_pct(live_knowledge)} of live answers failed on the retrieval side, not the weights: "
                      + "; ".join(fixes))  # fmt: skip
    evidence += production_lines(ev)[:1]  # the traffic and its failure mix; feedback and slices are behaviour's
    active = (k["published_versions"] > 0 or bool(actions) or (b["knowledge_share"] or 0) >= KNOWLEDGE_SHARE
              or (live_knowledge or 0) >= KNOWLEDGE_SHARE)  # fmt: skip
    return {"verdict": "retrieval", "active": active, "advice": advice, "evidence": evidence,
            "would_change": would_change}  # fmt: skip


def _behaviour(ev: dict) -> dict:
    b, ex, tunes, days = ev["behaviour"], ev["examples"], ev["finetunes"], ev["days"]
    latest = b["latest"]
    if latest is None:
        return {"verdict": "unknown", "advice": [f"no evaluation recorded in the last {days} days: run "
                "`ragloop evaluate` (or schedule the evaluate deployment) before deciding"],
                "evidence": [], "would_change": ["one evaluation of the serving model"]}  # fmt: skip
    cases = latest["routes"]
    n = sum(cases.values())
    share = cases[BEHAVIOUR] / n if n else 0.0
    evidence = [
        f"latest evaluation ({latest['model_version']}, index v{latest['index_version']}, {latest['at']}): "
        f"{cases['behaviour']} of {n} cases ({_pct(share)}) failed on behaviour with the right context retrieved; "
        f"decision {latest['decision']!r}"
        + (f", regressed: {', '.join(latest['regressed_slices'])}" if latest["regressed_slices"] else ""),
        "pass rates: " + ", ".join(f"{s} {r:.2f}" for s, r in sorted(latest["pass_rates"].items())),
        f"{b['evaluations']} evaluations in {days} days, {b['regressions']} with a behaviour regression; "
        f"{_pct(b['behaviour_share'])} of all evaluated cases failed on behaviour",
        f"{ex['train']} labelled training examples ({len(ex.get('train_by_intent', {}))} intents), "
        f"{ex['gate']} held-out gate cases",
    ]
    judged = [t for t in tunes if t["verdict"] in ("promoted", "rejected")]  # a killed or ungated run is no try
    promoted = [t for t in judged if t["verdict"] == "promoted"]
    for t in tunes:
        gains = ", ".join(f"{s} {g:+.2f}" for s, g in t["gains"].items()) or "no gate result"
        cost = f"{t['train_seconds']:.0f} s of training" if t["train_seconds"] is not None else "cost not recorded"
        evidence.append(f"fine-tune {t['at']} -> version {t['version'] or '-'} {t['verdict']}: {gains} ({cost})")
    if not tunes:
        evidence.append(f"no fine-tune in the last {days} days")
    evidence += production_lines(ev)[1:]  # the traffic line is the knowledge part's

    _, live_behaviour = live_shares(ev)
    wanted = share >= BEHAVIOUR_SHARE or FINETUNE in latest["actions"] or (live_behaviour or 0) >= BEHAVIOUR_SHARE
    if not wanted:
        verdict = "no fine-tune"
        advice = [f"keep the weights: behaviour failures are {_pct(share)} of cases (< {_pct(BEHAVIOUR_SHARE)}) "
                  "and no slice regressed"]  # fmt: skip
        would_change = [f"behaviour failures above {_pct(BEHAVIOUR_SHARE)} of cases, or a slice regression at an "
                        "evaluation (which triggers the finetune deployment by itself)"]  # fmt: skip
    elif ex["train"] < MIN_EXAMPLES:
        verdict = "label more"
        advice = [f"behaviour needs the weights ({_pct(share)} of cases fail on it), but only {ex['train']} labelled "
                  f"examples exist (< {MIN_EXAMPLES}): label more before fine-tuning"]  # fmt: skip
        would_change = [f"{MIN_EXAMPLES - ex['train']} more labelled examples in the training set"]
    elif len(judged) >= FUTILE_TRIES and not promoted:
        spent = sum(t["train_seconds"] or 0 for t in tunes)
        verdict = "hold"
        advice = [f"{len(judged)} fine-tunes in {days} days, none promoted ({spent:.0f} s of training spent): change "
                  "the training data or the base model (`generator.model`) before fine-tuning again"]  # fmt: skip
        would_change = ["a fine-tune that wins at the gate, after a change of data or base model"]
    else:
        verdict = "fine-tune"
        record = f"; {len(promoted)} of {len(judged)} recent fine-tunes won at the gate" if judged else ""
        advice = [f"fine-tune for behaviour: {_pct(share)} of cases fail on behaviour with the right context, "
                  f"and {ex['train']} labelled examples exist{record}"]  # fmt: skip
        would_change = [f"behaviour failures under {_pct(BEHAVIOUR_SHARE)} of cases with no regressed slice "
                        f"(then keep the weights), or {FUTILE_TRIES}+ fine-tunes rejected at the gate "
                        "(then change data or base model first)"]  # fmt: skip
    return {"verdict": verdict, "advice": advice, "evidence": evidence, "would_change": would_change}


def advise(ev: dict) -> dict:
    """The recommendation ('retrieval' | 'fine-tune' | 'both') with the evidence behind each part."""
    knowledge, behaviour = _knowledge(ev), _behaviour(ev)
    if behaviour["verdict"] == "fine-tune":
        recommendation = "both" if knowledge["active"] else "fine-tune"
    else:
        recommendation = "retrieval"
    headline = {
        "both": "both: retrieval for the facts that change, a LoRA fine-tune for the behaviour that fails",
        "fine-tune": "fine-tune: the knowledge is stable and retrieval finds it; behaviour is what fails",
        "retrieval": "keep to retrieval: " + (behaviour["advice"][0] if behaviour["advice"] else "no fine-tune now"),
    }[recommendation]
    return {"recommendation": recommendation, "headline": headline, "knowledge": knowledge, "behaviour": behaviour,
            "evidence": ev}  # fmt: skip
