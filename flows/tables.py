"""The Rich tables the `ragloop` commands print without `--json` (one per command's result; the JSON is the
contract, these are for people)."""

from __future__ import annotations

import json

from rich.table import Table


def triage_view(r: dict) -> Table:
    t = r["traffic"]
    rate = t["feedback"]["rate"]
    title = (f"ragloop triage: {t['traces']} live answers, {t['failing']} failing, feedback on "
             f"{'-' if rate is None else f'{rate:.0%}'}")  # fmt: skip
    table = Table("route", "answers", "details", title=title, show_lines=True, title_justify="left")
    for route, items in r["routed"].items():
        table.add_row(route, str(len(items)), "\n".join(f"{x['question']}: {x['reason']}" for x in items) or "-")
    table.add_row("re-index", "", r["reindex"]["why"])
    table.add_row("gaps", str(len(r["gaps"])), "\n".join(f"{g['topic']} ({g['count']}): {'; '.join(g['questions'])}"
                                                          for g in r["gaps"]) or "-")  # fmt: skip
    table.add_row("candidates", str(len(r["candidates"]["added"])), ", ".join(r["candidates"]["added"]) or "-")
    reg = r["regression"]
    tests = "\n".join(s["reason"] for s in reg["slices"]) or "-"
    table.add_row("regression", "event emitted" if reg["fired"] else "none", tests)
    ret = r["retrieval_regression"]
    table.add_row("retrieval misses", "event emitted" if ret["fired"] else "none", ret["reason"])
    return table


def cases_table(rows: list[dict]) -> Table:
    t = Table("id", "question", "intent", "answer", "needs", title=f"{len(rows)} candidate case(s)")
    for c in rows:
        lacks = (("--intent", not c.get("intent")),
                 ("--answer", not c.get("answer") and c.get("intent") != "out_of_scope"))  # fmt: skip
        needs = [n for n, missing in lacks if missing]
        if c.get("gate_collision"):
            needs = [f"cannot be accepted: same question as gate case {c['gate_collision']}"]
        label = f"{c.get('intent') or '-'}" + (" (model's guess)" if c.get("intent_source") == "model" else "")
        t.add_row(c["id"], c["question"], label, c.get("answer") or "-", ", ".join(needs) or "ready")
    return t


def server_table(s: dict) -> Table:
    state = "healthy" if s["healthy"] else "running, not answering" if s["running"] else "not running"
    t = Table("", "", title=f"Prefect server: {state}" + (f" (UI {s['url']})" if s.get("url") else ""))
    for key in ("started", "stopped", "url", "api_url", "pid", "port", "home", "log", "started_at"):
        if key in s:
            t.add_row(key, str(s[key]))
    return t


def status_view(s: dict) -> Table:
    t = Table("", "state", title="ragloop status", show_lines=True)
    ix = s["index"]
    if ix["version"] is None:
        t.add_row("index", f"[yellow]nothing published[/] ({ix['reason']})")
    else:
        age = f"{ix['age_s'] / 3600:.1f} h ago" if ix["age_s"] is not None else "?"
        t.add_row("index", f"version {ix['version']}: {ix['documents']} documents, {ix['chunks']} chunks, "
                  f"published {ix['published_at']} ({age})")  # fmt: skip
    for alias in ("champion", "previous"):
        m = s[alias]
        rates = ", ".join(f"{k} {v:.2f}" for k, v in (m or {}).get("gate_pass_rates", {}).items())
        t.add_row(alias, "-" if m is None else f"v{m['version']} (gate {m['gate']}, registered {m['registered_at']})"
                  + (f"\ngate set: {rates}" if rates else ""))  # fmt: skip
    ev = s["last_evaluation"]
    if ev is None:
        t.add_row("last evaluation", "-")
    else:
        regressed = f" (regressed: {', '.join(ev['regressed_slices'])})" if ev["regressed_slices"] else ""
        routes = ", ".join(f"{k} {v}" for k, v in ev["routes"].items())
        t.add_row("last evaluation", f"{ev['model_version']} on index v{ev['index_version']} at {ev['at']}: "
                  f"decision [bold]{ev['decision']}[/]{regressed}\nroutes: {routes}")  # fmt: skip
    p = s["pending"]
    flag = {True: "[yellow]pending[/]", False: "[green]no[/]"}
    t.add_row("re-index", f"{flag[p['reindex']]}: {p['reindex_reason']}")
    t.add_row("evaluation", f"{flag[p['evaluation']]}: {p['evaluation_reason']}")
    t.add_row("write documents", f"{flag[p['write_documents']]}: {p['write_documents_reason']}")
    t.add_row("tune retriever", f"{flag[p['tune_retriever']]}: {p['tune_retriever_reason']}")
    t.add_row("fine-tune", f"{flag[p['finetune']]}: {p['finetune_reason']}")
    t.add_row("gate", f"{flag[bool(p['gate'])]}" + (f": versions {', '.join(p['gate'])}" if p["gate"] else ""))
    if "production" in s:
        live = s["production"]
        t.add_row("live (24 h)", live_line(live))
        last = live.get("last_triage")
        done = f"last {last['at']}: routed {last['routed']}" if last else "never run"
        t.add_row("triage", f"{flag[bool(live.get('triage_pending'))]}: {live.get('triage_reason', '-')} ({done})")
    return t


