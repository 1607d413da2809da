"""Event names, in one place: flows emit them, deployment triggers in prefect.yaml match them by name."""

DOCUMENTS_CHANGED = "ragloop.documents.changed"  # `ragloop watch`; triggers the reindex deployment
INDEX_PUBLISHED = "ragloop.index.published"
BEHAVIOUR_REGRESSION = "ragloop.behaviour.regression"  # the evaluate flow; triggers the finetune deployment
MODEL_PROMOTED = "ragloop.model.promoted"
RETRIEVAL_REGRESSION = "ragloop.retrieval.regression"  # evaluate / triage; triggers the tune-retriever deployment

# Resource ids are "ragloop.<kind>.<name>": triggers match them by pattern, never by a Prefect id.
DOCS_RESOURCE = "ragloop.docs"
MODEL_RESOURCE = "ragloop.model"
INDEX_RESOURCE = "ragloop.index"
RETRIEVER_RESOURCE = "ragloop.retriever"
