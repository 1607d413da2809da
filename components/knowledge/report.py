"""The change report of an index run, as the JSON contract and as markdown for MLflow and Prefect."""

from __future__ import annotations


def contract(report: dict) -> dict:
    """The stable `ragloop index --json` object (extra keys follow the contract keys)."""
    keys = ("index_version", "documents", "chunks", "errors")
    return {**{k: report[k] for k in keys}, **{k: v for k, v in report.items() if k not in keys}}


def to_markdown(report: dict) -> str:
    d, c = report["documents"], report["chunks"]
    state = "published" if report["published"] else "unchanged (nothing to publish)"
    lines = [
        f"# Index version {report['index_version']}: {state}",
        "",
        "| documents | count |  | chunks | count |",
        "|---|---:|---|---|---:|",
    ]
    doc_rows, chunk_rows = list(d.items()), list(c.items())
    for i in range(max(len(doc_rows), len(chunk_rows))):
        dk, dv = doc_rows[i] if i < len(doc_rows) else ("", "")
        ck, cv = chunk_rows[i] if i < len(chunk_rows) else ("", "")
        lines.append(f"| {dk} | {dv} |  | {ck} | {cv} |")
    lines += [
        "",
        f"Embedder `{report['embedder']}`, collection `{report['collection']}`; "
        f"freshness lag {report['freshness_lag_s']} s; {report.get('embed_chunks_per_s', 0)} chunks/s embedded.",
    ]
    if report.get("reparsed"):
        lines.append(f"\n{report['reparsed']} unchanged document(s) read again: their parser's version changed.")
    if report.get("compacted"):
        lines.append("\nThe collection was compacted (churn passed `index.compact_churn_ratio`).")
    for title, key, field in (("Skipped or failed", "errors", "error"), ("Warnings", "warnings", "warning")):
        if report.get(key):
            lines += ["", f"## {title}", ""] + [f"- `{e['path']}`: {e[field]}" for e in report[key]]
    return "\n".join(lines) + "\n"
