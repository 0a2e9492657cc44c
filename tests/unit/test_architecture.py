"""The import rules of docs/architecture.md hold, as contracts (import-linter, `[tool.importlinter]` in
pyproject.toml) that this test runs; and they are not vacuous: a copy of the sources with one forbidden import
and one import cycle breaks them."""

from __future__ import annotations

import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
LINT = Path(sys.executable).parent / "lint-imports"
FRONT_ENDS = {"runbook.tui", "runbook.cli"}
ENTRY_POINTS = {"runbook.launch", "runbook.__main__"}  # they dispatch to the command line


def lint(cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(LINT), "--no-cache"], cwd=cwd, capture_output=True, text=True, timeout=120)


def contracts() -> dict[str, dict[str, object]]:
    cfg = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["importlinter"]
    return {c["id"]: c for c in cfg["contracts"]}


def test_the_import_contracts_are_kept() -> None:
    out = lint(ROOT)
    assert out.returncode == 0, out.stdout + out.stderr
    assert f"Contracts: {len(contracts())} kept, 0 broken." in out.stdout


def test_the_core_contract_covers_every_core_module() -> None:
    listed = set(contracts()["core-no-front-end"]["source_modules"])  # type: ignore[arg-type]
    core = set()
    for p in (ROOT / "runbook").iterdir():
        name = f"runbook.{p.stem}"
        if (p.suffix == ".py" and p.stem != "__init__") or (p.is_dir() and (p / "__init__.py").exists()):
            core.add(name)
    missing = core - listed - FRONT_ENDS - ENTRY_POINTS
    assert not missing, f"add these core modules to the core-no-front-end contract in pyproject.toml: {sorted(missing)}"


def test_a_forbidden_import_and_a_cycle_break_the_contracts(tmp_path: Path) -> None:
    for name in ("runbook", "steps"):
        shutil.copytree(ROOT / name, tmp_path / name, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "pyproject.toml", tmp_path)
    engine = tmp_path / "runbook" / "engine.py"
    engine.write_text(engine.read_text() + "\n\ndef _tui() -> None:\n    import runbook.tui.app  # noqa\n")
    layout = tmp_path / "steps" / "repository" / "layout.py"
    layout.write_text(layout.read_text() + "\n\ndef _back() -> None:\n    from steps.backup import logical  # noqa\n")
    out = lint(tmp_path)
    assert out.returncode != 0
    assert "The core never imports Textual, the TUI or the command line BROKEN" in out.stdout
    assert "runbook.engine -> runbook.tui.app" in out.stdout
    assert "No import cycles between the packages of steps/, nor inside them BROKEN" in out.stdout


def test_importing_everything_but_the_tui_loads_no_textual() -> None:
    """The runtime side of the contracts: every module of runbook/ (but the TUI) and steps/, imported."""
    code = (
        "import importlib, pkgutil, sys, runbook, steps\n"
        "for pkg in (runbook, steps):\n"
        "    for m in pkgutil.walk_packages(pkg.__path__, pkg.__name__ + '.'):\n"
        "        if not m.name.startswith('runbook.tui') and not m.name.endswith('__main__'):\n"
        "            importlib.import_module(m.name)\n"
        "bad = sorted(m for m in sys.modules if m == 'textual' or m.startswith('textual.'))\n"
        "print(len(sys.modules), bad[:3])\n"
        "sys.exit(1 if bad else 0)\n"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert r.returncode == 0, r.stdout + r.stderr
