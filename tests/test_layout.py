"""The house rules of docs/design.md ("The house"), read from the code's own imports."""
import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
STAGES = {"read", "normalize", "embed", "block", "score", "chaining", "cluster", "ids", "explain", "state"}
SHARED = {"records", "vectors", "errors", "metrics", "logs", "devices", "paths", "write", "commit", "sources",
          "feeding", "inference", "joins", "coders", "int8", "graphs", "garbage", "openmp"}


def project_imports(path: Path) -> set[str]:
    """The project's modules a file imports, as dotted names."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module:
            names = [node.module] + [f"{node.module}.{alias.name}" for alias in node.names]
        elif isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        else:
            continue
        found |= {n for n in names if n.split(".")[0] in ("transforms", "pipelines", "tests", "benchmarks")}
    return found


def _transforms_imported(path: Path) -> set[str]:
    return {name.split(".")[1] for name in project_imports(path) if name.startswith("transforms.")
            and (ROOT / "transforms" / f"{name.split('.')[1]}.py").exists()}


def test_every_transforms_module_is_a_stage_or_shared():
    modules = {p.stem for p in (ROOT / "transforms").glob("*.py")} - {"__init__"}
    assert modules == STAGES | SHARED


def test_no_stage_imports_another_stage_and_shared_code_imports_no_stage():
    for path in (ROOT / "transforms").glob("*.py"):
        imported = _transforms_imported(path) - {path.stem}
        assert not imported & STAGES, (path.name, imported & STAGES)


def test_transforms_never_import_the_assembly_tests_or_benchmarks():
    for path in (ROOT / "transforms").glob("*.py"):
        assert not {n for n in project_imports(path) if not n.startswith("transforms")}, path.name


def test_the_package_and_benchmarks_never_import_tests():
    for folder in ("transforms", "pipelines", "benchmarks"):
        for path in (ROOT / folder).glob("*.py"):
            assert not {n for n in project_imports(path) if n.startswith("tests")}, path


def test_test_modules_share_helpers_not_each_other():
    for path in (ROOT / "tests").glob("test_*.py"):
        assert not {n for n in project_imports(path) if n.startswith("tests.test_")}, path.name


def test_no_step_joins_with_cogroupbykey():
    """Beam Python's CoGroupByKey lists each key's values: a hot key becomes one huge element. Joins go
    through `transforms.joins.JoinByKey`, which walks them (docs/design.md, "Bounded memory")."""
    for folder in ("transforms", "pipelines"):
        for path in (ROOT / folder).glob("*.py"):
            used = {node.attr for node in ast.walk(ast.parse(path.read_text())) if isinstance(node, ast.Attribute)}
            used |= {node.id for node in ast.walk(ast.parse(path.read_text())) if isinstance(node, ast.Name)}
            assert "CoGroupByKey" not in used, path
