"""Docs that must stay true: README's list of modules is the package's modules; DESIGN.md's
wings are the package's subpackages, layered."""

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


PACKAGE = ROOT / "src" / "alexnet"


def _modules() -> dict[str, str]:
    """Every module of the package: its name -> its wing ("config" for the package root)."""
    found = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        if path.stem.startswith("_"):
            continue
        rel = path.relative_to(PACKAGE).parts
        assert rel[0] == "config.py" or len(rel) == 2, f"{path}: modules live in a wing, one level down"
        assert path.stem not in found, f"two modules named {path.stem}"
        found[path.stem] = rel[0] if len(rel) == 2 else "config"
    return found


def test_readme_lists_every_module_of_the_package():
    text = (ROOT / "README.md").read_text()
    block = text.split("<!-- modules:begin -->")[1].split("<!-- modules:end -->")[0]
    listed = set(re.findall(r"`(\w+)`", "".join(line.split(":")[0] for line in block.splitlines() if "/`" not in line)))
    modules = set(_modules())
    assert listed == modules, (
        f"README's module list is out of step: missing {sorted(modules - listed)}, "
        f"no such module {sorted(listed - modules)}"
    )


def _wings() -> list[str]:
    """DESIGN.md's table of wings, bottom up."""
    text = (ROOT / "docs" / "DESIGN.md").read_text().split("## Wings")[1].split("## Modules")[0]
    return [re.findall(r"`(\w+)`", line.split("|")[1])[0] for line in text.splitlines() if line.startswith("| `")]


def _design_sections() -> dict[str, list[str]]:
    """DESIGN.md's module tables: wing -> the modules its section names."""
    text = (ROOT / "docs" / "DESIGN.md").read_text().split("## Modules")[1].split("## Data flow")[0]
    sections = {}
    for part in text.split("### ")[1:]:
        wing = re.findall(r"`(\w+)`", part.splitlines()[0])[0]
        rows = [line for line in part.splitlines() if line.startswith("| `")]
        sections[wing] = [m for row in rows for m in re.findall(r"`(\w+)`", row.split("|")[1])]
    return sections


def test_design_doc_places_every_module_in_its_wing():
    modules = _modules()
    assert _wings() == ["config", "run", "data", "core", "apps"], _wings()
    assert sorted(p.name for p in PACKAGE.iterdir() if p.is_dir() and (p / "__init__.py").exists()) == sorted(
        _wings()[1:]
    )
    sections = _design_sections()
    wrong = [f"{m} ({wing})" for m, wing in modules.items() if wing != "config" and m not in sections.get(wing, [])]
    assert not wrong, f"docs/DESIGN.md does not say, in their wing's table, what these modules own: {wrong}"


def _module_imports(path: Path) -> list[str]:
    """The package's modules that `path` imports at module level (relative imports)."""
    import ast

    names = []
    for node in ast.parse(path.read_text()).body:
        if isinstance(node, ast.ImportFrom) and node.level >= 1:
            if node.module:
                names.append(node.module.split(".")[-1])
            names += [a.name for a in node.names] if not node.module or node.module in _wings() else []
    return [n for n in names if n in _modules()]


def test_wings_import_only_the_wings_below_them():
    """No import cycle: at module level a module imports only its own wing and the wings
    below it (imports inside functions, for optional dependencies, may look up)."""
    rank = {w: i for i, w in enumerate(_wings())}
    modules = _modules()
    wrong = []
    for name, wing in modules.items():
        path = PACKAGE / f"{name}.py" if wing == "config" else PACKAGE / wing / f"{name}.py"
        wrong += [
            f"{wing}/{name} imports {modules[n]}/{n}" for n in _module_imports(path) if rank[modules[n]] > rank[wing]
        ]
    assert not wrong, "; ".join(wrong)


def test_no_cycle_inside_a_wing():
    modules = _modules()
    graph = {
        name: {n for n in _module_imports(PACKAGE / wing / f"{name}.py") if modules[n] == wing and n != name}
        for name, wing in modules.items()
        if wing != "config"
    }
    done: set[str] = set()
    while len(done) < len(graph):
        ready = [m for m in graph if m not in done and graph[m] <= done]
        assert ready, f"an import cycle among {sorted(set(graph) - done)}"
        done.update(ready)


def test_no_function_is_longer_than_a_screen():
    """DESIGN.md's rule: a function a reader can follow on one screen (about 60 lines)."""
    import ast

    long = []
    for path in sorted(PACKAGE.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                lines = node.end_lineno - node.lineno + 1
                if lines > 65:
                    long.append(f"{path.stem}.{node.name} ({lines} lines)")
    assert not long, "split these: " + ", ".join(long)


def test_no_module_is_longer_than_500_lines():
    """DESIGN.md's rule: a module a reader can hold in mind (500 lines); a longer one is split by topic."""
    long = [
        f"{p.relative_to(PACKAGE)} ({n} lines)"
        for p in sorted(PACKAGE.rglob("*.py"))
        if (n := len(p.read_text().splitlines())) > 500
    ]
    assert not long, "split these: " + ", ".join(long)
