"""One index run: detect changes, chunk, embed, publish. Each step is a plain function over an IndexSession.

Crash consistency comes from the order of writes in `publish`: new records are written to Chroma with
v_min = N (invisible to readers of N-1), removed records get v_max = N (still visible to N-1), then one
SQLite transaction publishes N. A run killed anywhere before that commit leaves N-1 intact; the next run
finds the leftovers (records with v_min > published, or v_max marks above it), reuses what it can, and
clears the rest.
"""

from __future__ import annotations

import json
import time
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from components.knowledge.chunking import chunk_document, chunk_ids, embedding_text
from components.knowledge.documents import (
    DocumentError,
    FileStat,
    parse_document,
    parsed_by,
    parser_for,
    read_bytes,
    scan_documents,
    sha256_bytes,
)
from components.knowledge.failpoints import failpoint
from components.knowledge.hygiene import collect_garbage, compact_if_churned, recover_leftovers
from components.knowledge.manifest import (
    OPEN,
    DocRow,
    FileHashes,
    IndexRun,
    IndexVersion,
    Manifest,
    Publication,
    Record,
    manifest_path,
)
from components.knowledge.session import IndexSession
from components.knowledge.store import record_metadata


@dataclass
class Changes:
    base: int
    collection: str
    key_changed: bool
    added: list[str] = field(default_factory=list)
    modified: list[str] = field(default_factory=list)
    deleted: list[str] = field(default_factory=list)
    renamed: dict[str, str] = field(default_factory=dict)  # new path -> old path
    unchanged: list[str] = field(default_factory=list)
    reparsed: list[str] = field(default_factory=list)  # unchanged, but read by an older version of their parser
    still_failing: list[str] = field(default_factory=list)  # same bytes that failed last time: not re-read
    to_parse: list[str] = field(default_factory=list)
    refused: list[DocumentError] = field(default_factory=list)
    files: dict[str, FileStat] = field(default_factory=dict)
    hashes: dict[str, str] = field(default_factory=dict)
    seconds: float = 0.0


@dataclass(frozen=True)
class Addition:
    id: str
    chunk_id: str
    doc: str
    chunk_hash: str


@dataclass
class Plan:
    changes: Changes
    version: int
    kind: str
    base_docs: dict[str, DocRow]
    docs: dict[str, DocRow]
    additions: list[Addition]
    removals: list[Record]
    texts: dict[str, str]  # chunk_hash -> text (stored and shown), for every addition
    contexts: dict[str, str]  # chunk_hash -> the headings embedded with it (chunking.embed_title), where any
    reuse: dict[str, str]  # chunk_hash -> record id in the target collection holding its vector
    present: set[str]  # addition ids already in Chroma (left by a killed run): nothing to write
    to_embed: list[str]  # distinct chunk hashes that need the model
    total: int
    embedder_id: str
    chunker_id: str
    errors: list[dict[str, str]] = field(default_factory=list)
    warnings: list[dict[str, str]] = field(default_factory=list)

    def embedding_texts(self) -> list[str]:
        """What the model reads for `to_embed`, in order: each chunk's context (its headings), then its text."""
        return [embedding_text(self.contexts.get(h, ""), self.texts[h]) for h in self.to_embed]

    @property
    def empty(self) -> bool:
        """Nothing to publish: same records, same document rows, and a version already exists."""
        return self.changes.base > 0 and not self.additions and not self.removals and self.docs == self.base_docs


