"""The README is part of the specification: its examples run as doctests (``--doctest-glob``)
and its quick start stays two commands."""

from __future__ import annotations

from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"


def test_readme_quick_start_is_two_commands() -> None:
    text = README.read_text()
    quick = text.split("## Quick start", 1)[1].split("## ", 1)[0]
    commands = [line for line in quick.splitlines() if line.startswith("pip install")]
    assert len(commands) == 2
    assert "logitkit calibrate" in commands[0]
    assert "pytest" in commands[1]
