"""The user's commands on an index: rollback to a retained version, verify the store against the manifest and
repair it. They build on the indexer (a rollback is a publish); the hygiene every run does is in hygiene.py."""

from __future__ import annotations

from collections import Counter, defaultdict
from typing import Any

import numpy as np

from components.knowledge.indexer import Changes, detect_changes, diff_state, publish, tidy_store
from components.knowledge.manifest import OPEN
from components.knowledge.session import IndexSession
from components.knowledge.store import record_metadata


class RollbackError(ValueError):
    """The requested index version is not one of the retained versions."""


def rollback(s: IndexSession, version: int | None = None) -> dict:
    """Publish a new version whose content is that of `version` (default: the one before the published)."""
    published = s.manifest.published()
    available = [v.version for v in s.manifest.versions() if v.version != published]
    target = version if version is not None else (available[-1] if available else None)
    info = s.manifest.version(target) if target is not None else None
    if target is None or info is None or target == published:
        raise RollbackError(
            f"cannot roll back to version {target}: retained versions are {available or 'none'} "
            f"(published: {published}; index.keep_versions={s.params.index.keep_versions})"
        )
    chunks: dict[str, list[tuple[str, str]]] = defaultdict(list)
    for r in s.manifest.records_at(target):
        chunks[r.doc].append((r.chunk_id, r.chunk_hash))
    changes = Changes(published, info.collection, info.collection != s.manifest.version(published).collection)  # type: ignore[union-attr]
    plan = diff_state(
        s,
        changes,
        s.manifest.docs_at(published),
        s.manifest.docs_at(target),
        dict(chunks),
        {},
        kind="rollback",
        identity=(info.embedder, info.chunker),
    )
    if plan.to_embed:
        raise RollbackError(f"version {target}'s vectors are no longer stored; cannot restore it without re-embedding")
    report = publish(s, plan, {})
    report["compacted"] = tidy_store(s)
    report["rolled_back_to"] = target
    return report


def verify(s: IndexSession, repair: bool = False) -> dict:
    """Check the real store against the manifest (and the docs folder against the published version)."""
    published = s.manifest.published()
    info = s.manifest.version(published)
    if info is None:
        return _verdict(published, {}, [])
    coll = s.collection(info.collection)
    findings = _inspect(s, coll, info.collection, published, info.embedder)
    if repair and any(findings.values()):
        _repair(s, coll, info.collection, published, findings)
        findings = _inspect(s, coll, info.collection, published, info.embedder)
    return _verdict(published, findings, _pending_documents(s))


def _inspect(s: IndexSession, coll: Any, name: str, published: int, embedder: str) -> dict[str, list[str]]:
    known = {r.id: r for r in s.manifest.records_in(name)}
    expected = {rid for rid, r in known.items() if r.v_min <= published < r.v_max}
    stored = {rec.id: rec for rec in s.store.scan(coll, with_embeddings=True)}
    dims = Counter(len(r.embedding) for r in stored.values() if r.embedding is not None)
    dim = dims.most_common(1)[0][0] if dims else 0
    visible = {
        rid for rid, r in stored.items() if r.metadata.get("v_min", OPEN) <= published < r.metadata.get("v_max", 0)
    }
    expected_chunks = {known[rid].chunk_id for rid in expected}
    out: dict[str, list[str]] = {
        "missing": [],
        "orphaned": [],
        "duplicated": [],
        "foreign_embedder": [],
        "mismatched": [],
    }
    for rid in expected:
        if rid not in visible:
            out["missing"].append(rid)
    for rid, rec in stored.items():
        if rec.metadata.get("embedder") != embedder or rec.embedding is None or len(rec.embedding) != dim:
            out["foreign_embedder"].append(rid)
        elif rid not in known:
            dup = rid in visible and rec.metadata.get("chunk_id") in expected_chunks
            out["duplicated" if dup else "orphaned"].append(rid)
        elif (rec.metadata.get("v_min"), rec.metadata.get("v_max")) != (known[rid].v_min, known[rid].v_max):
            out["mismatched"].append(rid)
    return out


def _repair(s: IndexSession, coll: Any, name: str, published: int, findings: dict[str, list[str]]) -> None:
    batch = s.params.index.upsert_batch
    s.store.delete(coll, findings["orphaned"] + findings["duplicated"] + findings["foreign_embedder"], batch)
    known = {r.id: r for r in s.manifest.records_in(name)}
    for rid in findings["mismatched"]:
        s.store.set_metadata(coll, [rid], {"v_min": known[rid].v_min, "v_max": known[rid].v_max}, batch)
    gone = set(findings["foreign_embedder"]) | set(findings["missing"])
    restore = [known[rid] for rid in sorted(gone) if rid in known]
    if not restore:
        return
    sources = {r.chunk_hash: r.id for r in known.values() if r.id not in gone}
    have = s.store.embeddings(coll, sorted({sources[r.chunk_hash] for r in restore if r.chunk_hash in sources}))
    need = sorted({r.chunk_hash for r in restore if sources.get(r.chunk_hash) not in have})
    texts = s.manifest.embedding_texts({r.chunk_hash for r in restore})
    fresh = dict(zip(need, s.embedder.encode([texts[h] for h in need]), strict=True)) if need else {}
    vecs = np.asarray([fresh[r.chunk_hash] if r.chunk_hash in fresh else have[sources[r.chunk_hash]] for r in restore])
    metas = [record_metadata(r, s.manifest.version(published).embedder) for r in restore]  # type: ignore[union-attr]
    s.store.add(coll, [r.id for r in restore], vecs, metas, batch)


def _pending_documents(s: IndexSession) -> list[str]:
    ch = detect_changes(s)
    return sorted([*ch.added, *ch.modified, *ch.deleted, *ch.renamed, *ch.reparsed])


def _verdict(published: int, findings: dict[str, list[str]], pending: list[str]) -> dict:
    counts = {k: len(findings.get(k, [])) for k in ("missing", "orphaned", "duplicated", "foreign_embedder")}
    mismatched = len(findings.get("mismatched", []))
    return {
        "ok": not any(counts.values()) and not mismatched,
        **counts,
        "mismatched": mismatched,
        "index_version": published,
        "pending_documents": pending,
        "details": {k: sorted(v)[:20] for k, v in findings.items() if v},
    }
