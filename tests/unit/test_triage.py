"""Triage's rules: routing a failing live answer, grouping and naming knowledge gaps, the live regression test."""

from __future__ import annotations

import math
from dataclasses import replace

import numpy as np
import pytest

from components.behaviour.candidates import candidate_from
from components.behaviour.contract import load_contract
from components.behaviour.stats import binomial_greater
from components.behaviour.triage import (
    Chunk,
    Evidence,
    Routed,
    champion_fail_rates,
    classify,
    document_frequency,
    gap_report,
    group_questions,
    live_regression,
    retrieval_misses,
    route_all,
    topic_terms,
)
from components.config import RegressionParams, TriageParams
from components.routes import BEHAVIOUR, MISSING, RETRIEVAL, STALE
from components.tracking.production import LiveTrace, summarise_traffic
from components.tracking.triage_runs import parse_since
from tests.helpers import REPO

P = TriageParams()  # relevance_min 0.4
REG = RegressionParams(alpha=0.05, min_cases=20, min_effect=0.05)
LINE = "intent: fees | answer: 2 EUR | sources: [fees.md]"


def trace(tid: str = "tr-1", *, checks: dict[str, bool] | None = None, feedback: bool | float | None = None,
          correction: str | None = None, output: str = LINE, question: str = "how much is an atm withdrawal",
          intent: str | None = "fees") -> LiveTrace:  # fmt: skip
    return LiveTrace(trace_id=tid, timestamp_ms=1, question=question, output=output, retrieved=(), k=2,
                     index_version=1, model_version="v1", checks=checks if checks is not None else {"format": True},
                     feedback=feedback, correction=correction, intent=intent)  # fmt: skip


def c(doc: str, rel: float, text: str | None = None, overlap: float | None = None) -> Chunk:
    return Chunk(doc, text or f"text of {doc}", rel, overlap)


def ev(given: tuple[Chunk, ...], deep: tuple[Chunk, ...], k: int = 1) -> Evidence:
    return Evidence(given, deep, k)


# -- routing ---------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("given", "deep", "k", "route", "docs", "rank"),
    [
        # a document added after indexing: now retrieved within the context's depth, relevant, not given: stale
        ((c("faq.md", 0.2),), (c("weekend.md", 0.7), c("faq.md", 0.2)), 1, STALE, ("weekend.md",), 1),
        # the same document edited: new text within the context's depth, more relevant than what it had: stale
        ((c("support.md", 0.45, "old"),), (c("support.md", 0.62, "new"),), 1, STALE, ("support.md",), 1),
        # the answering document is indexed and current but ranks below the context's cut-off: retrieval
        ((c("atm.md", 0.5),), (c("atm.md", 0.5), c("fees.md", 0.7)), 1, RETRIEVAL, ("fees.md",), 2),
        ((c("a.md", 0.5), c("b.md", 0.45)), (c("a.md", 0.5), c("b.md", 0.45), c("c.md", 0.4), c("fees.md", 0.51)),
         2, RETRIEVAL, ("fees.md",), 4),
        # nothing relevant in the context nor at any depth: missing
        ((c("fees.md", 0.21),), (c("fees.md", 0.21), c("limits.md", 0.39)), 1, MISSING, (), None),
        # the index was down then and has nothing relevant now, deep or not: still missing (now we can tell)
        ((), (c("fees.md", 0.1),), 1, MISSING, (), None),
        # nothing retrieved then or now: an outage, never missing
        ((), (), 1, "outage", (), None),
        # the right context, the most relevant at every depth: the output is to blame
        ((c("fees.md", 0.66),), (c("fees.md", 0.66), c("limits.md", 0.5)), 1, BEHAVIOUR, ("fees.md",), None),
        # a deeper chunk of the document the context already gave: the right document was there, behaviour
        ((c("fees.md", 0.6, "a"),), (c("fees.md", 0.6, "a"), c("fees.md", 0.65, "b")), 1, BEHAVIOUR, ("fees.md",),
         None),
        # a tie between the context and a deeper chunk goes to the context: never sent away on a coin toss
        ((c("fees.md", 0.6),), (c("fees.md", 0.6), c("atm.md", 0.6)), 1, BEHAVIOUR, ("fees.md",), None),
        # right at the threshold counts as relevant
        ((c("fees.md", 0.4),), (c("fees.md", 0.4),), 1, BEHAVIOUR, ("fees.md",), None),
    ],
)  # fmt: skip
def test_classify_routes_by_the_answering_chunk_and_where_it_ranks(given, deep, k, route, docs, rank) -> None:
    routed = classify(trace(checks={"format": False}), ev(given, deep, k), P)
    assert (routed.route, routed.docs, routed.rank) == (route, docs, rank), routed.reason
    assert "failed format" in routed.reason


