"""Event names, in one place: flows emit them, deployment triggers in prefect.yaml match them by name."""

INDEX_PUBLISHED = "ragloop.index.published"
BEHAVIOUR_REGRESSION = "ragloop.behaviour.regression"
MODEL_PROMOTED = "ragloop.model.promoted"
