"""The layers import one way: a module never imports a layer above it, even inside a function.

tasks -> runner -> experiments -> analysis/report is the data flow; these are the imports that would
turn it back (design.md: report must not import experiments, tasks must not import runner, data must
not import analysis; experiments read each other only as sources, never by import).
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).parent.parent / "src" / "babelheads"
FORBIDDEN = {
    "report": ("babelheads.experiments", "babelheads.cli"),
    "tasks": ("babelheads.runner", "babelheads.experiments", "babelheads.analysis", "babelheads.report"),
    "data": ("babelheads.analysis", "babelheads.runner", "babelheads.experiments", "babelheads.report"),
    "analysis": ("babelheads.experiments", "babelheads.report", "babelheads.cli", "babelheads.runner"),
    "runner": ("babelheads.experiments", "babelheads.report", "babelheads.cli"),
    "probe": ("babelheads.runner", "babelheads.experiments", "babelheads.report", "babelheads.tasks"),
}


def imports(path: Path) -> set[str]:
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module:
            found.add(node.module)
        elif isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
    return found


@pytest.mark.parametrize("layer", sorted(FORBIDDEN))
def test_a_layer_never_imports_a_layer_above_it(layer):
    wrong = [
        f"{path.relative_to(PACKAGE)} imports {module}"
        for path in sorted((PACKAGE / layer).rglob("*.py"))
        for module in imports(path)
        if module.startswith(FORBIDDEN[layer])
    ]
    assert not wrong, wrong


def test_experiments_import_only_the_contract_of_other_experiments():
    wrong = [
        f"{path.name} imports {module}"
        for path in sorted((PACKAGE / "experiments").glob("*.py"))
        for module in imports(path)
        if module.startswith("babelheads.experiments") and module != "babelheads.experiments.base"
    ]
    assert not wrong, wrong
