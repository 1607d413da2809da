"""The model label: formatted and parsed in components/records.py alone, and the two round-trip."""

from __future__ import annotations

import pytest

from components.records import BASE_MODEL_LABEL, label_version, model_label


@pytest.mark.parametrize(("version", "label"), [(None, "base"), ("3", "v3"), (3, "v3"), ("12", "v12")])
def test_a_version_has_one_label_and_the_label_gives_it_back(version: str | int | None, label: str) -> None:
    assert model_label(version) == label
    assert label_version(label) == (None if version is None else str(version))


@pytest.mark.parametrize("label", [BASE_MODEL_LABEL, "v", "vx", "v3a", "3", "V3", ""])
def test_a_label_that_is_not_v_and_a_number_names_no_version(label: str) -> None:
    assert label_version(label) is None
