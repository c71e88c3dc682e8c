"""Docs that must stay true: README's list of modules is the package's modules."""

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_readme_lists_every_module_of_the_package():
    text = (ROOT / "README.md").read_text()
    block = text.split("<!-- modules:begin -->")[1].split("<!-- modules:end -->")[0]
    listed = set(re.findall(r"`(\w+)`", "".join(line.split(":")[0] for line in block.splitlines())))
    modules = {p.stem for p in (ROOT / "src" / "alexnet").glob("*.py") if not p.stem.startswith("_")}
    assert listed == modules, (
        f"README's module list is out of step: missing {sorted(modules - listed)}, "
        f"no such module {sorted(listed - modules)}"
    )


def test_design_doc_names_every_module():
    text = (ROOT / "docs" / "DESIGN.md").read_text()
    modules = {p.stem for p in (ROOT / "src" / "alexnet").glob("*.py") if not p.stem.startswith("_")}
    missing = sorted(m for m in modules if f"`{m}`" not in text)
    assert not missing, f"docs/DESIGN.md does not say what these modules own: {missing}"


def _layers() -> list[list[str]]:
    """DESIGN.md's module table, top to bottom: the modules of each row."""
    text = (ROOT / "docs" / "DESIGN.md").read_text().split("## Modules")[1].split("## Data flow")[0]
    rows = [line for line in text.splitlines() if line.startswith("| `")]
    return [re.findall(r"`(\w+)`", row.split("|")[1]) for row in rows]


def test_modules_import_only_the_rows_above_them():
    """No import cycle: at module level a module imports only modules of earlier rows of
    DESIGN.md's table (imports inside functions, for optional dependencies, may look up)."""
    import ast

    rank = {m: i for i, row in enumerate(_layers()) for m in row}
    wrong = []
    for path in sorted((ROOT / "src" / "alexnet").glob("*.py")):
        if path.stem.startswith("_"):
            continue
        for node in ast.parse(path.read_text()).body:
            if isinstance(node, ast.ImportFrom) and node.level == 1:
                names = [node.module] if node.module else [a.name for a in node.names]
                wrong += [
                    f"{path.stem} imports {n}"
                    for n in names
                    if rank[n.split(".")[0]] >= rank[path.stem] and n.split(".")[0] != path.stem
                ]
    assert not wrong, "; ".join(wrong)


def test_no_function_is_longer_than_a_screen():
    """DESIGN.md's rule: a function a reader can follow on one screen (about 60 lines)."""
    import ast

    long = []
    for path in sorted((ROOT / "src" / "alexnet").glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                lines = node.end_lineno - node.lineno + 1
                if lines > 65:
                    long.append(f"{path.stem}.{node.name} ({lines} lines)")
    assert not long, "split these: " + ", ".join(long)
