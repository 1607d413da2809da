"""`ragloop eval-retrieval`'s pure parts: the labelled query file (every bad line named by file, line and field),
the metrics (exhaustive small tables, graded gains), and documents scored from their chunks."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from components.hashing import file_md5
from components.knowledge.retrieval import aggregate_docs
from components.knowledge.retrieval_eval import (
    QueryFileError,
    load_queries,
    parse_ks,
    score_query,
    summarise,
    unknown_documents,
)


def _write(tmp_path: Path, *lines: str) -> Path:
    path = tmp_path / "queries.jsonl"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def test_a_list_gives_gain_one_an_object_gives_its_gains_and_ids_default_to_the_line(tmp_path: Path) -> None:
    graded = {"id": 7, "query": "lost card", "relevant": {"cards/lost.md": 2, "support.txt": 0.5}}
    path = _write(tmp_path, json.dumps({"query": "atm fee", "relevant": ["fees.md"]}), "", json.dumps(graded))
    first, second = load_queries(path)
    assert (first.id, first.line, first.gains) == ("line-1", 1, {"fees.md": 1.0})
    assert (second.id, second.line, second.gains) == ("7", 3, {"cards/lost.md": 2.0, "support.txt": 0.5})
    assert len(file_md5(path)) == 32


@pytest.mark.parametrize(
    ("line", "names"),
    [
        ("{not json", "invalid JSON"),
        ('["a list"]', "expected a JSON object"),
        ('{"relevant": ["a.md"]}', "field 'query'"),
        ('{"query": "  ", "relevant": ["a.md"]}', "field 'query'"),
        ('{"query": "q"}', "field 'relevant'"),
        ('{"query": "q", "relevant": []}', "field 'relevant'"),
        ('{"query": "q", "relevant": "a.md"}', "field 'relevant'"),
        ('{"query": "q", "relevant": [3]}', "field 'relevant'"),
        ('{"query": "q", "relevant": {"a.md": 0}}', "gain of 'a.md' is 0"),
        ('{"query": "q", "relevant": {"a.md": true}}', "gain of 'a.md' is True"),
        ('{"query": "q", "relevant": ["a.md"], "answer": "x"}', "unknown field(s) 'answer'"),
        ('{"id": [1], "query": "q", "relevant": ["a.md"]}', "field 'id'"),
    ],
)
def test_a_bad_line_is_refused_naming_the_file_the_line_and_the_field(tmp_path: Path, line: str, names: str) -> None:
    path = _write(tmp_path, json.dumps({"query": "fine", "relevant": ["a.md"]}), line)
    with pytest.raises(QueryFileError) as caught:
        load_queries(path)
    assert str(caught.value).startswith(f"{path}:2: ")
    assert names in str(caught.value)


def test_a_repeated_id_an_empty_file_and_a_missing_file_are_refused(tmp_path: Path) -> None:
    row = json.dumps({"id": "a", "query": "q", "relevant": ["a.md"]})
    with pytest.raises(QueryFileError, match=r":2: field 'id': 'a' is used by an earlier line"):
        load_queries(_write(tmp_path, row, row))
    with pytest.raises(QueryFileError, match="no queries"):
        load_queries(_write(tmp_path, "", "  "))
    with pytest.raises(QueryFileError, match="cannot read"):
        load_queries(tmp_path / "absent.jsonl")


def test_unknown_documents_are_listed_with_their_line_and_the_closest_indexed_path(tmp_path: Path) -> None:
    queries = load_queries(_write(tmp_path, json.dumps({"query": "q", "relevant": ["fees.md", "support.md"]})))
    assert unknown_documents(queries, {"fees.md", "support.txt", "cards/lost.md"}) == [
        {"id": "line-1", "line": 1, "doc": "support.md", "closest": "support.txt"}
    ]


def _dcg(gains: list[float]) -> float:
    return sum(g / math.log2(i + 2) for i, g in enumerate(gains))


@pytest.mark.parametrize(
    ("ranked", "gains", "expected"),
    [
        # the one relevant document first, third, absent
        (["a", "x", "y"], {"a": 1}, {"recall@1": 1, "recall@3": 1, "hit@1": 1, "mrr": 1, "ndcg@10": 1}),
        (["x", "y", "a"], {"a": 1}, {"recall@1": 0, "recall@3": 1, "hit@1": 0, "mrr": 1 / 3, "ndcg@10": 0.5}),
        (["x", "y", "z"], {"a": 1}, {"recall@1": 0, "recall@3": 0, "hit@3": 0, "mrr": 0, "ndcg@10": 0}),
        # two relevant: recall counts each, MRR the first
        (["x", "b", "a"], {"a": 1, "b": 1}, {"recall@1": 0, "recall@3": 1, "mrr": 0.5,
                                             "ndcg@10": _dcg([0, 1, 1]) / _dcg([1, 1])}),
        # chunk level: a document that comes back twice counts once, where it first appears
        (["a", "a", "a", "b"], {"a": 1, "b": 1}, {"recall@3": 0.5, "mrr": 1,
                                                   "ndcg@10": _dcg([1, 0, 0, 1]) / _dcg([1, 1])}),
        # graded: the gains weigh nDCG, not recall
        (["b", "a"], {"a": 3, "b": 1}, {"recall@1": 0.5, "ndcg@10": _dcg([1, 3]) / _dcg([3, 1])}),
        (["a", "b"], {"a": 3, "b": 1}, {"recall@1": 0.5, "ndcg@10": 1}),
    ],
)  # fmt: skip
def test_the_metrics_of_one_query(ranked: list[str], gains: dict[str, float], expected: dict[str, float]) -> None:
    got = score_query(ranked, gains, (1, 3))
    for name, value in expected.items():
        assert got[name] == pytest.approx(value), name


def test_graded_gains_change_ndcg_where_binary_labels_cannot() -> None:
    ranked = ["b", "a"]
    assert score_query(ranked, {"a": 1, "b": 1}, (1,))["ndcg@10"] == pytest.approx(1.0)
    assert score_query(ranked, {"a": 3, "b": 1}, (1,))["ndcg@10"] < 0.8


def test_summarise_averages_every_metric() -> None:
    assert summarise([{"mrr": 1.0, "recall@1": 1.0}, {"mrr": 0.5, "recall@1": 0.0}]) == {"mrr": 0.75, "recall@1": 0.5}
    assert summarise([]) == {}


@pytest.mark.parametrize(("text", "ks"), [("1,5,10", (1, 5, 10)), ("10, 1,1", (1, 10)), ("3", (3,))])
def test_k_values_are_parsed_sorted_and_distinct(text: str, ks: tuple[int, ...]) -> None:
    assert parse_ks(text) == ks


@pytest.mark.parametrize("text", ["", "a,b", "0,5", "1,500", "1.5"])
def test_bad_k_values_are_refused_saying_what_is_expected(text: str) -> None:
    with pytest.raises(ValueError, match="--k: expected"):
        parse_ks(text)


def _rows(docs: list[str]) -> list[tuple[str, str, str, str, float]]:
    return [(f"r{i}", doc, f"c{i}", f"h{i}", 1.0 - i / 10) for i, doc in enumerate(docs)]


def test_documents_are_ranked_by_their_best_chunk_or_by_their_best_chunks_fused() -> None:
    # one lucky chunk of `one.md` first; `many.md` holds the next three
    rows = _rows(["one.md", "many.md", "many.md", "many.md", "other.md"])
    by_max = aggregate_docs(rows, 3, "max", 3)
    by_rrf = aggregate_docs(rows, 3, "rrf", 3)
    assert [d for d, _, _ in by_max] == ["one.md", "many.md", "other.md"]
    assert [d for d, _, _ in by_rrf] == ["many.md", "one.md", "other.md"]
    assert by_max[0][1] == pytest.approx(1.0)
    assert [row[2] for row in by_rrf[0][2]] == ["c1", "c2", "c3"]  # its best chunks, best first
    assert 0 < by_rrf[-1][1] < by_rrf[0][1] <= 1.0


def test_documents_keep_at_most_doc_chunks_chunks_and_k_documents() -> None:
    rows = _rows(["a", "a", "a", "a", "b", "c"])
    ranked = aggregate_docs(rows, 2, "rrf", 2)
    assert [d for d, _, _ in ranked] == ["a", "b"]
    assert len(ranked[0][2]) == 2
    assert aggregate_docs([], 5, "max", 3) == []


def test_rrf_does_not_rank_documents_by_how_many_chunks_they_have() -> None:
    # one-chunk documents (XQuAD's paragraphs): the document ranked first stays first against one that holds the
    # next two ranks (with a fusion constant of 60 it did not, and XQuAD recall@5 fell to 0.23)
    rows = _rows(["gold.md", "long.md", "long.md", "x.md"])
    assert [d for d, _, _ in aggregate_docs(rows, 2, "rrf", 3)] == ["gold.md", "long.md"]
