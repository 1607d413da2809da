"""Route each failing live answer to its fix, with the evidence that chose it: one of the four routes of
components/routes.py, or `outage`. Pure logic: retrieval and embedding happen in triage_evidence.py,
which hands in the context the answer was given and a deeper search of the current index (after a re-index when
the documents changed), every chunk scored for how well it answers the question.

The judge. Each chunk's `relevance` is the mean of two cosines under the index's embedder: question x whole chunk
and question x the chunk's best sentence (a chunk of 1,000 characters dilutes the one sentence that answers).
With a user's correction, the chunk holding most of the correction's terms is the answering one (relevance breaks
ties): the person said what the answer is, so the words to look for are known. The answering chunk is the
judge's best among the context and the deep search (`triage.search_depth` chunks, hybrid-ranked as the
assistant ranks them). Then, in this order:

- **outage** (not a route): nothing was retrieved then and nothing now: no judgement is made, the trace is left
  untagged for a later triage.
- **missing**: nothing relevant at any depth (best relevance < `triage.relevance_min`), or, when the user gave a
  correction, no chunk at any depth holds `triage.correction_min` of its terms (idf-weighted: the words every chunk
  has weigh little): no document answers it.
  Similar questions are grouped and named for a person to write up (the gap report); a correction is kept as the
  suggested content, never trained into the weights.
- **stale**: the answering chunk was not in the answer's context but is within the context's depth now, and the
  published index version is not the one that answered: the documents changed since (a new or edited document,
  re-indexed by triage), so the re-index is the fix and it has been done. Also stale: the answering chunk's
  document was in the context but the text the answer read is no longer in the published version (the document
  was edited or removed since): the answer read an outdated text (bench/routing.py found edited documents routed
  to behaviour without this rule).
- **behaviour**: the answering chunk's document was in the context: the right context was given and the answer
  broke the contract. A candidate training case.
- **retrieval**: the answering chunk is indexed and current but ranks below the context's cut-off (or ranks
  within it now on the very index version that answered: the retriever, not the documents, changed): the
  retriever is the fix (tune it), not the weights; reported with the document found deeper and its rank.

Measured on the sample deployment's gate set, where the truth is known (bench/triage_rules.py, bench/README.md
"Routing live failures"; AMD EPYC family 25 model 17): from the question alone, behaviour precision 0.79 recall
0.92, retrieval 0.37 / 0.57, missing 0.95 / 0.25 (in scope: retrieval 0.69 / 0.57); with the user's correction,
behaviour 0.97 / 0.98 and retrieval 0.92 / 0.88. Asked again at the same depth (the rule before), every retrieval
miss went to behaviour or missing.

Counting for the live regression test: only behaviour-routed failures count, on the traces whose context was right
(not routed stale, missing, retrieval or outage), against the champion's own failure rate on that slice (the
behaviour-only results of its gate evaluation): a burst of knowledge failures can never start a fine-tune.
"""

from __future__ import annotations

import math
import re
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from components.behaviour.stats import binomial_greater
from components.config import RegressionParams, TriageParams
from components.routes import BEHAVIOUR, MISSING, RETRIEVAL, ROUTES, STALE
from components.tracking.production import LiveTrace

OUTAGE = "outage"
ROUTES_ORDER = (*ROUTES, OUTAGE)  # the four routes, then outage (no judgement made), as reports list them
LEFT_OUT = (RETRIEVAL, STALE, MISSING, OUTAGE)  # failures the live regression test never counts: the context was wrong
_WORD = re.compile(r"[^\W\d_]{3,}")  # words of 3+ letters: digits and short function words never name a topic
_STOP = """the and for are but not you your yours can could would should will with what when where which who whom why
how does did doing done have has had having was were been being this that these those there here from into onto about
after before over under again any all some each more most other such only own same than too very just also may might
must shall our ours they them their its hello hey thanks thank please quick question want need know get got like make
way use using tell much many"""
STOPWORDS = frozenset(_STOP.split())


@dataclass(frozen=True)
class Chunk:
    doc: str
    text: str
    relevance: float  # to the question: mean of cosine(question, chunk) and cosine(question, its best sentence)
    overlap: float | None = None  # share of the user's correction's terms the chunk holds (None: no correction)
    held: float | None = None  # the same share with each term weighted by its idf (None: not weighed): the
    # missing test's measure. The judge keeps the plain share: on the gate set, weighting sent 3 more right-context
    # answers to retrieval (bench/README.md, "Routing live failures")

    def judged(self) -> tuple[float, float]:
        """The judge's key: the correction's terms first when the user gave one, then relevance."""
        return (self.overlap or 0.0, self.relevance)

    def basis(self) -> str:
        told = f"{self.overlap:.2f} of the correction's terms, " if self.overlap is not None else ""
        return f"{told}relevance {self.relevance:.2f}"


