"""Running the CLI in-process and reading what it reports."""

from __future__ import annotations

from pathlib import Path
from typing import Dict
from click.testing import CliRunner
from frametrans.cli.main import cli


def run(*args, input=None):
    return CliRunner().invoke(cli, [str(a) for a in args], input=input)


def failure_lines(output: str) -> Dict[str, str]:
    """The end-of-run summary: indented lines after 'N input(s) failed:', keyed by file name."""
    lines = output.splitlines()
    start = next((i for i, line in enumerate(lines) if "input(s) failed:" in line), None)
    if start is None:
        return {}
    out = {}
    for line in lines[start + 1:]:
        if not line.startswith("  "):
            break
        path = line.strip().split(": ", 1)[0]
        out[Path(path).name] = line.strip()
    return out


def hidden_files(folder: Path):
    return [p for p in folder.rglob(".*")] + [p for p in folder.rglob("*.part")] + \
        [p for p in folder.rglob("*.tmp")]