def detect_changes(s: IndexSession) -> Changes:
    """Compare the docs folder with the published manifest: stat first, sha256 only where the stat moved."""
    t0 = time.perf_counter()
    scan = scan_documents(s.docs_root, s.params.index.suffixes)
    base = s.manifest.published()
    alive = s.manifest.docs_at(base) if base else {}
    info = s.manifest.version(base)
    collection = s.target_collection()
    ch = Changes(base, collection, bool(info and info.collection != collection), refused=scan.refused)
    ch.files = scan.files
    cache = s.manifest.stat_cache()
    for path, st in scan.files.items():
        cached = cache.get(path)
        if cached and cached[:2] == (st.size, st.mtime_ns):
            ch.hashes[path] = cached[2]
        elif (digest := _hash_file(s, path)) is not None:
            ch.hashes[path] = digest
    refused = {e.path for e in scan.refused}
    added = [p for p in scan.files if p not in alive]
    deleted = [p for p in alive if p not in scan.files and p not in refused]
    _pair_renames(ch, added, deleted, alive)
    _classify_known(ch, [p for p in scan.files if p in alive], alive)
    ch.to_parse = ch.added + ch.modified + ch.reparsed + [p for p in refused if p in alive]
    if ch.key_changed:
        ch.to_parse = sorted(set(ch.to_parse) | set(ch.unchanged) | set(ch.renamed))
    ch.seconds = time.perf_counter() - t0
    return ch


def changed_since_published(s: IndexSession) -> set[str]:
    """Documents added, edited, removed or renamed (either name) on disk since the published version: what a
    re-index would change. Read-only; empty before anything is published."""
    if not s.manifest.published():
        return set()
    ch = detect_changes(s)
    return {*ch.added, *ch.modified, *ch.deleted, *ch.renamed, *ch.renamed.values()}


def _pair_renames(ch: Changes, added: list[str], deleted: list[str], alive: dict[str, DocRow]) -> None:
    """A new path with the bytes of a deleted one is a rename (its chunks move, nothing is parsed), provided the
    parser of the new path is the one that read the old (a .md renamed .html is read anew)."""
    by_key = {(alive[p].sha256, parsed_by(p, alive[p].parser)): p for p in deleted if not alive[p].stale}
    for path in added:
        old = by_key.pop((ch.hashes.get(path, ""), parser_for(path).identity), None)
        if old is not None:
            ch.renamed[path] = old
    ch.added = [p for p in added if p not in ch.renamed]
    ch.deleted = [p for p in deleted if p not in ch.renamed.values()]


def _classify_known(ch: Changes, paths: list[str], alive: dict[str, DocRow]) -> None:
    """Files the published version has a row for: modified (other bytes), else unchanged, and re-read when an
    older version of their parser read them; bytes that failed with this very parser are still failing."""
    for path in paths:
        row, digest = alive[path], ch.hashes.get(path)
        if digest is None or digest != (row.bad_sha if row.stale else row.sha256):
            ch.modified.append(path)
        elif parsed_by(path, row.parser) != parser_for(path).identity:
            ch.unchanged.append(path)
            ch.reparsed.append(path)
        elif row.stale:
            ch.still_failing.append(path)
        else:
            ch.unchanged.append(path)


def _hash_file(s: IndexSession, path: str) -> str | None:
    try:
        return sha256_bytes(read_bytes(s.docs_root, path, s.params.index.max_file_bytes))
    except DocumentError:
        return None  # reported when the document is read for chunking