@dataclass(frozen=True)
class Evidence:
    """The context the answer was given (`given`), the current index's deep search for the same question
    (`deep`, best first: `triage.search_depth` chunks), the context's depth `k` (chunks the answer was given) and
    whether the index changed since the answer."""

    given: tuple[Chunk, ...]
    deep: tuple[Chunk, ...]
    k: int
    changed: bool = True  # the published index version is not the one that answered (or that one is unknown)
    outdated: tuple[str, ...] = ()  # documents of the context whose given text the published version no longer holds

    def best_relevance(self) -> float:
        return max((c.relevance for c in (*self.given, *self.deep)), default=-1.0)

    def best_overlap(self) -> float | None:
        """The most of the user's correction any chunk holds, idf-weighted where weighed (None: no correction)."""
        told = [c.overlap if c.held is None else c.held for c in (*self.given, *self.deep) if c.overlap is not None]
        return max(told) if told else None

    def answering(self) -> tuple[Chunk, int]:
        """The judge's answering chunk and its rank in the deep search (0: it is one the answer was given; ties go
        to the context, so a failure is never sent away from the weights on a coin toss). Needs some chunk."""
        ranked = [(c, 0) for c in self.given] + [(c, r) for r, c in enumerate(self.deep, start=1)]
        return max(ranked, key=lambda cr: cr[0].judged())


@dataclass(frozen=True)
class Routed:
    trace_id: str
    route: str  # behaviour | retrieval | stale | missing | outage
    reason: str  # the evidence that chose it
    docs: tuple[str, ...]  # the answering document (stale: now retrieved; retrieval: found deeper; behaviour: given)
    rank: int | None = None  # retrieval and stale: the answering chunk's rank in the search of the current index


def classify(trace: LiveTrace, ev: Evidence, params: TriageParams) -> Routed:
    """The route of one failing trace (see the module docstring for the rules, in this order)."""
    thr, why, tid = params.relevance_min, _symptom(trace), trace.trace_id
    if not ev.given and not ev.deep:
        return Routed(tid, OUTAGE, f"{why}; nothing retrieved then or now: an empty or unreachable index, not a "
                      "missing document", ())  # fmt: skip
    best = ev.best_relevance()
    if best < thr:
        return Routed(tid, MISSING, f"{why}; nothing relevant at any depth (best relevance {best:.2f} < {thr} in "
                      f"the context and the {len(ev.deep)} best chunks now)", ())  # fmt: skip
    told, least = ev.best_overlap(), params.correction_min
    if told is not None and told < least:
        return Routed(tid, MISSING, f"{why}; the user's answer is not in the knowledge base: no chunk at any depth "
                      f"holds more than {told:.2f} of its terms (< {least}, idf-weighted, in the context and the "
                      f"{len(ev.deep)} best chunks now)", ())  # fmt: skip
    chunk, rank = ev.answering()
    context = tuple(dict.fromkeys(c.doc for c in ev.given))
    if ev.changed and rank and (chunk.doc, chunk.text) not in {(c.doc, c.text) for c in ev.given} and rank <= ev.k:
        how = "updated" if chunk.doc in context else "now retrieved"
        return Routed(tid, STALE, f"{why}; the same question now retrieves what the answer lacked: {chunk.doc} "
                      f"({how}, rank {rank} within the context's {ev.k}; {chunk.basis()})", (chunk.doc,),
                      rank)  # fmt: skip
    if chunk.doc in ev.outdated:  # the answer read a text of its document that has changed (or gone) since
        return Routed(tid, STALE, f"{why}; the context's text of {chunk.doc} is no longer in the published "
                      "version: the answer read a text that changed since (re-indexed now)", (chunk.doc,),
                      rank or None)  # fmt: skip
    if chunk.doc in context:
        return Routed(tid, BEHAVIOUR, f"{why} with the answering document in its context ({chunk.doc}; "
                      f"{chunk.basis()})", (chunk.doc,))  # fmt: skip
    where = f"rank {rank} below the context's {ev.k}" if rank > ev.k else (
        f"rank {rank} now, on the index version that answered: the retriever ranked it lower then")  # fmt: skip
    return Routed(tid, RETRIEVAL, f"{why}; the context ({', '.join(context) or 'empty'}) lacked {chunk.doc}, "
                  f"found at {where} ({chunk.basis()})", (chunk.doc,), rank)  # fmt: skip


