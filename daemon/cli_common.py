"""What every ``predictd`` sub-command shares: the consoles, the --config/--json options, settings and database."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console

from predictd.daemon.config import ConfigError, Settings, load_settings
from predictd.daemon.db import Database, DatabaseNotAtHead

console = Console()
err = Console(stderr=True)

ConfigOption = Annotated[
    Path | None,
    typer.Option("--config", "-c", help="TOML config file.", envvar="PREDICTD_CONFIG", exists=True, dir_okay=False),
]
JsonOption = Annotated[bool, typer.Option("--json", help="Machine-readable output.")]

root_config: dict[str, Path | None] = {"path": None}
"""The --config given before the sub-command (``predictd --config F queue ls``)."""


def settings_for(config: Path | None) -> Settings:
    try:
        return load_settings(config or root_config["path"])
    except ConfigError as exc:
        sys.stderr.write(f"error: {exc}\n")  # one line, never wrapped: operators grep for it
        raise typer.Exit(2) from None


def open_db(settings: Settings) -> Database:
    db = Database(settings.database.url, sqlite_busy_timeout_ms=settings.database.sqlite_busy_timeout_ms)
    try:
        db.require_head()
    except DatabaseNotAtHead as exc:
        err.print(f"[red]error:[/red] {exc}")
        raise typer.Exit(2) from exc
    return db


def print_json(data: Any) -> None:
    sys.stdout.write(json.dumps(data, indent=2, default=str) + "\n")