def chunk_changes(s: IndexSession, ch: Changes) -> Plan:
    """Parse and chunk what changed, then diff the desired state of the next version against the published."""
    by_doc: dict[str, list[tuple[str, str]]] = defaultdict(list)
    for r in s.manifest.records_at(ch.base) if ch.base else []:
        by_doc[r.doc].append((r.chunk_id, r.chunk_hash))
    base_docs = s.manifest.docs_at(ch.base) if ch.base else {}
    docs = {p: row for p, row in base_docs.items() if p not in ch.deleted}
    chunks = {p: by_doc[p] for p in docs}
    texts: dict[str, str] = {}
    contexts: dict[str, str] = {}
    errors = [{"path": e.path, "error": e.reason} for e in ch.refused]
    errors += [{"path": p, "error": f"still failing: {base_docs[p].error}"} for p in ch.still_failing]
    warnings: list[dict[str, str]] = []
    for new, old in ch.renamed.items():
        docs[new] = DocRow(new, docs.pop(old).sha256, parser=parser_for(new).identity)
        chunks[new] = _rekey(new, chunks.pop(old))
    refused = {e.path: e.reason for e in ch.refused}
    for path in ch.to_parse:
        try:
            if path in refused:
                raise DocumentError(path, refused[path])
            data = read_bytes(s.docs_root, path, s.params.index.max_file_bytes)
            parsed = parse_document(path, data)
        except DocumentError as err:
            if path not in refused:
                errors.append({"path": path, "error": err.reason})
            last_good = base_docs[path].sha256 if path in base_docs else ""
            docs[path] = DocRow(path, last_good, True, err.reason, ch.hashes.get(path), _parser_identity(path))
            chunks[path] = by_doc[path]  # the last good chunks stay, marked stale (none for a new document)
            continue
        warnings.extend({"path": path, "warning": w} for w in parsed.warnings)
        pieces = chunk_document(path, parsed.text, s.params.chunking)
        docs[path] = DocRow(path, sha256_bytes(data), parser=parsed.parser)
        chunks[path] = [(c.chunk_id, c.chunk_hash) for c in pieces]
        texts.update((c.chunk_hash, c.text) for c in pieces)
        contexts.update((c.chunk_hash, c.context) for c in pieces if c.context)
    plan = diff_state(s, ch, base_docs, docs, chunks, texts, contexts=contexts)
    plan.errors, plan.warnings = errors, warnings
    return plan


def _parser_identity(path: str) -> str:
    try:
        return parser_for(path).identity
    except DocumentError:
        return ""


def _rekey(doc: str, pairs: list[tuple[str, str]]) -> list[tuple[str, str]]:
    """The chunk ids of a document moved to a new path (same texts, so the same vectors)."""
    hashes = [h for _, h in pairs]
    return list(zip(chunk_ids(doc, hashes), hashes, strict=True))


def diff_state(
    s: IndexSession,
    ch: Changes,
    base_docs: dict[str, DocRow],
    docs: dict[str, DocRow],
    chunks: dict[str, list[tuple[str, str]]],
    texts: dict[str, str],
    kind: str = "index",
    identity: tuple[str, str] | None = None,
    contexts: dict[str, str] | None = None,
) -> Plan:
    """The plan that turns the published version into the desired (docs, chunks) state. `identity` is the
    (embedder, chunker) of the target collection: the session's own unless a rollback restores another."""
    version = s.manifest.latest_version_id() + 1
    alive = {r.chunk_id: r for r in s.manifest.records_at(ch.base)} if ch.base else {}
    wanted = {cid: (doc, h) for doc, pairs in chunks.items() if doc in docs for cid, h in pairs}
    in_target = {cid for cid, r in alive.items() if r.collection == ch.collection}
    additions = [Addition(f"{cid}@{version}", cid, doc, h) for cid, (doc, h) in wanted.items() if cid not in in_target]
    removals = [r for cid, r in alive.items() if cid not in wanted or cid not in in_target]
    need = {a.chunk_hash for a in additions}
    reuse = s.manifest.vector_sources(ch.collection, need)
    missing_text = need - texts.keys()
    stored = s.manifest.texts_and_contexts(missing_text)
    texts = {**{h: t for h, t in texts.items() if h in need}, **{h: t for h, (t, _) in stored.items()}}
    contexts = {h: c for h, c in (contexts or {}).items() if h in need}
    contexts.update((h, c) for h, (_, c) in stored.items() if c)
    present: set[str] = set()
    if additions:
        coll = s.collection(ch.collection)
        leftovers = set(s.store.ids_where(coll, {"v_min": {"$gt": ch.base}}))
        present = leftovers & {a.id for a in additions}
    fresh = {a.chunk_hash for a in additions if a.id not in present and a.chunk_hash not in reuse}
    embedder_id, chunker_id = identity or (s.embedder_id, s.chunker_id)
    return Plan(
        ch,
        version,
        kind,
        base_docs,
        docs,
        additions,
        removals,
        texts,
        contexts,
        reuse,
        present,
        sorted(fresh),
        len(wanted),
        embedder_id,
        chunker_id,
    )