def route_all(failing: Sequence[LiveTrace], evidence: Mapping[str, Evidence], indexed_chunks: int | None,
              params: TriageParams) -> dict[str, Routed]:  # fmt: skip
    """Every failing trace's route. With nothing published now (`indexed_chunks` None) or an empty published
    version (0), nothing can be judged: every failure is an outage, left for a later triage."""
    if not indexed_chunks:
        why = "no index version is published" if indexed_chunks is None else "the published index version is empty"
        return {t.trace_id: Routed(t.trace_id, OUTAGE, f"{_symptom(t)}; {why}: nothing to retrieve against, left "
                                   "for a later triage", ()) for t in failing}  # fmt: skip
    return {t.trace_id: classify(t, evidence[t.trace_id], params) for t in failing}


def _symptom(trace: LiveTrace) -> str:
    parts = [f"failed {', '.join(trace.failed_checks)}"] if trace.failed_checks else []
    if trace.negative_feedback:
        parts.append("negative feedback" + (f" ({trace.comment})" if trace.comment else ""))
    if trace.correction is not None:
        parts.append("a correction")
    return " and ".join(parts) or "failing"


# -- the gap report --------------------------------------------------------------------------------------------
def group_questions(vectors: np.ndarray, threshold: float) -> list[list[int]]:
    """Greedy leader clustering in input order: each question joins the group whose centroid it is most similar to
    (cosine >= threshold), else starts one. Deterministic; O(n x groups). Vectors are L2-normalised."""
    groups: list[list[int]] = []
    sums: list[np.ndarray] = []
    for i, v in enumerate(vectors):
        best, best_sim = -1, threshold
        for g, s in enumerate(sums):
            sim = float(v @ (s / (np.linalg.norm(s) or 1.0)))
            if sim >= best_sim:
                best, best_sim = g, sim
        if best < 0:
            groups.append([i])
            sums.append(np.array(v, dtype=np.float64))
        else:
            groups[best].append(i)
            sums[best] = sums[best] + v
    return groups


def words(text: str) -> list[str]:
    return [w for w in _WORD.findall(text.lower()) if w not in STOPWORDS]


def document_frequency(texts: Iterable[str]) -> tuple[Counter, int]:
    """(term -> number of texts containing it, number of texts): the corpus a topic must be distinct from."""
    df: Counter = Counter()
    n = 0
    for text in texts:
        df.update(set(words(text)))
        n += 1
    return df, n


def topic_terms(questions: Sequence[str], df: Mapping[str, int], n_texts: int, n: int) -> list[str]:
    """The n terms that best name what a group of questions asks about: in many of its questions (count) and rare
    in the corpus (idf, so the missing subject outranks the bank's everyday words); ties alphabetical."""
    counts: Counter = Counter()
    for q in questions:
        counts.update(set(words(q)))
    scored = {t: c * math.log((n_texts + 1) / (df.get(t, 0) + 1)) + c * 1e-6 for t, c in counts.items()}
    return sorted(scored, key=lambda t: (-scored[t], t))[:n]


def gap_report(traces: Sequence[LiveTrace], vectors: np.ndarray, df: Mapping[str, int], n_texts: int,
               params: TriageParams) -> list[dict]:  # fmt: skip
    """Missing-routed traces grouped by similarity, each group named by its topic terms, largest group first."""
    groups = group_questions(vectors, params.group_similarity)
    report = []
    for members in groups:
        group = [traces[i] for i in members]
        terms = topic_terms([t.question for t in group], df, n_texts, params.topic_terms)
        report.append({
            "topic": " / ".join(terms), "terms": terms, "count": len(group),
            "questions": [t.question for t in group], "trace_ids": [t.trace_id for t in group],
            "suggested_answers": [t.correction for t in group if t.correction],
        })  # fmt: skip
    return sorted(report, key=lambda g: (-g["count"], g["topic"]))


# -- the live regression test ----------------------------------------------------------------------------------
@dataclass(frozen=True)
class LiveSliceTest:
    slice: str
    n: int  # live traces checked on this slice, retrieval / stale / missing / outage failures left out
    failures: int  # behaviour-routed failures of this check among them
    live_rate: float
    champion_rate: float | None  # the champion's failure rate on this slice at its gate evaluation
    p_value: float
    significant: bool
    reason: str


