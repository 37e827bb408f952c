"""models.card: a card checks itself when it is made, so no loader, trainer or CLI can hold an invalid one."""

from __future__ import annotations

import pytest

from predictd.models.card import CardError, Label, ModelCard

LABELS = (Label("a", "A"), Label("b", "B"))


def _card(**changes: object) -> ModelCard:
    fields: dict[str, object] = {"name": "m", "version": "1", "task": "t", "arch": "resnet10t", "labels": LABELS}
    return ModelCard(**{**fields, **changes})  # type: ignore[arg-type]


@pytest.mark.parametrize("temperature", [0.0, -1.0, float("nan")])
def test_temperature_must_be_positive(temperature: float) -> None:
    with pytest.raises(CardError, match="temperature must be positive"):
        _card(temperature=temperature)


def test_thresholds_name_only_the_cards_labels() -> None:
    assert _card(thresholds={"a": 0.7}).thresholds == {"a": 0.7}
    with pytest.raises(CardError, match=r"thresholds for unknown labels \['c'\]"):
        _card(thresholds={"a": 0.7, "c": 0.5})


def test_a_card_without_labels_is_a_template_that_cannot_load() -> None:
    template = _card(labels=())
    with pytest.raises(CardError, match="no labels"):
        template.check_loadable()
    _card().check_loadable()


def test_a_bad_card_file_fails_when_read(tmp_path: object) -> None:
    data = _card().to_dict()
    data["thresholds"] = {"zzz": 0.5}
    with pytest.raises(CardError, match="unknown labels"):
        ModelCard.from_dict(data)
