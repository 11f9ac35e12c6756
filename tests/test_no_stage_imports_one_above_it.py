"""The package's stages flow downhill: data -> model -> train -> eval -> gate -> agent/server.

Every `so8t` import in src/so8t (module level and inside functions) is checked: a module may
import its own stage, any stage below it, and the top-level modules (labels, config, fsutil,
...), which sit below every stage; only the CLI sits above everything. The test fails listing
each import that runs up the stages, with file and line.
"""

from __future__ import annotations

import ast
from pathlib import Path

import so8t

PACKAGE = Path(so8t.__file__).parent
STAGES = {"data": 1, "model": 2, "train": 3, "eval": 4, "gate": 5, "agent": 6, "server": 6}
ON_TOP = {"cli", "__main__"}  # the command line drives every stage


def stage_of(module: str) -> tuple[str, int]:
    """(stage name, rank) of a dotted so8t module name; top-level modules rank 0."""
    parts = module.split(".")
    if len(parts) < 2:
        return "top-level", 0
    if parts[1] in STAGES:
        return parts[1], STAGES[parts[1]]
    if parts[1] in ON_TOP:
        return parts[1], max(STAGES.values()) + 1
    return "top-level", 0


def module_name(path: Path, root: Path) -> tuple[str, str]:
    """(module, package it resolves relative imports against) of a file in the package `root`."""
    parts = list(path.relative_to(root.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
        return ".".join(parts), ".".join(parts)
    return ".".join(parts), ".".join(parts[:-1])


def imported(node: ast.AST, package: str) -> list[str]:
    """The so8t modules (or module.name) an import statement names."""
    if isinstance(node, ast.Import):
        return [a.name for a in node.names]
    if isinstance(node, ast.ImportFrom):
        base = package.split(".")[: len(package.split(".")) - node.level + 1] if node.level else []
        module = ".".join(base + ([node.module] if node.module else []))
        return [module] if node.module else [f"{module}.{a.name}" for a in node.names]
    return []


def upward_imports(root: Path = PACKAGE) -> list[str]:
    found = []
    for path in sorted(root.rglob("*.py")):
        module, package = module_name(path, root)
        src_stage, src_rank = stage_of(module)
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
            for target in imported(node, package):
                if target == "so8t" or target.startswith("so8t."):
                    dst_stage, dst_rank = stage_of(target)
                    if dst_rank > src_rank:
                        where = path.relative_to(root.parent)
                        found.append(f"{where}:{node.lineno}: {src_stage} imports {target} ({dst_stage})")
    return found


def test_no_module_imports_from_a_stage_above_its_own():
    found = upward_imports()
    assert not found, "imports that run up the stages:\n" + "\n".join(found)


def test_the_check_sees_an_upward_import_inside_a_function(tmp_path):
    pkg = tmp_path / "so8t"
    (pkg / "train").mkdir(parents=True)
    (pkg / "train" / "x.py").write_text("def f():\n    from so8t.gate.gate import Gate\n    from so8t import labels\n")
    assert upward_imports(pkg) == ["so8t/train/x.py:2: train imports so8t.gate.gate (gate)"]
