"""Hybrid retrieval (BM25 + dense, reciprocal rank fusion) on tiny real deployments: what it finds that dense
misses, and that it only ever ranks chunks of the published version, across re-indexes, crashes and rebuilds."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from components.config import ParamsError, RetrievalParams
from components.knowledge import indexer
from components.knowledge.indexer import run_index
from components.knowledge.manifest import Record
from components.knowledge.retrieval import LexicalIndex, Retriever, fuse, query_index, tokenize
from tests.helpers import DOCS, Deployment

# Six error pages of one shape: only the code tells them apart, which a dense embedding barely sees.
ERRORS = {
    "card-declined": ("E1047", "the card payment was declined by the merchant's bank"),
    "pin-blocked": ("E2213", "the PIN was entered wrongly three times and is blocked"),
    "card-expired": ("E3381", "the card has expired; order a new one in the app"),
    "limit-reached": ("E4529", "the daily spending limit was reached"),
    "country-blocked": ("E5602", "payments in this country are switched off in the card settings"),
    "contactless-limit": ("E6718", "the contactless limit was reached; insert the card and enter the PIN"),
}
ERROR_DOCS = {
    f"errors/{name}.md": f"# Error {code}\n\nError {code} means {text}.\n" for name, (code, text) in ERRORS.items()
}
# Queries whose answer page dense retrieval ranks below another error page (checked in test_dense_misses_...).
MISSED_BY_DENSE = [("what does error E3381 mean", "errors/card-expired.md"),
                   ("what does error E6718 mean", "errors/contactless-limit.md"),
                   ("card error E2213", "errors/pin-blocked.md")]  # fmt: skip


def _top_docs(dep: Deployment, mode: str, query: str, k: int) -> list[str]:
    params = dep.params().model_copy(update={"retrieval": RetrievalParams(mode=mode)})  # type: ignore[arg-type]
    with Retriever(params) as r:
        return [h["doc"] for h in r.search([query], k)[0]]


@pytest.fixture
def errors(tmp_path: Path) -> Deployment:
    dep = Deployment.create(tmp_path, {**DOCS, **ERROR_DOCS})
    dep.index()
    return dep


def test_the_default_mode_is_hybrid() -> None:
    assert RetrievalParams().mode == "hybrid"


@pytest.mark.parametrize(("query", "doc"), MISSED_BY_DENSE)
def test_hybrid_finds_the_exact_code_that_dense_ranks_below_another_page(errors: Deployment, query: str, doc: str
                                                                         ) -> None:  # fmt: skip
    assert _top_docs(errors, "dense", query, 1) != [doc]
    assert _top_docs(errors, "lexical", query, 1) == [doc]
    assert _top_docs(errors, "hybrid", query, 1) == [doc]


def test_hybrid_hits_have_the_contract_shape_and_fall_in_score(errors: Deployment) -> None:
    hits = query_index(errors.params(), "what does error E3381 mean", k=4)  # params.yaml default: hybrid
    assert [set(h) for h in hits] == [{"doc", "chunk_id", "score", "text"}] * 4
    assert hits[0]["doc"] == "errors/card-expired.md" and "E3381" in hits[0]["text"]
    assert [h["score"] for h in hits] == sorted((h["score"] for h in hits), reverse=True)
    assert 0 < hits[-1]["score"] <= hits[0]["score"] <= 1.0
    assert len({h["chunk_id"] for h in hits}) == 4  # a chunk found by both rankings appears once


def test_lexical_only_matches_come_back_with_their_text(errors: Deployment) -> None:
    (hits,) = _lexical_hits(errors, "E5602", 10)
    assert [h["doc"] for h in hits] == ["errors/country-blocked.md"]  # BM25 returns only chunks sharing a term
    assert "switched off" in hits[0]["text"]


def _lexical_hits(dep: Deployment, query: str, k: int) -> list[list[dict]]:
    params = dep.params().model_copy(update={"retrieval": RetrievalParams(mode="lexical")})  # type: ignore[arg-type]
    with Retriever(params) as r:
        return r.search([query], k)


def test_a_deleted_document_is_never_returned_after_the_reindex(errors: Deployment) -> None:
    assert _top_docs(errors, "hybrid", "E5602", 1) == ["errors/country-blocked.md"]  # caches v1's lexical index
    (errors.docs / "errors/country-blocked.md").unlink()
    assert errors.index()["index_version"] == 2
    for mode in ("hybrid", "lexical", "dense"):
        assert "errors/country-blocked.md" not in _top_docs(errors, mode, "E5602 country blocked", 20)
    with Retriever(errors.params()) as r:
        assert r.version == 2 and r.lexical is not None
        assert "errors/country-blocked.md" not in {rec.doc for rec in r.lexical.records}


def test_an_edited_chunk_is_found_by_its_new_words_only(errors: Deployment) -> None:
    _top_docs(errors, "hybrid", "E1047", 1)
    errors.write("errors/card-declined.md", "# Error E1047\n\nError E1047 means the merchant refused the payment.\n")
    errors.index()
    (hits,) = _lexical_hits(errors, "merchant refused", 5)
    assert hits[0]["doc"] == "errors/card-declined.md" and "refused" in hits[0]["text"]
    (hits,) = _lexical_hits(errors, "declined by the merchant's bank", 10)
    assert all("merchant's bank" not in h["text"] for h in hits)


def test_an_open_reader_keeps_its_version_while_another_run_publishes(errors: Deployment) -> None:
    with Retriever(errors.params()) as reader:  # opened on version 1; its lexical index is built lazily, later
        (errors.docs / "errors/pin-blocked.md").unlink()
        errors.write("errors/new-code.md", "# Error E9090\n\nError E9090 means the app needs an update.\n")
        assert errors.index()["index_version"] == 2
        assert reader.version == 1
        assert reader.search(["E2213"], 1)[0][0]["doc"] == "errors/pin-blocked.md"
        assert all(h["doc"] != "errors/new-code.md" for h in reader.search(["E9090 app update"], 20)[0])
    assert _top_docs(errors, "hybrid", "E9090", 1) == ["errors/new-code.md"]


def test_records_of_a_run_that_crashed_before_publishing_are_invisible(errors: Deployment, monkeypatch) -> None:
    _top_docs(errors, "hybrid", "E4529", 1)
    (errors.docs / "errors/limit-reached.md").unlink()
    errors.write("errors/unpublished.md", "# Error E7007\n\nError E7007 means the transfer needs a second approval.\n")

    def crash(name: str) -> None:
        if name == "after-marks":  # new records written to Chroma, removed ones marked, nothing committed
            raise RuntimeError("killed")

    monkeypatch.setattr(indexer, "failpoint", crash)
    with errors.session() as s, pytest.raises(RuntimeError, match="killed"):
        run_index(s)
    for mode in ("hybrid", "lexical", "dense"):
        assert "errors/unpublished.md" not in _top_docs(errors, mode, "E7007 second approval transfer", 20)
        assert _top_docs(errors, mode, "E4529", 1) == ["errors/limit-reached.md"]  # still in version 1


def test_an_index_rebuilt_from_scratch_is_not_served_from_the_cache(tmp_path: Path) -> None:
    dep = Deployment.create(tmp_path, {**DOCS, **ERROR_DOCS})
    dep.index()
    assert _top_docs(dep, "lexical", "E6718", 1) == ["errors/contactless-limit.md"]
    shutil.rmtree(tmp_path / "state")  # same path, version numbers start again at 1
    shutil.rmtree(dep.docs)
    Deployment.create(tmp_path, DOCS)
    assert dep.index()["index_version"] == 1
    assert _top_docs(dep, "lexical", "E6718", 5) == []
    assert "errors/contactless-limit.md" not in _top_docs(dep, "hybrid", "E6718", 5)


def test_retrieval_params_are_checked(tmp_path: Path) -> None:
    dep = Deployment.create(tmp_path, retrieval={"mode": "sparse"})
    with pytest.raises(ParamsError, match=r"retrieval\.mode"):
        dep.params()
    dep.write_params(retrieval={"mode": "dense", "candidates": 0})
    with pytest.raises(ParamsError, match=r"retrieval\.candidates"):
        dep.params()
    dep.write_params(retrieval={"stemmer": "klingon"})
    with pytest.raises(ParamsError, match=r"retrieval\.stemmer.*english"):
        dep.params()
    dep.write_params(retrieval={"stemmer": None, "mode": "lexical"})
    assert dep.params().retrieval.stemmer is None


# -- the pieces, without a deployment ------------------------------------------------------------------------------
def _records(texts: dict[str, str]) -> tuple[list[Record], dict[str, str]]:
    records = [Record(f"{name}@1", "c", name, f"{name}.md", f"h-{name}", 1, 2**31 - 1) for name in texts]
    return records, {f"h-{name}": text for name, text in texts.items()}


def test_bm25_prefers_rare_terms_short_chunks_and_is_deterministic() -> None:
    records, texts = _records({
        "a": "the card fee is two euro",
        "b": "the card the card the card is blocked",
        "c": "a very long text about the card " + "and other things " * 30,
        "d": "transfer limits",
    })  # fmt: skip
    index = LexicalIndex.build(records, texts, k1=1.2, b=0.75)
    assert [r.chunk_id for r, _ in index.top("blocked card", 4)] == ["b", "a", "c"]  # d shares no term: absent
    assert [r.chunk_id for r, _ in index.top("fee", 4)] == ["a"]
    assert index.top("unknown words", 4) == []
    scores = [s for _, s in index.top("card", 3)]
    assert scores == sorted(scores, reverse=True) and scores[-1] < scores[0]  # the long chunk ranks last
    same = LexicalIndex.build(list(reversed(records)), texts, k1=1.2, b=0.75)
    assert [r.id for r, _ in same.top("the", 4)] == [r.id for r, _ in index.top("the", 4)]


def test_tokenize_lowercases_words_and_codes() -> None:
    assert tokenize("Error E3381: the PIN-code, 2 EUR.") == ["error", "e3381", "the", "pin", "code", "2", "eur"]
    assert tokenize("Blocked payments, blocking cards", "english") == ["block", "payment", "block", "card"]


def test_stemming_matches_other_word_forms_and_none_keeps_exact_words() -> None:
    records, texts = _records({"a": "Payments are blocked while the card is frozen", "b": "Transfers arrive in a day"})
    stemmed = LexicalIndex.build(records, texts, k1=0.9, b=0.4, stemmer="english")
    assert [r.chunk_id for r, _ in stemmed.top("blocking a payment", 2)] == ["a", "b"]  # "a" also matches b's "a"
    assert [r.chunk_id for r, _ in stemmed.top("payment blocking", 2)] == ["a"]
    exact = LexicalIndex.build(records, texts, k1=0.9, b=0.4, stemmer=None)
    assert exact.top("payment blocking", 2) == []


def test_fuse_is_reciprocal_rank_fusion() -> None:
    fused = fuse([["a", "b", "c"], ["c", "a", "d"]], k=4, rrf_k=60)
    ids = [rid for rid, _ in fused]
    assert ids == ["a", "c", "b", "d"]
    scores = dict(fused)
    assert scores["a"] == pytest.approx((1 / 61 + 1 / 62) / (2 / 61))
    assert scores["b"] == pytest.approx((1 / 62) / (2 / 61)) and scores["d"] < scores["b"]
    assert [rid for rid, _ in fuse([["a", "b"], ["c", "d"]], k=4, rrf_k=60)] == ["a", "c", "b", "d"]  # ties: list order
    assert fuse([["x"], ["x"]], k=1, rrf_k=60) == [("x", 1.0)]
    assert fuse([[], []], k=3, rrf_k=60) == []
