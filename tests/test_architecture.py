"""The layers of ARCHITECTURE.md hold: stages on top, one-call scripts, short functions."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
PACKAGE = REPO / "ais"


def _modules() -> list[Path]:
    return sorted(PACKAGE.rglob("*.py"))


def _imported(tree: ast.AST) -> set[str]:
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
    return names


def test_no_library_module_imports_the_stages():
    offenders = []
    for path in _modules():
        if path.parts[-2] == "stages" or path.name in ("cli.py", "__main__.py"):  # stages and entry points
            continue
        imported = _imported(ast.parse(path.read_text()))
        if any(name == "ais.stages" or name.startswith("ais.stages.") for name in imported):
            offenders.append(str(path.relative_to(REPO)))
    assert offenders == []


@pytest.mark.parametrize("script", sorted((REPO / "workflow_scripts").glob("*.py")), ids=lambda p: p.name)
def test_every_workflow_script_is_one_call_of_its_stage(script: Path):
    tree = ast.parse(script.read_text())
    body = [n for n in tree.body if not isinstance(n, (ast.Import, ast.ImportFrom))
            and not (isinstance(n, ast.Expr) and isinstance(n.value, ast.Constant))]  # docstring
    assert len(body) == 1 and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Call)
    call = body[0].value
    assert ast.unparse(call) == f"{script.stem}.main(snakemake)"
    assert (PACKAGE / "stages" / script.name).is_file()


def _code_lines(fn: ast.FunctionDef | ast.AsyncFunctionDef) -> int:
    body = fn.body
    if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant):
        body = body[1:]
    return body[-1].end_lineno - body[0].lineno + 1 if body else 0


def test_no_function_over_sixty_code_lines():
    long = []
    for path in _modules():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and _code_lines(node) > 60:
                long.append(f"{path.relative_to(REPO)}:{node.name} ({_code_lines(node)} lines)")
    assert long == []


def test_the_schema_is_package_data_and_rules_leave_the_import_path_alone():
    from ais.config import CONFIG_SCHEMA, load_schema

    assert CONFIG_SCHEMA.is_file() and load_schema()["properties"]["model"]
    common = (REPO / "rules" / "common.smk").read_text()
    assert "sys.path" not in common and "PYTHONPATH" not in common
