"""The house: subpackages by stage, imports only downward (read from the code, imports inside
functions included), no import circles, no module over 400 lines, no private name imported
across modules, and every module listed in the README's layout section."""

from __future__ import annotations

import ast
import re
from collections import defaultdict
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
# Stages from the bottom up; a module may import its own stage and the ones below it.
LAYERS = [
    "core",
    "store",
    "backbone",
    "embedding",
    "probe",
    "index",
    "search",
    "live",
    "dedup",
    "api",
    ("serve", "measure"),
    "cli",
]
RANK = {name: i for i, layer in enumerate(LAYERS) for name in (layer if isinstance(layer, tuple) else (layer,))}
MAX_LINES = 400


def _modules() -> dict[str, Path]:
    out = {}
    for path in sorted((REPO / "hashindex").rglob("*.py")) + sorted((REPO / "cli").glob("*.py")):
        rel = path.relative_to(REPO).with_suffix("")
        parts = list(rel.parts)
        if parts[0] == "cli":
            parts = ["hashindex", "cli", *parts[1:]]
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = path
    return out


MODULES = _modules()


def _imports(name: str, path: Path) -> list[tuple[str, int, list[str]]]:
    """``(module imported, line, names)`` of every hashindex import in a file, wherever it is."""
    out = []
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out += [(a.name, node.lineno, []) for a in node.names if a.name.startswith("hashindex")]
        elif isinstance(node, ast.ImportFrom):
            mod = node.module or ""
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                mod = ".".join(base + ([mod] if mod else []))
            if not mod.startswith("hashindex"):
                continue
            names = [a.name for a in node.names]
            # `from hashindex.x import y` where y is a module imports that module
            subs = [f"{mod}.{n}" for n in names if f"{mod}.{n}" in MODULES]
            out += [(s, node.lineno, []) for s in subs] or [(mod, node.lineno, names)]
    return out


def _stage(module: str) -> str | None:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 and parts[1] in RANK else None


GRAPH = {name: _imports(name, path) for name, path in MODULES.items()}


def test_every_module_belongs_to_a_stage():
    loose = [m for m in MODULES if _stage(m) is None and m not in ("hashindex", "hashindex.__main__")]
    assert not loose, f"modules outside the stage subpackages: {loose}"


def test_imports_only_go_down():
    upward = []
    for name, imports in GRAPH.items():
        mine = _stage(name)
        if mine is None:
            continue
        for target, line, _ in imports:
            theirs = _stage(target)
            if theirs is None and target == "hashindex" and mine != "cli":
                upward.append(f"{name}:{line} imports the package root")
            elif theirs is not None and theirs != mine and RANK[theirs] >= RANK[mine]:
                upward.append(f"{name}:{line} ({mine}) imports {target} ({theirs})")
    assert not upward, "imports that go up or sideways:\n" + "\n".join(upward)


def test_no_import_circles():
    edges = defaultdict(set)
    for name, imports in GRAPH.items():
        for target, _, _ in imports:
            while target not in MODULES and "." in target:
                target = target.rsplit(".", 1)[0]
            if target in MODULES and target != name and not MODULES[target].name == "__init__.py":
                edges[name].add(target)
    seen, stack, cycles = set(), [], []

    def visit(node):
        if node in stack:
            cycles.append(stack[stack.index(node) :] + [node])
            return
        if node in seen:
            return
        seen.add(node)
        stack.append(node)
        for nxt in sorted(edges[node]):
            visit(nxt)
        stack.pop()

    for node in sorted(MODULES):
        visit(node)
    assert not cycles, "import circles:\n" + "\n".join(" -> ".join(c) for c in cycles)


def test_no_private_name_crosses_modules():
    crossing = [
        f"{name}:{line} imports {n} from {target}"
        for name, imports in GRAPH.items()
        for target, line, names in imports
        for n in names
        if n.startswith("_") and not n.startswith("__") and target != name
    ]
    assert not crossing, "\n".join(crossing)


@pytest.mark.parametrize("name", sorted(MODULES))
def test_modules_stay_small(name):
    lines = len(MODULES[name].read_text().splitlines())
    assert lines <= MAX_LINES, f"{MODULES[name]} has {lines} lines (at most {MAX_LINES}): split it by concern"


def test_readme_layout_lists_every_module():
    text = (REPO / "README.md").read_text()
    section = re.search(r"^## Layout\n(.*?)(?=^## )", text, re.S | re.M)
    assert section, "the README has no '## Layout' section"
    listed = set(re.findall(r"[\w/]+\.py", section.group(1)))
    # listed by their path in the repository, or inside hashindex/ (core/errors.py)
    names = {
        p: {str(p.relative_to(REPO)), str(p.relative_to(REPO)).removeprefix("hashindex/")} for p in MODULES.values()
    }
    missing = [str(p.relative_to(REPO)) for p, ways in names.items() if not ways & listed]
    assert not missing, f"modules the README's layout section does not list: {missing}"