def test_within_the_context_depth_now_is_stale_only_when_the_index_changed_since_the_answer() -> None:
    """The same index version ranks the answering chunk within the context now (a tuned retriever, another k): the
    documents did not change, so a re-index is not what fixed it."""
    given, now = (c("atm.md", 0.5),), (c("fees.md", 0.7), c("atm.md", 0.5))
    assert classify(trace(feedback=False), Evidence(given, now, 1, changed=True), P).route == STALE
    same = classify(trace(feedback=False), Evidence(given, now, 1, changed=False), P)
    assert (same.route, same.docs, same.rank) == (RETRIEVAL, ("fees.md",), 1)
    assert "rank 1 now, on the index version that answered" in same.reason


def test_an_answer_that_read_a_text_changed_since_is_stale_even_with_its_document_in_the_context() -> None:
    """The document was edited after the answer (its figures changed): the context chunk the answer read is no
    longer in the published version, and the best chunk now is the same document's old place. bench/routing.py
    found 9 of 15 such answers routed to behaviour (a fine-tune for a fact); they are the re-index's."""
    given = (c("fees.md", 0.66, "ATM: 2 EUR"),)
    now = (c("fees.md", 0.64, "ATM: 3 EUR"), c("limits.md", 0.5))
    routed = classify(trace(checks={"format": False}), Evidence(given, now, 1, changed=True, outdated=("fees.md",)), P)
    assert (routed.route, routed.docs) == (STALE, ("fees.md",))
    assert "no longer in the published version" in routed.reason
    # the same document, its text still there: the right context was given, the output is to blame
    kept = classify(trace(checks={"format": False}), Evidence(given, now, 1, changed=True), P)
    assert kept.route == BEHAVIOUR
    # another document of the context changed, not the one that answers: still behaviour
    other = Evidence(given, now, 1, changed=True, outdated=("limits.md",))
    assert classify(trace(checks={"format": False}), other, P).route == BEHAVIOUR


def test_a_correction_names_the_answering_chunk_over_the_question_alone() -> None:
    """The question alone prefers the context (0.6 > 0.55); the user's correction is in the deeper chunk."""
    given, deeper = c("atm.md", 0.6, overlap=0.2), c("fees.md", 0.55, overlap=0.9)
    routed = classify(trace(correction="2 EUR after five"), ev((given,), (given, deeper)), P)
    assert (routed.route, routed.docs, routed.rank) == (RETRIEVAL, ("fees.md",), 2)
    assert "0.90 of the correction's terms" in routed.reason and "rank 2 below the context's 1" in routed.reason
    agrees = classify(trace(correction="2 EUR"), ev((replace(given, overlap=0.9),), (given, deeper)), P)
    assert agrees.route == BEHAVIOUR  # the context holds the correction as well as anything deeper: behaviour


def test_classify_names_the_document_how_it_changed_and_its_rank() -> None:
    added = classify(trace(feedback=False), ev((c("faq.md", 0.1),), (c("weekend.md", 0.8),)), P)
    assert "weekend.md (now retrieved, rank 1 within the context's 1" in added.reason
    assert "negative feedback" in added.reason
    edited = classify(trace(feedback=-1.0), ev((c("s.md", 0.45, "a"),), (c("s.md", 0.6, "b"),)), P)
    assert "s.md (updated" in edited.reason
    deeper = classify(trace(feedback=False), ev((c("a.md", 0.5),), (c("a.md", 0.5), c("b.md", 0.6))), P)
    assert "the context (a.md) lacked b.md, found at rank 2 below the context's 1 (relevance 0.60)" in deeper.reason


