"""The four routes a failure can take, and the fix each one asks for: one vocabulary for the offline evaluation
(`ragloop evaluate`), production triage (`ragloop triage`), `status` and `advise`.

- ``stale``: a document the answer needs changed or was removed since the index version that answered
  -> ``reindex`` (the reindex deployment does it by itself).
- ``missing``: nothing in the knowledge base answers it -> ``write_documents`` (the gap report names the topics).
- ``retrieval``: the document that answers is indexed and current but was not in the context
  -> ``tune_retriever`` (a fine-tuned embedder, gated like a model).
- ``behaviour``: the right context was given and the answer broke the contract -> ``finetune`` (the generator).
"""

from __future__ import annotations

PASS = "pass"
STALE = "stale"
MISSING = "missing"
RETRIEVAL = "retrieval"
BEHAVIOUR = "behaviour"
ROUTES = (BEHAVIOUR, RETRIEVAL, STALE, MISSING)  # the failing routes, in the order reports list them
KNOWLEDGE_ROUTES = (STALE, MISSING, RETRIEVAL)  # the retrieval pipeline's to fix, never the weights'

REINDEX = "reindex"
WRITE_DOCUMENTS = "write_documents"
TUNE_RETRIEVER = "tune_retriever"
FINETUNE = "finetune"
NONE = "none"
ACTION_OF = {STALE: REINDEX, MISSING: WRITE_DOCUMENTS, RETRIEVAL: TUNE_RETRIEVER, BEHAVIOUR: FINETUNE}
ACTIONS = (REINDEX, WRITE_DOCUMENTS, TUNE_RETRIEVER, FINETUNE)  # the order the loop runs them
DECISIONS = (NONE, *ACTIONS)


def ordered_actions(actions: set[str] | list[str] | tuple[str, ...]) -> list[str]:
    """The actions that apply, in the order the loop runs them (an unknown name is a programming error)."""
    unknown = set(actions) - set(ACTIONS)
    if unknown:
        raise ValueError(f"unknown action(s) {sorted(unknown)}; expected some of {', '.join(ACTIONS)}")
    return [a for a in ACTIONS if a in actions]


def decision_of(actions: list[str]) -> str:
    """The evaluation's one-word decision: the first action the loop runs, or none."""
    return actions[0] if actions else NONE
