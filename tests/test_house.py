"""The house rules that no single feature test would catch: the package's modules depend one
way (the CLI on top, nothing importing it, no cycles), and the project's documents and code
speak of the project, not of how its work was organised."""

import ast
import re
import subprocess
from pathlib import Path

import pytest

from conftest import ROOT

PACKAGE = ROOT / "vaecodec"


def module_name(path: Path) -> str:
    """The module's name inside the package: "codec", "bench.run"; a subpackage by its own
    name ("bench"), the package itself as "__init__"."""
    parts = path.relative_to(PACKAGE).with_suffix("").parts
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts) or "__init__"


def import_graph() -> dict[str, set[str]]:
    """Module -> the package modules it imports anywhere (top level or inside a function),
    subpackages' modules included."""
    paths = sorted(PACKAGE.rglob("*.py"))
    names = {module_name(p) for p in paths}

    def known(parts: list[str]) -> str:
        """The package module that a dotted name inside the package lands in: the module
        itself, or the one that defines the name."""
        for n in range(len(parts), 0, -1):
            if ".".join(parts[:n]) in names:
                return ".".join(parts[:n])
        return "__init__"

    graph = {}
    for path in paths:
        name = module_name(path)
        here = [] if name == "__init__" else name.split(".")
        package = here if path.name == "__init__.py" else here[:-1]
        deps = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom):
                mod = node.module.split(".") if node.module else []
                if node.level:                         # relative: up from its own package
                    if node.level - 1 > len(package):
                        continue
                    target = package[:len(package) - node.level + 1] + mod
                elif mod[:1] == ["vaecodec"]:
                    target = mod[1:]
                else:
                    continue
                for a in node.names:                   # from . import a, b: modules themselves
                    sub = ".".join(target + [a.name])
                    deps.add(sub if sub in names else known(target))
            elif isinstance(node, ast.Import):
                for a in node.names:
                    parts = a.name.split(".")
                    if parts[0] == "vaecodec":
                        deps.add(known(parts[1:]))
        graph[name] = deps - {name}
    return graph


def test_the_import_graph_finds_imports():
    g = import_graph()
    assert "bitstream" in g["codec"] and "refine" in g["codec"]  # one top-level, one inside
    assert "cli" in g["__main__"]
    assert "bench" in g["cli"] and "metrics" in g["bench.measure"]  # a subpackage, both ways
    assert "bench.codecs" in g["bench.results"] and "bench.run" in g["bench"]


def test_nothing_imports_the_cli():
    assert [m for m, deps in import_graph().items() if "cli" in deps] == ["__main__"]


def test_no_import_cycles():
    g = import_graph()
    # the package's __init__ is the public API: modules below it may not reach it
    done, path = set(), []

    def visit(m: str) -> None:
        if m in path:
            pytest.fail("import cycle: " + " -> ".join(path[path.index(m):] + [m]))
        if m in done:
            return
        path.append(m)
        for d in sorted(g.get(m, ())):
            visit(d)
        path.pop()
        done.add(m)

    for m in sorted(g):
        visit(m)


#: Words of how the work was organised rather than of what the project is.
#: (pytest's whole-run fixture scope, spelled scope="..." in code, is exempt.)
HISTORY_WORDS = re.compile(r'(?<!scope=")\bsessions?\b|\bissue #?\d+|(?<![\w/&])#\d{1,3}\b',
                           re.IGNORECASE)


def tracked_texts() -> list[Path]:
    try:
        out = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True,
                             check=True).stdout.split()
    except (OSError, subprocess.CalledProcessError):
        pytest.skip("not a git checkout")
    keep = {".py", ".md", ".toml", ".sh", ".txt", ".json", ""}
    return [ROOT / f for f in out
            if Path(f).suffix in keep and not f.startswith("tests/regressions")
            and f != "CHANGELOG.md" and (ROOT / f).is_file()]


def test_no_session_words_or_issue_numbers():
    """History lives in CHANGELOG.md (by version) and the model card's learning curve (by
    weights hash), not in the README, docs, code or comments. This file is left out: it has
    to spell the words it looks for."""
    hits = []
    for path in tracked_texts():
        if path.name == "test_house.py":
            continue
        for n, line in enumerate(path.read_text(errors="replace").splitlines(), 1):
            if HISTORY_WORDS.search(line):
                hits.append(f"{path.relative_to(ROOT)}:{n}: {line.strip()[:100]}")
    assert not hits, "\n".join(hits)
