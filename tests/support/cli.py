"""Running the CLI in-process and reading what it reports."""

from __future__ import annotations

from pathlib import Path
from typing import Dict, Tuple
from click.testing import CliRunner
from frametrans.cli.main import cli


def run(*args, input=None):
    return CliRunner().invoke(cli, [str(a) for a in args], input=input)


def main_in_process(capture, *args) -> Tuple[int, str, str]:
    """``frametrans ARGS`` through the real entry point (``main``: exit statuses, one-line errors,
    signal handlers, one-line warnings) in this process, without the seconds a new interpreter
    spends importing torch; returns (exit status, stdout, stderr) read from ``capture`` (pytest's
    capsys or capfd). The signal handlers and warning printer ``main`` installs are restored."""
    import signal
    import warnings

    from frametrans.cli.main import main

    saved = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGHUP)}
    show = warnings.showwarning
    capture.readouterr()
    try:
        main([str(a) for a in args])
        code = 0
    except SystemExit as exc:
        code = 0 if exc.code is None else exc.code
    finally:
        for s, h in saved.items():
            signal.signal(s, h)
        warnings.showwarning = show
    out = capture.readouterr()
    return code, out.out, out.err


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