def live_line(live: dict) -> str:
    if not live.get("traces"):
        return live.get("note", "no live traffic")
    r, fb = live["routes"], live["feedback"]
    slices = ", ".join(f"{k} {v['fail_rate']:.2f}" for k, v in live["slices"].items())
    routed = ", ".join(f"{route} {n}" for route, n in r.items())
    head = (f"{live['traces']} answers, {live['failing']} failing ({routed}, not triaged "
            f"{live['untriaged_failing']}); feedback on {fb['rate']:.0%} ({fb['negative']} negative)")  # fmt: skip
    return head + (f"\ncontract failure rates: {slices}" if slices else "")


def advice_view(a: dict) -> Table:
    t = Table("", "", title=f"ragloop advise: {a['headline']}", show_lines=True, title_justify="left")
    parts = (("knowledge", "knowledge → the retrieval pipeline"),
             ("behaviour", f"behaviour → {a['behaviour']['verdict']}"))  # fmt: skip
    for part, label in parts:
        d = a[part]
        t.add_row(f"[bold]{label}[/]", "\n".join(d["advice"]))
        t.add_row("  evidence", "\n".join(f"- {e}" for e in d["evidence"]) or "-")
        t.add_row("  would change it", "\n".join(f"- {w}" for w in d["would_change"]))
    return t


def index_table(r: dict) -> Table:
    state = "published" if r.get("published", True) else "unchanged"
    t = Table(title=f"index version {r['index_version']} ({state})")
    for col in ("", "added", "modified", "deleted", "renamed", "unchanged", "failed"):
        t.add_column(col)
    t.add_row("documents", *(str(r["documents"][k]) for k in list(r["documents"])))
    t.add_row("chunks", *(f"{k} {v}" for k, v in r["chunks"].items()), "", "")
    for e in r["errors"]:
        t.add_row("[red]error[/]", f"{e['path']}: {e['error']}")
    return t


def dict_table(d: dict) -> Table:
    t = Table("key", "value")
    for k, v in d.items():
        t.add_row(str(k), json.dumps(v) if isinstance(v, (list, dict)) else str(v))
    return t


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


def hits_table(hits: list[dict]) -> Table:
    t = Table("score", "doc", "text")
    for h in hits:
        t.add_row(f"{h['score']:.3f}", h["doc"], h["text"][:160].replace("\n", " "))
    return t


def verify_table(r: dict) -> Table:
    t = Table(title=f"verify index version {r['index_version']}: {'ok' if r['ok'] else 'NOT OK'}")
    t.add_column("check")
    t.add_column("count")
    for key in ("missing", "orphaned", "duplicated", "foreign_embedder", "mismatched"):
        t.add_row(key, str(r[key]))
    t.add_row("documents changed since publish", str(len(r["pending_documents"])))
    return t


def versions_table(rows: list[dict]) -> Table:
    t = Table("version", "published", "kind", "embedder", "collection")
    for r in rows:
        t.add_row(str(r["version"]), "*" if r["published"] else "", r["kind"], r["embedder"], r["collection"])
    return t