def test_a_correction_with_no_relevant_context_is_missing_not_a_training_case() -> None:
    nothing = ev((c("fees.md", 0.1),), (c("fees.md", 0.1),))
    routed = classify(trace(correction="We do not sell crypto."), nothing, P)
    assert routed.route == MISSING and "a correction" in routed.reason
    assert "nothing relevant at any depth" in routed.reason


def test_a_correction_no_chunk_holds_is_missing_even_with_relevant_neighbours() -> None:
    """A deleted document leaves neighbours about the same topic (relevance 0.6): the question alone cannot tell,
    the user's answer can. Held by some chunk (0.6, the threshold, or more) it routes as before."""
    neighbours = ev((c("fees.md", 0.6, overlap=0.3),), (c("fees.md", 0.6, overlap=0.3), c("atm.md", 0.55, overlap=0.5)))
    routed = classify(trace(correction="Funeral invoices up to EUR 10,000 are paid directly."), neighbours, P)
    assert (routed.route, routed.docs) == (MISSING, ())
    assert "no chunk at any depth holds more than 0.50 of its terms (< 0.6" in routed.reason
    held = ev((c("fees.md", 0.6, overlap=0.6),), (c("fees.md", 0.6, overlap=0.6),))
    assert classify(trace(correction="x"), held, P).route == BEHAVIOUR
    assert classify(trace(feedback=False), ev((c("fees.md", 0.6),), (c("fees.md", 0.6),)), P).route == BEHAVIOUR
    stricter = classify(trace(correction="x"), held, P.model_copy(update={"correction_min": 0.7}))
    assert stricter.route == MISSING  # the threshold is the params' (triage.correction_min), not a constant
    # weighed (idf), the weighted share decides, not the plain one: common words held do not make an answer held
    weighed = ev((Chunk("fees.md", "t", 0.6, 0.9, 0.4),), (Chunk("fees.md", "t", 0.6, 0.9, 0.4),))
    assert classify(trace(correction="x"), weighed, P).route == MISSING


def test_without_a_published_or_with_an_empty_index_every_failure_is_an_outage() -> None:
    failing = [trace("tr-a", feedback=False), trace("tr-b", checks={"format": False})]
    found = {t.trace_id: ev((c("fees.md", 0.1),), ()) for t in failing}  # would read as missing
    for chunks, why in ((None, "no index version is published"), (0, "the published index version is empty")):
        routed = route_all(failing, found, chunks, P)
        assert {r.route for r in routed.values()} == {"outage"} and why in routed["tr-a"].reason
    assert route_all(failing, found, 12, P)["tr-a"].route == MISSING


def test_failing_means_a_failed_check_negative_feedback_or_a_correction() -> None:
    assert not trace().failing and not trace(feedback=True).failing and not trace(feedback=0.5).failing
    assert trace(checks={"format": False}).failing and trace(feedback=False).failing
    assert trace(feedback=-0.2).failing and trace(correction="x").failing
    assert not trace(feedback=0.0).negative_feedback


# -- gap groups and their topics -------------------------------------------------------------------------------
def _unit(*xs: float) -> np.ndarray:
    v = np.array(xs, dtype=np.float32)
    return v / np.linalg.norm(v)


def test_group_questions_joins_similar_ones_in_input_order() -> None:
    vectors = np.stack([_unit(1, 0, 0), _unit(0, 1, 0), _unit(0.95, 0.1, 0), _unit(0, 0.9, 0.2), _unit(0, 0, 1)])
    assert group_questions(vectors, 0.8) == [[0, 2], [1, 3], [4]]
    assert group_questions(vectors, 0.999) == [[0], [1], [2], [3], [4]]  # nothing is that similar
    assert group_questions(vectors, -1.0) == [[0, 1, 2, 3, 4]]
    assert group_questions(np.zeros((0, 3)), 0.5) == []


def test_topic_terms_prefer_words_the_group_shares_and_the_corpus_lacks() -> None:
    df, n = document_frequency(["ATM withdrawals cost 2 EUR", "Buy and sell shares in the app", "Card fees apply"])
    questions = ["Can I buy bitcoin in the app?", "How do I buy crypto like bitcoin?", "Is bitcoin trading possible?"]
    assert topic_terms(questions, df, n, 2) == ["bitcoin", "buy"]  # 'buy' is in the corpus, 'bitcoin' is not
    assert topic_terms(questions, df, n, 1) == ["bitcoin"]
    assert "the" not in topic_terms(questions, df, n, 10) and "app" in topic_terms(questions, df, n, 10)