def live_regression(traces: Sequence[LiveTrace], routes: Mapping[str, str], champion_fail_rates: Mapping[str, float],
                    params: RegressionParams) -> list[LiveSliceTest]:  # fmt: skip
    """Per slice, a one-sided exact binomial test of the live behaviour failures against the champion's own failure
    rate: significant only with at least `min_cases` live traces, p < alpha and an excess of at least
    `min_effect` (the gate's three conditions)."""
    n: Counter = Counter()
    failed: Counter = Counter()
    for t in traces:
        route = routes.get(t.trace_id)
        if route in LEFT_OUT:
            continue
        for name, ok in t.checks.items():
            n[name] += 1
            failed[name] += int(not ok and route == BEHAVIOUR)
    return [_slice_test(name, n[name], failed[name], champion_fail_rates.get(name), params) for name in sorted(n)]


def _slice_test(name: str, n: int, k: int, p0: float | None, params: RegressionParams) -> LiveSliceTest:
    rate = k / n if n else 0.0
    head = f"{name}: {k} behaviour failures in {n} live answers ({rate:.2f})"
    if p0 is None:
        return LiveSliceTest(name, n, k, rate, None, 1.0, False, f"{head}; no champion rate for this slice, not tested")
    p = binomial_greater(k, n, p0)
    head += f" vs the champion's {p0:.2f}, one-sided binomial p={p:.2g}"
    if n < params.min_cases:
        return LiveSliceTest(name, n, k, rate, p0, p, False, f"{head}; fewer than min_cases {params.min_cases}")
    if p >= params.alpha:
        return LiveSliceTest(name, n, k, rate, p0, p, False, f"{head} >= {params.alpha}, not significant")
    if rate - p0 < params.min_effect:
        return LiveSliceTest(name, n, k, rate, p0, p, False,
                             f"{head} but excess {rate - p0:.2f} < min_effect {params.min_effect}")  # fmt: skip
    return LiveSliceTest(name, n, k, rate, p0, p, True, f"{head} < {params.alpha}, excess {rate - p0:.2f}")


@dataclass(frozen=True)
class RetrievalMisses:
    n: int  # live answers triaged in the window (outages left out)
    misses: int  # routed retrieval: the answering document ranked below the context
    share: float
    expected: float  # triage.retrieval_miss_rate: the share a retriever may miss before it is tuned
    p_value: float
    significant: bool
    reason: str
    documents: dict[str, int]  # the documents found deeper -> how many misses they would have answered


def retrieval_misses(traces: Sequence[LiveTrace], routed: Mapping[str, Routed], params: TriageParams,
                     regression: RegressionParams) -> RetrievalMisses:  # fmt: skip
    """Are the live retrieval misses significant? A one-sided exact binomial test of the retrieval-routed share of
    the live answers against `triage.retrieval_miss_rate`, with the gate's `min_cases`, `alpha` and `min_effect`:
    then the retriever, not the weights, is what to tune (the `ragloop.retrieval.regression` event)."""
    judged = [t for t in traces if t.trace_id not in routed or routed[t.trace_id].route != OUTAGE]
    found = [routed[t.trace_id] for t in judged if t.trace_id in routed and routed[t.trace_id].route == RETRIEVAL]
    n, k, p0 = len(judged), len(found), params.retrieval_miss_rate
    docs = dict(Counter(d for r in found for d in r.docs).most_common())
    rate = k / n if n else 0.0
    p = binomial_greater(k, n, p0) if n else 1.0
    head = (f"{k} retrieval misses in {n} live answers ({rate:.2f}) vs the tolerated {p0:.2f}, one-sided binomial "
            f"p={p:.2g}")  # fmt: skip
    if k < regression.min_cases:
        return RetrievalMisses(n, k, rate, p0, p, False, f"{head}; fewer than min_cases {regression.min_cases}", docs)
    if p >= regression.alpha or rate - p0 < regression.min_effect:
        return RetrievalMisses(n, k, rate, p0, p, False, f"{head}; not significant (alpha {regression.alpha}, "
                               f"min_effect {regression.min_effect})", docs)  # fmt: skip
    return RetrievalMisses(n, k, rate, p0, p, True, f"{head} < {regression.alpha}: tune the retriever", docs)


def champion_fail_rates(behaviour_results: Mapping[str, Mapping[str, bool]] | None) -> dict[str, float]:
    """slice -> failure rate, from the champion's behaviour-only gate results ({slice: {case id: passed}})."""
    return {name: 1 - sum(map(bool, cases.values())) / len(cases)
            for name, cases in (behaviour_results or {}).items() if cases}  # fmt: skip
