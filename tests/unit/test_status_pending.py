"""`ragloop status`'s knowledge actions: pending only when they can change something (history.knowledge_pending)."""

from __future__ import annotations

from components.behaviour.history import knowledge_pending

ROUTES = {"pass": 230, "behaviour": 10, "retrieval": 51, "stale": 0, "missing": 0}
FRESH = {"reindex_pending": False, "reason": "the documents match the published version"}


def test_retrieval_misses_on_a_fresh_index_make_nothing_pending() -> None:
    """The issue's case: 51 retrieval misses, documents unchanged, not significant: no re-index (the index decides
    that), no retriever tuning, no document to write; the reasons say why."""
    p = knowledge_pending({"routes": ROUTES, "actions": []}, FRESH)
    assert (p["write_documents"], p["tune_retriever"]) == (False, False)
    assert "51 retrieval misses, not significantly worse" in p["tune_retriever_reason"]
    assert p["reindex_note"].endswith("the index now matches the documents")


def test_each_action_the_evaluation_asked_for_is_pending_with_its_evidence() -> None:
    routes = {**ROUTES, "missing": 3}
    p = knowledge_pending({"routes": routes, "actions": ["write_documents", "tune_retriever"]}, FRESH)
    assert p["write_documents"] and p["write_documents_reason"].startswith("3 gate case(s)")
    assert p["tune_retriever"] and "`ragloop tune-retriever`" in p["tune_retriever_reason"]


def test_an_evaluation_of_another_index_or_model_asks_nothing() -> None:
    p = knowledge_pending(None, FRESH)
    assert not p["write_documents"] and not p["tune_retriever"]
    assert "no evaluation of the champion on the published index" in p["tune_retriever_reason"]