def test_gap_report_groups_names_and_keeps_suggested_answers_largest_first() -> None:
    qs = ["can i buy bitcoin", "bitcoin wallet support", "do you offer mortgages"]
    traces = [trace(f"tr-{i}", question=q, correction="no, we don't" if i == 2 else None) for i, q in enumerate(qs)]
    vectors = np.stack([_unit(1, 0.1), _unit(1, 0.0), _unit(0, 1)])
    df, n = document_frequency(["cards and fees", "transfers and limits"])
    report = gap_report(traces, vectors, df, n, TriageParams(group_similarity=0.9, topic_terms=1))
    assert [(g["topic"], g["count"], g["trace_ids"]) for g in report] == [
        ("bitcoin", 2, ["tr-0", "tr-1"]), ("mortgages", 1, ["tr-2"])]  # fmt: skip
    assert report[1]["suggested_answers"] == ["no, we don't"] and report[0]["suggested_answers"] == []


# -- the live regression statistic -----------------------------------------------------------------------------
@pytest.mark.parametrize(("k", "n", "p0"), [(0, 10, 0.3), (3, 10, 0.3), (10, 10, 0.3), (7, 40, 0.05), (1, 1, 0.5)])
def test_binomial_greater_is_the_exact_upper_tail(k: int, n: int, p0: float) -> None:
    exact = sum(math.comb(n, i) * p0**i * (1 - p0) ** (n - i) for i in range(k, n + 1))
    assert binomial_greater(k, n, p0) == pytest.approx(exact, rel=1e-9, abs=1e-15)


def test_binomial_greater_edges_and_errors() -> None:
    assert binomial_greater(0, 0, 0.5) == 1.0 and binomial_greater(1, 5, 0.0) == 0.0
    assert binomial_greater(5, 5, 1.0) == 1.0
    assert 0 < binomial_greater(2000, 5000, 0.35) < 1e-10  # large n stays finite
    with pytest.raises(ValueError, match="0 <= k <= n"):
        binomial_greater(6, 5, 0.5)
    with pytest.raises(ValueError, match="p0 must be a rate"):
        binomial_greater(1, 5, 1.5)


def _traffic(n: int, failing: int, route: str, check: str = "format") -> tuple[list[LiveTrace], dict[str, str]]:
    traces = [trace(f"tr-{i}", checks={check: i >= failing}) for i in range(n)]
    return traces, {t.trace_id: route for t in traces[:failing]}


def test_a_burst_of_failures_with_the_wrong_context_never_triggers_a_fine_tune() -> None:
    for route in (RETRIEVAL, STALE, MISSING, "outage"):
        traces, routes = _traffic(200, 150, route)
        tests = live_regression(traces, routes, {"format": 0.05}, REG)
        assert [(s.n, s.failures, s.significant) for s in tests] == [(50, 0, False)]  # left out, not counted


def test_behaviour_failures_significantly_above_the_champions_rate_trigger() -> None:
    traces, routes = _traffic(60, 20, "behaviour")
    [s] = live_regression(traces, routes, {"format": 0.05}, REG)
    assert (s.n, s.failures, s.significant) == (60, 20, True) and s.p_value < 1e-6
    assert "one-sided binomial" in s.reason and "excess 0.28" in s.reason


def test_below_the_minimum_count_nothing_triggers_however_bad() -> None:
    traces, routes = _traffic(19, 19, "behaviour")
    [s] = live_regression(traces, routes, {"format": 0.05}, REG)
    assert not s.significant and s.p_value < 1e-20 and "fewer than min_cases 20" in s.reason


