"""The house rules a newcomer relies on, checked: modules short enough to read in one sitting, the
domain packages independent of the web layer, and no Rust modules that import each other."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from tests.conftest import REPO_ROOT

NATIVE = REPO_ROOT / "layers" / "native"
PACKAGE = NATIVE / "python" / "aiinfra"
RUST = NATIVE / "src"
MAX_LINES = 500


def _sources() -> list[Path]:
    return sorted([*PACKAGE.rglob("*.py"), *PACKAGE.rglob("*.pyi"), *RUST.rglob("*.rs")])


@pytest.mark.parametrize("path", _sources(), ids=lambda path: str(path.relative_to(NATIVE)))
def test_no_module_is_longer_than_one_sitting(path: Path) -> None:
    assert len(path.read_text().splitlines()) <= MAX_LINES


@pytest.mark.parametrize("package", ["vectors", "memory", "embedding"])
def test_a_domain_package_does_not_import_the_web_layer(package: str) -> None:
    importers = [
        path.name
        for path in (PACKAGE / package).rglob("*.py")
        if re.search(r"^\s*(from|import) aiinfra\.api\b", path.read_text(), flags=re.MULTILINE)
    ]
    assert importers == []


def _rust_module(path: Path) -> str:
    """`batch` for src/batch.rs, `hnsw` for src/hnsw.rs and for anything under src/hnsw/."""
    return path.relative_to(RUST).parts[0].removesuffix(".rs")


def _rust_imports() -> dict[str, set[str]]:
    """Each top-level Rust module, and the other top-level modules it names through `crate::`."""
    imports: dict[str, set[str]] = {}
    for path in RUST.rglob("*.rs"):
        module = _rust_module(path)
        named = set(re.findall(r"\bcrate::(\w+)", path.read_text()))
        imports.setdefault(module, set()).update(named - {module})
    return imports


def circles(imports: dict[str, set[str]]) -> list[str]:
    """The modules from which `imports` lead back to themselves."""

    def reaches(start: str, target: str, seen: set[str]) -> bool:
        for module in imports.get(start, set()) - seen:
            if module == target or reaches(module, target, seen | {module}):
                return True
        return False

    return sorted(module for module in imports if reaches(module, module, set()))


def test_no_rust_modules_import_each_other() -> None:
    imports = _rust_imports()
    assert any(imports.values()), "no module names another through crate::: nothing was read"
    assert circles(imports) == []


def test_the_circle_check_finds_a_circle() -> None:
    assert circles({"envelope": {"batch"}, "batch": {"resp", "envelope"}, "resp": set()}) == [
        "batch",
        "envelope",
    ]
