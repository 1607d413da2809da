"""Which embedder serves: the champion retriever's pointer, the candidate's own index, promotion and rollback.

The MLflow registry's aliases (`champion`, `previous` of `tracking.retriever_model`) are the record of truth; the
pointer `retriever.json` in `paths.index` is their local cache: the champion's and the previous version's local
folders. `effective_params` reads it, and `open_index` indexes with it, so `ragloop index` (and the index every
command reads) keeps the promoted embedder; with no pointer, `embedder.model` of params.yaml serves.

The embedder's identity is part of the index key, so a candidate's vectors never mix with the champion's: the
candidate is embedded into its own index (`candidate_index`, under `paths.index`), evaluated there, and the
published version stays untouched. Promotion publishes a new version in the candidate's collection with the
candidate's vectors (copied, not re-embedded); rollback points back to the previous embedder and publishes its
retained collection (vectors reused by the index key; `index.keep_versions` decides how long it is retained).
"""

from __future__ import annotations

import shutil
import time
from pathlib import Path

import numpy as np

from components.config import Params
from components.knowledge.indexer import chunk_changes, detect_changes, finish_report, publish, run_index, tidy_store
from components.knowledge.retriever_pointer import Served, effective_params, write_pointer
from components.knowledge.session import open_index

CANDIDATE_INDEX = "retriever-candidate"  # in paths.index: the candidate's own index (manifest + Chroma)


def candidate_params(params: Params, model_folder: Path) -> Params:
    """The candidate's own deployment of the same documents: its index under paths.index, its embedder."""
    paths = params.paths.model_copy(update={"index": params.paths.index / CANDIDATE_INDEX})
    embedder = params.embedder.model_copy(update={"model": str(model_folder), "revision": None})
    return params.model_copy(update={"paths": paths, "embedder": embedder})


def build_candidate_index(params: Params, model_folder: Path) -> dict:
    """Embed the documents with the candidate into its own index (a fresh one: no leftover of an older candidate);
    the published index is not touched."""
    cand = candidate_params(params, model_folder)
    shutil.rmtree(cand.paths.index, ignore_errors=True)
    with open_index(cand) as s:
        return run_index(s)


def keep_model(params: Params, model_folder: Path, version: str) -> Served:
    """Copy a registered version's model folder to paths.models/retriever/v<version>, where it serves from."""
    rel = Path("retriever") / f"v{version}"
    target = params.paths.models / rel
    if not target.is_dir():
        tmp = target.with_name(target.name + ".partial")
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.copytree(model_folder, tmp)
        tmp.rename(target)
    return Served(version, rel.as_posix())


def serve(params: Params, champion: Served, previous: Served | None, vectors_from: Path | None = None) -> dict:
    """Point at `champion` and publish the index under its embedder: the vectors of `vectors_from` (the candidate's
    index) are copied, a retained collection of that embedder is reused, only chunks neither holds are embedded."""
    t0 = time.perf_counter()
    write_pointer(params, champion, previous)
    with open_index(effective_params(params)) as s:
        changes = detect_changes(s)
        plan = chunk_changes(s, changes)
        vectors = _stored_vectors(params, vectors_from, plan.to_embed) if vectors_from else {}
        rest = [h for h in plan.to_embed if h not in vectors]
        if rest:
            vectors.update(zip(rest, s.embedder.encode([plan.texts[h] for h in rest]), strict=True))
        report = publish(s, plan, vectors)
        report["compacted"] = tidy_store(s) if report["published"] else False
    report["copied_vectors"] = len(plan.to_embed) - len(rest)
    report["chunks"]["embedded"] = len(rest) if report["published"] else 0
    return finish_report(report, 0.0, time.perf_counter() - t0)


def _stored_vectors(params: Params, index_dir: Path, hashes: list[str]) -> dict[str, np.ndarray]:
    """chunk hash -> vector, from the published version of the index at `index_dir`."""
    source = params.model_copy(update={"paths": params.paths.model_copy(update={"index": index_dir})})
    with open_index(source, lock=False) as s:
        published = s.manifest.published()
        info = s.manifest.version(published)
        if info is None:
            return {}
        wanted = set(hashes)
        ids = {r.chunk_hash: r.id for r in s.manifest.records_at(published) if r.chunk_hash in wanted}
        stored = s.store.embeddings(s.collection(info.collection), sorted(ids.values()))
        return {h: stored[i] for h, i in ids.items() if i in stored}