@pytest.mark.parametrize(
    ("n", "failing", "p0", "significant", "why"),
    [
        (60, 3, 0.05, False, "not significant"),  # 3/60 at a 5% champion rate: no surprise
        (60, 6, 0.05, False, "not significant"),  # 10%: p about 0.08 on 60
        (60, 12, 0.05, True, "excess 0.15"),
        (60, 12, 0.18, False, "not significant"),  # the champion fails as often on the gate set
        (2000, 850, 0.40, False, "min_effect"),  # significant on 2000 but only +0.025: too small to matter
    ],
)
def test_live_regression_needs_count_significance_and_effect(n, failing, p0, significant, why) -> None:
    traces, routes = _traffic(n, failing, "behaviour")
    [s] = live_regression(traces, routes, {"format": p0}, REG)
    assert s.significant is significant and why in s.reason, s.reason


def test_live_regression_counts_behaviour_failures_only_on_traces_whose_context_was_right() -> None:
    """20 behaviour failures in 60 answers fire; the same 20 among 60 + 40 retrieval misses neither fire nor dilute:
    the misses are left out of the count entirely, not counted as passes."""
    traces, routes = _traffic(60, 20, "behaviour")
    misses = [trace(f"miss-{i}", checks={"format": False}) for i in range(40)]
    [s] = live_regression(traces + misses, {**routes, **{t.trace_id: RETRIEVAL for t in misses}}, {"format": 0.05},
                          REG)  # fmt: skip
    assert (s.n, s.failures, s.significant) == (60, 20, True)


def _routed(n_retrieval: int, n_behaviour: int, n_outage: int = 0) -> tuple[list[LiveTrace], dict[str, Routed]]:
    kinds = [RETRIEVAL] * n_retrieval + [BEHAVIOUR] * n_behaviour + ["outage"] * n_outage
    traces = [trace(f"tr-{i}", feedback=False) for i in range(len(kinds))]
    docs = {RETRIEVAL: ("fees.md",), BEHAVIOUR: ("atm.md",), "outage": ()}
    return traces, {t.trace_id: Routed(t.trace_id, k, "why", docs[k], 3 if k == RETRIEVAL else None)
                    for t, k in zip(traces, kinds, strict=True)}  # fmt: skip


@pytest.mark.parametrize(
    ("retrieval", "behaviour", "outage", "significant", "why"),
    [
        (30, 70, 0, True, "tune the retriever"),  # 0.30 of live answers against 0.05 tolerated
        (19, 0, 0, False, "fewer than min_cases 20"),  # every answer a miss, but too few to act on
        (20, 380, 0, False, "not significant"),  # 0.05: what a retriever may miss
        (20, 180, 300, True, "tune the retriever"),  # outages are no judgement: 20 of 200, not of 500
    ],
)  # fmt: skip
def test_retrieval_misses_need_count_significance_and_effect(retrieval, behaviour, outage, significant, why) -> None:
    traces, routed = _routed(retrieval, behaviour, outage)
    found = retrieval_misses(traces, routed, P, REG)
    assert (found.misses, found.n, found.significant) == (retrieval, retrieval + behaviour, significant)
    assert why in found.reason, found.reason
    assert found.documents == ({"fees.md": retrieval} if retrieval else {})


def test_a_slice_without_a_champion_rate_is_never_tested() -> None:
    traces, routes = _traffic(60, 60, "behaviour", check="citation")
    [s] = live_regression(traces, routes, {"format": 0.0}, REG)
    assert not s.significant and "no champion rate" in s.reason


def test_champion_fail_rates_come_from_behaviour_only_results() -> None:
    rates = champion_fail_rates({"format": {"a": True, "b": False, "c": True, "d": True}, "intent": {}})
    assert rates == {"format": 0.25} and champion_fail_rates(None) == {}


# -- the traffic summary, candidates, --since ------------------------------------------------------------------
def test_summarise_traffic_counts_slices_routes_and_feedback() -> None:
    traces = [trace("tr-a", checks={"format": False, "citation": False}, feedback=False),
              trace("tr-b", checks={"format": True, "citation": True}, feedback=True),
              trace("tr-c", checks={"format": True, "citation": False})]  # fmt: skip
    s = summarise_traffic(traces, {"tr-a": "behaviour", "tr-c": "retrieval"})
    assert (s["traces"], s["failing"], s["untriaged_failing"]) == (3, 2, 0)
    assert s["routes"] == {"behaviour": 1, "retrieval": 1, "stale": 0, "missing": 0}
    assert s["feedback"] == {"given": 2, "negative": 1, "corrections": 0, "rate": 0.6667}
    routes = {"behaviour": 1, "retrieval": 1, "stale": 0, "missing": 0}
    assert s["slices"]["citation"] == {"n": 3, "failed": 2, "fail_rate": 0.6667, "routes": routes}
    assert summarise_traffic([])["feedback"]["rate"] is None