def embed_chunks(s: IndexSession, plan: Plan, progress: Callable[[int], None] | None = None) -> dict[str, np.ndarray]:
    """Run the model on exactly the texts no stored vector covers."""
    if not plan.to_embed:
        return {}
    vectors = s.embedder.encode(plan.embedding_texts(), progress=progress)
    return dict(zip(plan.to_embed, vectors, strict=True))


def publish(s: IndexSession, plan: Plan, vectors: dict[str, np.ndarray]) -> dict:
    """Write the new records, mark the removed ones, then commit version N in one transaction. Idempotent:
    a retry after a failure (or after a kill) converges to the same state."""
    t0 = time.perf_counter()
    ch = plan.changes
    if plan.empty:
        _save_stats(s, ch)
        return _report(plan, ch.base, published=False, seconds=0.0)
    if s.manifest.published() == plan.version:  # a retried task whose first attempt did commit
        return _report(plan, plan.version, published=True, seconds=time.perf_counter() - t0)
    failpoint("after-chunk")
    coll = s.collection(ch.collection)
    recover_leftovers(s, ch.base, keep={a.id for a in plan.additions})
    todo = [a for a in plan.additions if a.id not in plan.present]
    copied = s.store.embeddings(coll, sorted({plan.reuse[a.chunk_hash] for a in todo if a.chunk_hash in plan.reuse}))
    vecs = [vectors[a.chunk_hash] if a.chunk_hash in vectors else copied[plan.reuse[a.chunk_hash]] for a in todo]
    if todo:
        s.store.add(
            coll,
            [a.id for a in todo],
            np.asarray(vecs, dtype=np.float32),
            [record_metadata(_record(plan, a), plan.embedder_id) for a in todo],
            s.params.index.upsert_batch,
            after_batch=lambda: failpoint("mid-add"),
        )
    failpoint("after-add")
    for name, ids in _group_by_collection(plan.removals).items():
        s.store.set_metadata(s.collection(name), ids, {"v_max": plan.version}, s.params.index.upsert_batch)
    failpoint("after-marks")
    _commit(s, plan)
    failpoint("after-commit")
    return _report(plan, plan.version, published=True, seconds=time.perf_counter() - t0)


def tidy_store(s: IndexSession) -> bool:
    """After a publish: drop what no retained version sees, and compact when churn passed the threshold."""
    collect_garbage(s)
    return compact_if_churned(s)


def run_index(s: IndexSession, progress: Callable[[int], None] | None = None) -> dict:
    """The whole run without an orchestrator (the Prefect flow calls the same steps as tasks)."""
    t0 = time.perf_counter()
    changes = detect_changes(s)
    plan = chunk_changes(s, changes)
    t_embed = time.perf_counter()
    vectors = embed_chunks(s, plan, progress)
    embed_seconds = time.perf_counter() - t_embed
    report = publish(s, plan, vectors)
    report["compacted"] = tidy_store(s) if report["published"] else False
    return finish_report(report, embed_seconds, time.perf_counter() - t0)


def finish_report(report: dict, embed_seconds: float, seconds: float) -> dict:
    embedded = report["chunks"]["embedded"]
    report["embed_seconds"] = round(embed_seconds, 3)
    report["embed_chunks_per_s"] = round(embedded / embed_seconds, 1) if embedded and embed_seconds else 0.0
    report["duration_s"] = round(seconds, 3)
    return report


def worth_a_run_record(report: dict) -> bool:
    """Whether an index run gets its own MLflow run: it published a version or met a document it could not read.
    A run that changed nothing is journaled in the manifest only (`journal`): a schedule every few minutes would
    otherwise bury the runs that did something, and recording one costs importing MLflow (~2.5 s of a 0.7 s run)."""
    return bool(report["published"] or report["documents"]["failed"] or report["errors"])


