"""Paths computed from a module's own file still name what they mean after a move: the sandbox finds the
checkout it copies into the server user's venv, and the WAL settings cache watches the config's schema."""

from __future__ import annotations

from pathlib import Path

import steps.repository.config
from steps.sandbox.build import SOURCE_ROOT
from steps.wal.settings import SCHEMA

ROOT = Path(__file__).resolve().parents[2]


def test_the_sandbox_finds_the_checkout() -> None:
    assert SOURCE_ROOT == ROOT and (SOURCE_ROOT / "pyproject.toml").is_file()


def test_the_wal_settings_cache_watches_the_config_schema() -> None:
    assert SCHEMA.resolve() == Path(steps.repository.config.__file__).resolve()
