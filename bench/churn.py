"""Real document churn: two snapshots of the DVC docs (content/docs/**/*.md, 2023-12-24 -> 2024-12-31).

Index snapshot 1, replace the docs folder's contents with snapshot 2, re-index. The second run must embed
exactly the chunks whose text is new: the distinct chunk hashes of snapshot 2 minus those of snapshot 1,
computed here independently with the project's chunker and the same ChunkingParams. Ends with `verify`.

    .venv/bin/python bench/churn.py
"""

from __future__ import annotations

import hashlib
import shutil
import tarfile
from collections import Counter
from pathlib import Path

import _common as c  # sets the offline environment before the project imports

from components.config import ChunkingParams
from components.knowledge.chunking import chunk_document
from components.knowledge.indexer import run_index
from components.knowledge.maintenance import verify
from components.knowledge.session import open_index

HISTORY = "docs-history"
OLD, NEW = "c0ab7fafd3", "68ddcb1b2a"


def extract(tarball: Path, dest: Path) -> Path:
    """Unpack a snapshot and return its content/docs folder."""
    with tarfile.open(tarball) as tar:
        tar.extractall(dest, filter="data")
    (docs,) = [p for p in dest.glob("*/content/docs") if p.is_dir()]
    return docs


def read_docs(root: Path, suffixes: tuple[str, ...]) -> dict[str, bytes]:
    """path (relative, POSIX) -> bytes, skipping hidden files and folders as the scanner does."""
    out = {}
    for path in sorted(root.rglob("*")):
        rel = path.relative_to(root)
        if path.is_file() and path.suffix.lower() in suffixes and not any(p.startswith(".") for p in rel.parts):
            out[rel.as_posix()] = path.read_bytes()
    return out


def chunk_hashes(files: dict[str, bytes], params: ChunkingParams) -> set[str]:
    hashes: set[str] = set()
    for rel, data in files.items():
        if not data.strip():
            continue  # empty documents are refused by the indexer
        try:
            text = data.decode("utf-8-sig")
        except UnicodeDecodeError:
            text = data.decode("cp1252", errors="replace")
        hashes.update(ch.chunk_hash for ch in chunk_document(rel, text, params))
    return hashes


def expected_documents(old: dict[str, bytes], new: dict[str, bytes]) -> dict[str, int]:
    """Document changes as ragloop defines them: a rename is a path gone and a path added with the same bytes."""
    sha = {k: hashlib.sha256(v).hexdigest() for k, v in {**old, **new}.items()}
    added = [p for p in new if p not in old]
    deleted = {hashlib.sha256(old[p]).hexdigest(): p for p in old if p not in new}
    renamed = [p for p in added if deleted.pop(sha[p], None) is not None]
    return {
        "added": len(added) - len(renamed),
        "deleted": len(deleted),
        "modified": sum(1 for p in new if p in old and old[p] != new[p]),
        "renamed": len(renamed),
        "unchanged": sum(1 for p in new if p in old and old[p] == new[p]),
    }


def git_counts(name_status: Path) -> dict[str, int]:
    counts = Counter(line.split("\t", 1)[0][:1] for line in name_status.read_text().splitlines() if line.strip())
    return {"added": counts["A"], "deleted": counts["D"], "modified": counts["M"], "renamed": counts["R"]}


def index(params: object) -> tuple[dict, c.Timer]:
    with open_index(params) as s:  # type: ignore[arg-type]
        c.warm_model(s)
        c.wait_quiet()
        with c.Timer() as t:
            report = run_index(s)
    return report, t


def main() -> None:
    tar_old, tar_new, name_status = c.require_shared(
        f"{HISTORY}/dvc.org_content-docs_md_{OLD}.tar.gz",
        f"{HISTORY}/dvc.org_content-docs_md_{NEW}.tar.gz",
        f"{HISTORY}/dvc.org_{OLD}..{NEW}_name-status.txt",
    )
    with c.workdir("churn") as work:
        snap1, snap2 = extract(tar_old, work / "snap1"), extract(tar_new, work / "snap2")
        print(f"warm-up (imports, Chroma, model): {c.warm_process(work / 'warm'):.1f} s")
        params = c.deployment(work / "deploy")
        docs = params.paths.docs
        files1 = read_docs(snap1, params.index.suffixes)
        files2 = read_docs(snap2, params.index.suffixes)
        h1, h2 = chunk_hashes(files1, params.chunking), chunk_hashes(files2, params.chunking)
        expected_new = len(h2 - h1)
        expected_docs = expected_documents(files1, files2)

        shutil.rmtree(docs)
        shutil.copytree(snap1, docs, copy_function=shutil.copy)  # fresh mtimes, like a checkout
        print(f"indexing snapshot 1 ({OLD}, {len(files1)} files) ...", flush=True)
        first, t1 = index(params)
        shutil.rmtree(docs)
        shutil.copytree(snap2, docs, copy_function=shutil.copy)
        print(f"indexing snapshot 2 ({NEW}, {len(files2)} files) ...", flush=True)
        second, t2 = index(params)
        with open_index(params) as s, c.Timer() as t_verify:
            check = verify(s)

    got_docs = {k: second["documents"][k] for k in expected_docs}
    rows = [
        ["snapshot 1 (full)", len(files1), first["chunks"]["total"], first["chunks"]["embedded"], len(h1), t1.seconds],
        ["snapshot 2 (incremental)", len(files2), second["chunks"]["total"], second["chunks"]["embedded"], expected_new,
         t2.seconds],
    ]  # fmt: skip
    print("\n" + c.table(["run", "files", "chunks total", "embedded", "expected", "seconds"], rows))
    drows = [[k, got_docs[k], expected_docs[k], git_counts(name_status).get(k, "-")] for k in expected_docs]
    print("\n" + c.table(["documents", "ragloop", "expected (exact bytes)", "git diff --name-status (no -M)"], drows))
    print(
        f"\nsnapshot 2: {second['chunks']['reused']} chunks reused, {second['chunks']['deleted']} records retired;"
        f" re-index took {t2.seconds / t1.seconds:.0%} of the full index time"
    )
    print(f"verify: ok={check['ok']} (pending documents: {len(check['pending_documents'])}, {t_verify.seconds:.1f} s)")
    ok_chunks = second["chunks"]["embedded"] == expected_new and first["chunks"]["embedded"] == len(h1)
    c.save(
        "churn",
        {
            "snapshots": [OLD, NEW],
            "files": [len(files1), len(files2)],
            "distinct_chunks": [len(h1), len(h2)],
            "expected_embedded_second": expected_new,
            "first": {k: first[k] for k in ("documents", "chunks", "embed_seconds", "duration_s")},
            "second": {k: second[k] for k in ("documents", "chunks", "embed_seconds", "duration_s")},
            "seconds": [round(t1.seconds, 3), round(t2.seconds, 3)],
            "others_load": [t1.others, t2.others],
            "expected_documents": expected_docs,
            "git_name_status": git_counts(name_status),
            "verify": {k: v for k, v in check.items() if k != "details"},
            "embedded_matches_expected": ok_chunks,
            "documents_match_expected": got_docs == expected_docs,
        },
    )
    if not ok_chunks or got_docs != expected_docs or not check["ok"] or check["pending_documents"]:
        raise SystemExit("FAILED: embedded chunks, document counts or verify differ from what was expected")
    print("all checks passed: embedded == chunks whose text changed, document counts match, verify ok")


if __name__ == "__main__":
    main()
