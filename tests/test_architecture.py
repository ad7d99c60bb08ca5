"""Import directions (STYLE.md): base <- stages <- composers <- cli; click only in audit/cli;
the diffusion island imports only audit.errors; `audit --help` loads no heavy library."""

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
    "audit.reports",
    "audit.verify",  # the copy verifier: memorisation, duplicates and features share it
}
COMPOSERS = {
    "audit.pipeline",
    "audit.experiments",
    "audit.training",
    "audit.bench",
    "audit.sample",
    "audit.__main__",
}


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


def audit_imports(path: Path) -> set[str]:
    found = set()
    for node in ast.walk(ast.parse(path.read_text("utf-8"))):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
            # `from audit.checks import bias` imports a module; `from audit.reports import Section` does not.
            found |= {
                f"{node.module}.{a.name}"
                for a in node.names
                if is_module(f"{node.module}.{a.name}")
            }
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
