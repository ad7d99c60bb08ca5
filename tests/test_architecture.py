"""Import directions (STYLE.md): base <- stages <- composers <- cli; click only in audit/cli;
the diffusion island imports only audit.errors; no import cycles anywhere (imports inside
functions and relative imports included); `audit --help` loads no heavy library."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "audit"
BASE = {
    "audit",
    "audit.errors",
    "audit.schema",
    "audit.workspace",
    "audit.images",
    "audit.progress",
    "audit.verify",  # the copy verifier: memorisation, duplicates and features share it
    "audit.threads",
    "audit.reports",
    "audit.stages",
    "audit.results",
    "audit.engines",
    "audit.credentials",
}
COMPOSERS = {
    "audit.pipeline",
    "audit.experiments",
    "audit.training",
    "audit.bench",
    "audit.sample",
    "audit.__main__",
}
# Composers in the order they may import each other: a composer imports only those before it.
COMPOSER_ORDER = ("audit.pipeline", "audit.experiments")


def module_name(path: Path) -> str:
    rel = path.relative_to(PACKAGE.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def is_module(name: str) -> bool:
    rel = Path(*name.split("."))
    return (PACKAGE.parent / rel).with_suffix(".py").exists() or (
        PACKAGE.parent / rel / "__init__.py"
    ).exists()


def audit_imports(path: Path, name: str | None = None) -> set[str]:
    """Every module `path` imports, at the top or inside functions, relative imports resolved.

    `from audit.checks import bias` imports the module audit.checks.bias; `from audit.reports
    import Section` imports audit.reports. A parent package imported only on the way to a
    submodule is not counted (Python loads it first whatever the importer does)."""
    name = name or module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text("utf-8"))):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # from . import x / from ..workspace import y
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module or ""
            subs = {f"{module}.{a.name}" for a in node.names if is_module(f"{module}.{a.name}")}
            found |= subs
            if len(subs) < len(node.names):
                found.add(module)
    return found


def owner(name: str) -> str:
    """The top-level unit a module belongs to: audit.optouts.robots -> audit.optouts."""
    parts = name.split(".")
    if len(parts) >= 3 and parts[1] in ("checks", "reports", "cli", "bench"):
        return ".".join(parts[:3])
    return ".".join(parts[:2])


def modules():
    return [(module_name(p), p) for p in sorted(PACKAGE.rglob("*.py"))]


def test_click_only_in_cli():
    offenders = [
        n
        for n, p in modules()
        if not n.startswith("audit.cli")
        and any(i == "click" or i.startswith("click.") for i in audit_imports(p))
    ]
    assert offenders == []


def test_base_layer_imports_only_base():
    for name, path in modules():
        if owner(name) in BASE or name in BASE:
            bad = {
                i
                for i in audit_imports(path)
                if i.startswith("audit.") and owner(i) not in BASE and i not in BASE
            }
            assert not bad, f"{name} (base layer) imports {bad}"


def test_stages_do_not_import_each_other():
    for name, path in modules():
        unit = owner(name)
        if (
            unit in BASE
            or name in BASE
            or unit in COMPOSERS
            or name.startswith(("audit.cli", "audit.bench"))
        ):
            continue
        for imp in audit_imports(path):
            if not imp.startswith("audit.") or imp in BASE or owner(imp) in BASE:
                continue
            # A check may render its own report page (audit.checks.bias -> audit.reports.bias).
            own_report = owner(imp) == "audit.reports." + unit.rsplit(".", 1)[-1]
            assert owner(imp) == unit or own_report, (
                f"{name} imports {imp}: stages talk through files, not imports"
            )


def test_diffusion_is_an_island():
    for name, path in modules():
        if name.startswith("audit.diffusion"):
            bad = {
                i
                for i in audit_imports(path)
                if i.startswith("audit.") and not i.startswith(("audit.diffusion", "audit.errors"))
            }
            assert not bad, f"{name} imports {bad}"


def test_help_is_fast_and_light():
    code = (
        "import sys, audit.cli; heavy = [m for m in ('torch', 'open_clip', 'faiss', 'sklearn', "
        "'matplotlib', 'pandas', 'duckdb') if m in sys.modules]; print(heavy)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_only_the_ray_engine_imports_ray():
    """Ray is an optional extra: the core runs without it (the benchmark starts a local Ray)."""
    for name, path in modules():
        if any(i == "ray" or i.startswith("ray.") for i in audit_imports(path)):
            assert name in ("audit.engines.ray", "audit.bench.engines"), f"{name} imports ray"


def graph() -> dict[str, set[str]]:
    names = {n for n, _ in modules()}
    return {n: {i for i in audit_imports(p, n) if i in names and i != n} for n, p in modules()}


def cycles(g: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in sorted(g[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                found.append(sorted(comp))

    for v in sorted(g):
        if v not in index:
            visit(v)
    return found


def test_no_import_cycles():
    assert cycles(graph()) == []


def test_cycle_finder_finds_a_cycle_and_resolves_relative_imports(tmp_path: Path):
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set()}) == []
    # audit/checks/x.py: `from . import duplicates` and `from ..workspace import Workspace`
    src = tmp_path / "x.py"
    src.write_text("from . import duplicates\nfrom ..workspace import Workspace\n")
    assert audit_imports(src, "audit.checks.x") == {"audit.checks.duplicates", "audit.workspace"}


def test_nothing_outside_the_cli_imports_it():
    for name, path in modules():
        if not name.startswith("audit.cli") and name != "audit.__main__":
            bad = {i for i in audit_imports(path) if i.startswith("audit.cli")}
            assert not bad, f"{name} imports {bad}"


def test_stages_do_not_import_composers():
    for name, path in modules():
        unit = owner(name)
        if unit in COMPOSERS or name.startswith(("audit.cli", "audit.bench")):
            continue
        bad = {i for i in audit_imports(path) if owner(i) in COMPOSERS}
        assert not bad, f"{name} imports the composer(s) {bad}: composers call stages, not back"


def test_composers_import_only_earlier_composers():
    for name, path in modules():
        unit = owner(name)
        if unit not in COMPOSER_ORDER:
            continue
        allowed = set(COMPOSER_ORDER[: COMPOSER_ORDER.index(unit) + 1])
        bad = {
            i for i in audit_imports(path) if owner(i) in COMPOSER_ORDER and owner(i) not in allowed
        }
        assert not bad, f"{name} imports {bad} (experiments call the pipeline, never the reverse)"
