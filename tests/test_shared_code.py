"""The import rules between the three programs and their shared package, read from the source (ast):
training never imports the backend, the backend never imports torch or training, and mtp_common (used by
both) imports none of them."""
import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
FORBIDDEN = {"training": {"backend"}, "backend": {"torch", "training"}, "mtp_common": {"backend", "training", "torch"}}


def imported_top_levels(path: Path) -> set:
    names = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.split(".")[0])
    return names


@pytest.mark.parametrize("package", sorted(FORBIDDEN))
def test_programs_keep_their_import_rules(package):
    broken = {str(p.relative_to(REPO)): sorted(imported_top_levels(p) & FORBIDDEN[package])
              for p in sorted((REPO / package).rglob("*.py"))}
    assert not {k: v for k, v in broken.items() if v}
    uses_shared = any("mtp_common" in imported_top_levels(p) for p in (REPO / package).rglob("*.py"))
    assert uses_shared or package == "mtp_common"
