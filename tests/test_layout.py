"""The inference wing stays readable: short modules and short functions (issue: one design)."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1] / "frametrans"
PACKAGES = ["apply", "engine", "bench"]
MAX_MODULE_LINES = 600
MAX_FUNCTION_LINES = 60


def _modules():
    for pkg in PACKAGES:
        yield from sorted((ROOT / pkg).glob("*.py"))


def test_modules_of_the_inference_wing_are_short():
    long = {str(p.relative_to(ROOT)): n for p in _modules()
            if (n := len(p.read_text(encoding="utf-8").splitlines())) > MAX_MODULE_LINES}
    assert not long, long


def test_functions_of_the_inference_wing_are_short():
    long = []
    for path in _modules():
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                first = min([node.lineno] + [d.lineno for d in node.decorator_list])
                n = node.end_lineno - first + 1
                if n > MAX_FUNCTION_LINES:
                    long.append(f"{path.relative_to(ROOT)}:{node.lineno} {node.name} ({n} lines)")
    assert not long, long
