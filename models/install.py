"""The models predictd ships (models/shipped/<name>/) and their installation into a site's models directory.

Shipped models are trained by this project with ``predictd train`` on ../shared/data and packaged with
``predictd export``; each folder holds the card, the weights and the evaluation of the project's own test split
(evaluation.json / evaluation.html). Installing copies them, so a site's models directory stays the one place the
engine reads, and a site can replace a shipped model with its own without touching the package.
"""

from __future__ import annotations

import shutil
from collections.abc import Sequence
from pathlib import Path

from predictd.models.card import CardError, ModelCard, find_cards

SHIPPED_DIR = Path(__file__).resolve().parent / "shipped"


def shipped() -> dict[str, Path]:
    """Name → folder of every model that ships with predictd."""
    return {ModelCard.load(path).name: path for path in find_cards(SHIPPED_DIR)}


def install_shipped(models_dir: Path, names: Sequence[str] = (), *, overwrite: bool = False) -> list[ModelCard]:
    """Copy the named shipped models (all when none are named) into ``models_dir``/<name>.

    An installed model of the same name is kept unless ``overwrite``: it may be the site's own retrained one.
    The weights are copied before the card, since a folder with a card is what the engine treats as installed.
    """
    available = shipped()
    unknown = sorted(set(names) - set(available))
    if unknown:
        raise CardError(f"no shipped model named {unknown}; shipped: {sorted(available)}")
    installed = []
    for name in names or sorted(available):
        source, target = available[name], Path(models_dir) / name
        if (target / "card.json").exists() and not overwrite:
            continue
        target.mkdir(parents=True, exist_ok=True)
        (target / "card.json").unlink(missing_ok=True)
        for path in sorted(source.iterdir(), key=lambda p: p.name == "card.json"):
            if path.is_file():
                shutil.copy2(path, target / path.name)
        installed.append(ModelCard.load(target))
    return installed
