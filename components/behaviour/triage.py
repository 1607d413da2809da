"""Route each failing live answer to its fix. Pure logic: retrieval and embedding happen in the triage flow, which
hands in what retrieval showed the answer then and what it returns now (after a re-index when the documents
changed), with each chunk's relevance to the question (cosine under the index's embedder).

- **knowledge**: retrieval now returns a relevant chunk the answer was not given (a new or edited document, or
  one that ranked too low then): the fix was re-indexing, and this shows it worked; the documents are reported.
- **gap**: nothing relevant then nor now: no document answers it. Similar questions are grouped and each group's
  topic is named, for a person to write up. A correction on such a question is kept as the suggested content,
  never trained into the weights (facts belong in the documents).
- **behaviour**: the answer had relevant context and still broke the contract, or the user corrected it: a
  candidate training case.
- **outage** (not a route): nothing was retrieved then and nothing now (an empty or unreachable index), so no
  judgement is made; the trace is left untagged for a later triage.

Counting for the live regression test: only behaviour-routed failures count, on the traces that were not
knowledge, gap or outage failures, against the champion's own failure rate on that slice (the behaviour-only
results of its gate evaluation): a burst of knowledge failures can never start a fine-tune.
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
from components.tracking.production import LiveTrace

OUTAGE = "outage"
ROUTES_ORDER = ("knowledge", "gap", "behaviour", OUTAGE)  # the routes, and outage (no judgement made)
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
    relevance: float  # cosine(question, chunk) under the index's embedder


@dataclass(frozen=True)
class Evidence:
    """What retrieval gave the answer (`before`) and what it returns for the same question now (`after`)."""

    before: tuple[Chunk, ...]
    after: tuple[Chunk, ...]

    def best(self, side: str) -> float:
        chunks = self.before if side == "before" else self.after
        return max((c.relevance for c in chunks), default=-1.0)

    def newly_relevant(self, threshold: float) -> tuple[Chunk, ...]:
        """Relevant chunks now that the answer was not given (a new document, or new text of an edited one)."""
        seen = {(c.doc, c.text) for c in self.before}
        return tuple(c for c in self.after if c.relevance >= threshold and (c.doc, c.text) not in seen)


@dataclass(frozen=True)
class Routed:
    trace_id: str
    route: str  # knowledge | gap | behaviour | outage
    reason: str
    docs: tuple[str, ...]  # knowledge: now retrieved; behaviour: the relevant context it had


def classify(trace: LiveTrace, ev: Evidence, params: TriageParams) -> Routed:
    """The route of one failing trace (see the module docstring for the rules, in this order)."""
    thr = params.relevance_min
    # new relevant text counts only when it beats what the answer had: an unrelated edit elsewhere in the corpus
    # must not turn a broken format with the right context into a knowledge failure
    fresh = tuple(c for c in ev.newly_relevant(thr) if c.relevance > ev.best("before"))
    why = _symptom(trace)
    if fresh:
        docs = tuple(dict.fromkeys(c.doc for c in fresh))
        seen = {c.doc for c in ev.before}
        how = ", ".join(f"{d} ({'updated' if d in seen else 'now retrieved'})" for d in docs)
        best = max(c.relevance for c in fresh)
        return Routed(trace.trace_id, "knowledge", f"{why}; the same question now retrieves relevant context the "
                      f"answer lacked: {how} (relevance {best:.2f} >= {thr})", docs)  # fmt: skip
    if not ev.before and not ev.after:
        return Routed(trace.trace_id, OUTAGE, f"{why}; nothing retrieved then or now: an empty or unreachable "
                      "index, not a gap", ())  # fmt: skip
    if max(ev.best("before"), ev.best("after")) < thr:  # (now: the same question on the current index)
        return Routed(trace.trace_id, "gap", f"{why}; no relevant document then or now (best relevance "
                      f"{max(ev.best('before'), ev.best('after')):.2f} < {thr})", ())  # fmt: skip
    context = tuple(dict.fromkeys(c.doc for c in ev.before if c.relevance >= thr))
    return Routed(trace.trace_id, "behaviour", f"{why} with relevant context ({', '.join(context)}, relevance "
                  f"{ev.best('before'):.2f} >= {thr})", context)  # fmt: skip


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
    """Gap-routed traces grouped by similarity, each group named by its topic terms, largest group first."""
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
    n: int  # live traces checked on this slice, knowledge / gap / outage failures left out
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
        if route in ("knowledge", "gap", OUTAGE):
            continue
        for name, ok in t.checks.items():
            n[name] += 1
            failed[name] += int(not ok and route == "behaviour")
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


def champion_fail_rates(behaviour_results: Mapping[str, Mapping[str, bool]] | None) -> dict[str, float]:
    """slice -> failure rate, from the champion's behaviour-only gate results ({slice: {case id: passed}})."""
    return {name: 1 - sum(map(bool, cases.values())) / len(cases)
            for name, cases in (behaviour_results or {}).items() if cases}  # fmt: skip