def test_traces_tagged_before_the_routes_were_renamed_count_under_the_new_names() -> None:
    from components.tracking.production import LEGACY_ROUTES, _route_tag

    assert LEGACY_ROUTES == {"knowledge": STALE, "gap": MISSING}
    assert [_route_tag(v) for v in ("knowledge", "gap", "behaviour", "retrieval", None)] == [
        STALE, MISSING, BEHAVIOUR, RETRIEVAL, None]  # fmt: skip


# -- the evidence's pure parts ---------------------------------------------------------------------------------
def test_sentences_split_prose_lists_and_tables_and_drop_fragments() -> None:
    from components.behaviour.triage_evidence import sentences

    text = "## Fees\n\nATM withdrawals cost 2 EUR. The first five are free! Ok.\n- **Card replacement:** 5 EUR\n| x |"
    parts = ["ATM withdrawals cost 2 EUR.", "The first five are free!", "Card replacement:** 5 EUR"]
    assert sentences(text) == parts  # 'Ok.' too short to judge alone, the table row too; markup at the ends stripped
    assert sentences("Short.") == ["Short."]  # nothing long enough: the whole text


def test_overlap_is_the_share_of_the_corrections_terms_a_chunk_holds() -> None:
    from components.behaviour.triage_evidence import overlap, terms

    said = terms("No: EUR 2.00 each after 2 free withdrawals", "english")
    assert said == {"no", "eur", "2", "00", "each", "after", "free", "withdraw"}  # stemmed, numbers kept
    assert overlap(said, "No. After 2 free withdrawals, each costs EUR 2.00.", "english") == 1.0
    assert overlap(said, "Card payments abroad are free.", "english") == 1 / 8
    assert overlap(set(), "anything", "english") is None


def test_idf_weighting_makes_the_words_every_chunk_has_count_little() -> None:
    from components.behaviour.triage_evidence import inverse_frequency, overlap, terms

    corpus = ["Yes, you can pay fees here.", "Yes, you can change your address.", "Funeral invoices: we pay them."]
    idf = inverse_frequency(corpus, "english")
    assert idf("yes") < idf("funer") < idf("never-seen")  # in 2 of 3 chunks, in 1, in none
    said = terms("Yes, you can pay funeral invoices", "english")
    plain, weighted = overlap(said, corpus[0], "english"), overlap(said, corpus[0], "english", idf)
    assert plain is not None and weighted is not None and weighted < plain  # 'yes you can pay' are common words
    # unweighted, the chunk of common words holds more of the answer (4 of 6 terms against 3); weighted, the one
    # that holds its rare words does
    assert overlap(said, corpus[2], "english") < plain
    assert overlap(said, corpus[2], "english", idf) > weighted  # type: ignore[operator]


def test_a_candidate_takes_its_target_from_the_correction_and_never_invents_one() -> None:
    labels = {"fees", "limits"}
    contract = load_contract(REPO / "data/behaviour/contract.yaml", labels)
    broken = trace(output="the fee is 2 EUR", checks={"format": False}, intent=None)  # no label could be parsed
    cand = candidate_from(broken, ("fees.md",), labels, contract)
    assert (cand["answer"], cand["intent"], cand["gold_docs"]) == (None, None, ["fees.md"])
    fixed = candidate_from(trace(output="fee 2", correction="intent: limits | answer: 500 EUR a day | sources: "
                                 "[limits.md]"), ("fees.md",), labels, contract)  # fmt: skip
    assert (fixed["intent"], fixed["intent_source"], fixed["answer"], fixed["gold_docs"]) == (
        "limits", "correction", "500 EUR a day", ["limits.md"])  # fmt: skip
    plain = candidate_from(trace(correction="2 EUR after five withdrawals"), ("fees.md",), labels, contract)
    assert (plain["intent"], plain["intent_source"]) == ("fees", "model")  # the model's label, marked as such
    assert plain["answer"] == "2 EUR after five withdrawals"
    # the label is the one the answer pipeline recorded in the trace: the output is not parsed again
    recorded = candidate_from(trace(output=LINE, intent="limits"), ("fees.md",), labels, contract)
    assert (recorded["intent"], recorded["intent_source"]) == ("limits", "model")
    unknown = candidate_from(trace(intent="mortgages"), ("fees.md",), labels, contract)
    assert (unknown["intent"], unknown["intent_source"]) == (None, None)  # a label the contract does not know