def journal(index_dir: Path, report: dict, reason: str, mlflow_run_id: str | None) -> None:
    """Append this run to the manifest's run journal (`ragloop advise` counts runs from it)."""
    d = report["documents"]
    manifest = Manifest(manifest_path(index_dir))
    try:
        changed = sum(d[k] for k in ("added", "modified", "deleted", "renamed"))
        manifest.journal_run(IndexRun(
            finished_at=time.time(), reason=reason, index_version=int(report["index_version"]),
            published=bool(report["published"]), changed=changed, failed=int(d["failed"]),
            duration_s=float(report.get("duration_s", 0.0)), mlflow_run_id=mlflow_run_id))  # fmt: skip
    finally:
        manifest.close()


def _record(plan: Plan, a: Addition) -> Record:
    return Record(a.id, plan.changes.collection, a.chunk_id, a.doc, a.chunk_hash, plan.version, OPEN)


def _group_by_collection(records: list[Record]) -> dict[str, list[str]]:
    out: dict[str, list[str]] = defaultdict(list)
    for r in records:
        out[r.collection].append(r.id)
    return out


def _commit(s: IndexSession, plan: Plan) -> None:
    ch, base_docs = plan.changes, plan.base_docs
    report = json.dumps({"errors": plan.errors, "warnings": plan.warnings})
    s.manifest.publish(Publication(
        version=IndexVersion(plan.version, time.time(), ch.collection, plan.embedder_id, plan.chunker_id, plan.kind,
                             report),
        closed_records=plan.removals,
        opened_records=[_record(plan, a) for a in plan.additions],
        texts={a.chunk_hash: plan.texts[a.chunk_hash] for a in plan.additions},
        contexts={a.chunk_hash: plan.contexts[a.chunk_hash] for a in plan.additions if a.chunk_hash in plan.contexts},
        closed_docs=[p for p in base_docs if plan.docs.get(p) != base_docs[p]],
        opened_docs=[row for p, row in plan.docs.items() if base_docs.get(p) != row],
        file_hashes=_file_hashes(ch) if plan.kind == "index" else None))  # fmt: skip


def _save_stats(s: IndexSession, ch: Changes) -> None:
    s.manifest.save_file_hashes(_file_hashes(ch))


def _file_hashes(ch: Changes) -> FileHashes:
    rows = {p: (st.size, st.mtime_ns, ch.hashes[p]) for p, st in ch.files.items() if p in ch.hashes}
    return FileHashes(rows, set(ch.files))


def _report(plan: Plan, version: int, *, published: bool, seconds: float) -> dict:
    ch = plan.changes
    fresh = set(plan.to_embed)  # built once: the report must stay linear in the number of chunks
    embedded_records = sum(1 for a in plan.additions if a.chunk_hash in fresh)
    now = time.time()
    changed = [ch.files[p].mtime_ns / 1e9 for p in [*ch.added, *ch.modified, *ch.renamed] if p in ch.files]
    failed = {e["path"] for e in plan.errors}  # counted once, as failed, not also as added or modified
    return {
        "index_version": version,
        "published": published,
        "documents": {
            "added": len(set(ch.added) - failed),
            "modified": len(set(ch.modified) - failed),
            "deleted": len(ch.deleted),
            "renamed": len(ch.renamed),
            "unchanged": len(set(ch.unchanged) - failed),
            "failed": len(failed),
        },
        "chunks": {
            "embedded": len(plan.to_embed) if published else 0,
            "reused": plan.total - embedded_records if published else plan.total,
            "deleted": len(plan.removals) if published else 0,
            "total": plan.total,
        },
        "errors": plan.errors,
        "warnings": plan.warnings,
        "reparsed": len(ch.reparsed),  # documents re-read because their parser's version changed
        "collection": ch.collection,
        "embedder": plan.embedder_id,
        "detect_seconds": round(ch.seconds, 4),
        "publish_seconds": round(seconds, 4),
        "freshness_lag_s": round(max((now - t for t in changed), default=0.0), 3) if published else 0.0,
        "compacted": False,
    }
