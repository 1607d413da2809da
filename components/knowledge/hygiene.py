"""Store hygiene that every index run does after its writes: clear a killed run's leftovers, collect what no
retained version sees, and compact a collection that churned. The indexer calls these; nothing here calls it."""

from __future__ import annotations

from collections import defaultdict
from typing import Any

import numpy as np

from components.knowledge.failpoints import failpoint
from components.knowledge.manifest import OPEN
from components.knowledge.session import IndexSession, next_generation


def recover_leftovers(s: IndexSession, base: int, keep: set[str]) -> None:
    """Undo what a killed run wrote to Chroma after version `base`: unpublished records (except those this
    run is about to write anyway) and removal marks that were never committed."""
    existing = set(s.store.collection_names())
    for name in set(s.manifest.known_collections()) & existing | _unknown_ours(s, existing):
        coll = s.collection(name)
        junk = [i for i in s.store.ids_where(coll, {"v_min": {"$gt": base}}) if i not in keep]
        s.store.delete(coll, junk, s.params.index.upsert_batch)
        marked = s.store.ids_where(coll, {"$and": [{"v_max": {"$gt": base}}, {"v_max": {"$lt": OPEN}}]})
        truth = {r.id: r.v_max for r in s.manifest.records_in(name)}
        by_value: dict[int, list[str]] = defaultdict(list)
        for rid in marked:
            by_value[truth.get(rid, OPEN)].append(rid)
        for value, ids in by_value.items():
            s.store.set_metadata(coll, ids, {"v_max": value}, s.params.index.upsert_batch)


def _unknown_ours(s: IndexSession, existing: set[str]) -> set[str]:
    prefix = f"{s.params.index.collection}-"
    return {n for n in existing if n.startswith(prefix) and n not in s.manifest.known_collections()}


def collect_garbage(s: IndexSession) -> None:
    """Delete what no retained version can see: old records, rows, versions and whole collections."""
    retained = s.manifest.retained_versions(s.params.index.keep_versions)
    if not retained:
        return
    oldest = retained[0]
    referenced = {v.collection for v in s.manifest.versions() if v.version >= oldest}
    existing = set(s.store.collection_names())
    dead: dict[str, list[str]] = defaultdict(list)
    for record in s.manifest.records_closed_by(oldest):
        dead[record.collection].append(record.id)
    for name, ids in dead.items():
        if name in existing and name in referenced:
            s.store.delete(s.collection(name), ids, s.params.index.upsert_batch)
    for name in (existing & set(s.manifest.known_collections())) - referenced:
        s.store.drop(name)
    s.manifest.forget_before(oldest, set(s.manifest.known_collections()) - referenced)
    for name in _unknown_ours(s, existing) - {s.target_collection()}:
        s.store.drop(name)  # a collection a killed compaction or run left behind, referenced by nothing


def compact_if_churned(s: IndexSession) -> bool:
    """HNSW does not shrink after deletes: past the churn threshold, copy the live records (with their stored
    vectors, no re-embedding) into a fresh collection, switch the manifest to it in one transaction, drop
    the old one."""
    published = s.manifest.published()
    info = s.manifest.version(published)
    if info is None:
        return False
    old = info.collection
    removed = s.manifest.collection_removed(old)
    live = len(s.manifest.records_at(published, old))
    if removed == 0 or removed / max(live, 1) < s.params.index.compact_churn_ratio:
        return False
    new = next_generation(old)
    keep = {r.id for r in s.manifest.records_in(old)}
    s.store.drop(new)
    src, dst = s.collection(old), s.collection(new)
    batch: list[Any] = []
    for rec in s.store.scan(src, with_embeddings=True):
        if rec.id in keep:
            batch.append(rec)
        if len(batch) >= s.params.index.upsert_batch:
            _copy(s, dst, batch)
            batch = []
            failpoint("mid-compaction")
    _copy(s, dst, batch)
    s.manifest.switch_collection(old, new)
    s.store.drop(old)
    return True


def _copy(s: IndexSession, dst: Any, records: list[Any]) -> None:
    if records:
        vecs = np.asarray([r.embedding for r in records], dtype=np.float32)
        s.store.add(
            dst,
            [r.id for r in records],
            vecs,
            [r.metadata for r in records],
            s.params.index.upsert_batch,
        )
