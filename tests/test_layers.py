"""The layers of docs/DESIGN.md §2 hold: no module imports from a higher layer or from another package of its own
layer, and every module under jobs/ is named in the layout table."""

from __future__ import annotations

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DESIGN = (ROOT / "docs" / "DESIGN.md").read_text()
PACKAGES = ("visor_model", "pipelines", "jobs")


def layers() -> dict[str, int]:
    """Package → layer, from the rows ``| N | `package`, … |`` of DESIGN's import-rule table."""
    found = {}
    for number, packages in re.findall(r"^\| (\d+) \| (.*) \|$", DESIGN, re.M):
        for package in re.findall(r"^`([\w.]+)`|, `([\w.]+)`", packages):
            found["".join(package)] = int(number)
    return found


def package_of(module: str, known: dict[str, int]) -> str:
    """The layered package a dotted module name belongs to (its longest prefix in ``known``)."""
    parts = module.split(".")
    return next(".".join(parts[:n]) for n in range(len(parts), 0, -1) if ".".join(parts[:n]) in known)


def imports(path: Path) -> set[str]:
    """Every absolute import of a project module in ``path``, at module level or inside a function."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)  # `from jobs import cli`
    return {name for name in names if name.split(".")[0] in PACKAGES}


def modules() -> list[tuple[str, Path]]:
    return [(".".join(path.relative_to(ROOT).with_suffix("").parts), path)
            for package in PACKAGES for path in sorted((ROOT / package).rglob("*.py"))]


def test_the_layer_table_names_every_package() -> None:
    known = layers()
    assert known["visor_model"] < known["pipelines"] < known["jobs"] < known["jobs.registry"] < known["jobs.cli"]
    packages = {"jobs." + p.name for p in (ROOT / "jobs").iterdir() if (p / "__init__.py").is_file()}
    assert packages - set(known) == set()


def test_no_module_imports_from_a_higher_layer_or_a_sibling_package() -> None:
    known = layers()
    wrong = []
    for module, path in modules():
        own = package_of(module, known)
        for name in imports(path):
            other = package_of(name, known)
            if other != own and known[other] >= known[own]:
                wrong.append(f"{module} (layer {known[own]}) imports {name} (layer {known[other]})")
    assert wrong == []


def test_every_module_under_jobs_is_named_in_the_layout() -> None:
    rows = dict(re.findall(r"^\| `(jobs/[\w./]*)` \| (.*?) \|$", DESIGN, re.M))
    missing = []
    for path in sorted((ROOT / "jobs").rglob("*.py")):
        relative = path.relative_to(ROOT)
        if path.name in ("__init__.py", "__main__.py"):
            continue
        if relative.parent == Path("jobs"):
            named = str(relative) in rows
        else:
            named = f"`{path.name}`" in rows.get(f"{relative.parent}/", "")
        if not named:
            missing.append(str(relative))
    assert missing == []