def test_parse_since_takes_iso_times_and_durations() -> None:
    now = 1_780_000_000_000
    assert parse_since("2h", now) == now - 7_200_000 and parse_since("90m", now) == now - 5_400_000
    assert parse_since("1.5d", now) == now - 129_600_000
    assert parse_since("2026-12-01T08:00:00Z", now) == parse_since("2026-12-01T08:00", now) == 1_796_112_000_000
    with pytest.raises(ValueError, match="--since: expected an ISO time"):
        parse_since("yesterday", now)


@pytest.mark.parametrize(
    ("text", "needle"),
    [("triage:\n  relevance_min: 2\n", "triage.relevance_min"), ("triage:\n  topic_terms: 0\n", "triage.topic_terms"),
     ("triage:\n  typo: 1\n", "triage.typo"), ("service:\n  triage_cron: hourly\n", "service.triage_cron")],
)  # fmt: skip
def test_bad_triage_params_name_the_field_and_the_file(tmp_path, text: str, needle: str) -> None:
    from components.config import ParamsError, load_params

    f = tmp_path / "params.yaml"
    f.write_text(text)
    with pytest.raises(ParamsError, match=needle) as info:
        load_params(f)
    assert str(f) in str(info.value)


def test_ragloop_triage_refuses_a_bad_since_before_any_flow_runs(tmp_path) -> None:
    from typer.testing import CliRunner

    from flows.cli import app

    (tmp_path / "params.yaml").write_text("{}\n")
    out = CliRunner().invoke(app, ["triage", "--since", "last tuesday", "--params", str(tmp_path / "params.yaml")])
    assert out.exit_code == 2 and "--since: expected an ISO time" in out.output
    assert not (tmp_path / ".mlflow").exists()  # nothing was read or recorded


def test_the_triage_report_lists_every_route_with_its_action_and_the_metrics_read_back() -> None:
    from components.tracking import metric_names as mn
    from components.tracking.triage_runs import SHOWN, triage_markdown

    miss = {"trace_id": "tr-1", "question": "why no contactless?", "route": "retrieval", "docs": ["activation.md"],
            "rank": 2, "reason": "the context (contactless.md) lacked activation.md, found at rank 2"}  # fmt: skip
    routed = {r: [] for r in SHOWN} | {RETRIEVAL: [miss]}
    report = {"traffic": summarise_traffic([]), "routed": routed, "since_ms": 0, "late_traces": 0, "gaps": [],
              "reindex": {"ran": False, "why": "not needed"}, "candidates": {"added": [], "file": "c.jsonl"},
              "regression": {"fired": False, "slices": []},
              "retrieval_regression": {"fired": True, "reason": "3 retrieval misses in 4 live answers"}}  # fmt: skip
    md = triage_markdown(report)
    assert SHOWN == ("behaviour", "retrieval", "stale", "missing", "outage")
    assert "| retrieval | 1 | tune the retriever: the answering document ranked below the context" in md
    assert "| stale | 0 | re-index, now retrieved |" in md and "| missing | 0 | write the missing document" in md
    assert "| behaviour | 0 | fine-tune: candidate training cases in `c.jsonl` |" in md
    assert "## Retrieval\n\n- 'why no contactless?': the context (contactless.md) lacked activation.md" in md
    assert "## Live retrieval misses: event emitted\n\n- 3 retrieval misses in 4 live answers" in md
    logged = {mn.routed(r): float(n) for r, n in {"retrieval": 3, "behaviour": 1}.items()}
    assert mn.routed_counts(logged, SHOWN) == {"behaviour": 1, "retrieval": 3, "stale": 0, "missing": 0, "outage": 0}
