"""Every module imports, and the CLI lists exactly the commands that exist."""

from __future__ import annotations

import importlib
import pkgutil
import subprocess
import sys

from lit_swift import cli


def all_modules() -> list[str]:
    """Modules of lit_swift and of the folders installed into it (`callbacks/`, `strategies/`)."""
    names = ["lit_swift"]
    for package in ("lit_swift", "lit_swift.callbacks", "lit_swift.strategies"):
        module = importlib.import_module(package)
        names += [package] + [i.name for i in pkgutil.walk_packages(module.__path__, prefix=package + ".")]
    return sorted(set(names))


def test_every_module_imports():
    names = all_modules()
    assert "lit_swift.callbacks.hf_checkpoint" in names and "lit_swift.strategies" in names
    for name in names:
        importlib.import_module(name)


def test_help_lists_every_command(capsys):
    cli.main(["--help"])
    out = capsys.readouterr().out
    listed = [line.split()[0] for line in out.splitlines() if line.startswith("  ")]
    assert listed == [*cli.TRAINER_COMMANDS, *cli.TOOL_COMMANDS]


def test_console_script_and_module_entry_point():
    out = subprocess.run(
        [sys.executable, "-m", "lit_swift", "--help"], capture_output=True, text=True, check=True
    )
    assert "fit" in out.stdout
    bad = subprocess.run([sys.executable, "-m", "lit_swift", "nope"], capture_output=True, text=True)
    assert bad.returncode == 2 and "unknown command 'nope'" in bad.stderr


def test_every_package_folder_is_installed():
    """A wheel holds only the packages pyproject.toml lists: every folder with an __init__.py is one."""
    from pathlib import Path

    import pytest

    tomllib = pytest.importorskip("tomllib")  # Python 3.11+

    root = Path(__file__).resolve().parents[1]
    listed = set(tomllib.loads((root / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])
    found = {
        ".".join(init.parent.relative_to(root).parts) for init in (root / "lit_swift").rglob("__init__.py")
    }
    assert found - listed == set()
