"""Removes from an installed layer what no function runs, and reports what is left (before bytecode).

Usage: python prune.py LAYER_DIR   (LAYER_DIR holds python/ and model/, as /opt does at run time)
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

# Installed only as dependencies of code paths we never run (tokenizers' hub download, onnxruntime's tools).
UNUSED_DISTRIBUTIONS = (
    "huggingface_hub",
    "hf_xet",
    "fsspec",
    "filelock",
    "tqdm",
    "click",
    "pyyaml",
    "httpx2",
    "httpcore2",
    "h11",
    "truststore",
    "protobuf",
    "flatbuffers",
)

# Build-time tools, test suites, headers and offline converters inside packages we do run.
UNUSED_PATHS = (
    "bin",
    "numpy/f2py",
    "numpy/_core/include",
    "numpy/_pyinstaller",
    "numpy/testing/_private/extbuild.py",
    "onnxruntime/tools",
    "onnxruntime/transformers",
    "onnxruntime/quantization",
    "onnxruntime/datasets",
    "onnxruntime/backend",
    # Pydantic's v1 compatibility package. No function has a v1 model; FastAPI imports it (45 ms of
    # every cold start) only to reject v1 models, and treats its absence as "no v1 model here".
    "pydantic/v1",
)
UNUSED_DIR_NAMES = ("tests", "__pycache__")
# Type stubs, and NumPy's extension modules that only its own test suite loads.
UNUSED_GLOBS = (
    "**/*.pyi",
    "numpy/_core/_simd.*.so",
    "numpy/_core/_rational_tests.*.so",
    "numpy/_core/_umath_tests.*.so",
    "numpy/_core/_operand_flag_tests.*.so",
    "numpy/_core/_struct_ufunc_tests.*.so",
)


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    elif path.exists() or path.is_symlink():
        path.unlink()


def remove_distribution(site: Path, name: str) -> None:
    """Deletes every file a distribution's RECORD lists, then its now-empty folders."""
    for info in site.glob("*.dist-info"):
        if info.name.split("-")[0].lower().replace("-", "_") != name:
            continue
        for line in (info / "RECORD").read_text().splitlines():
            relative = line.rsplit(",", 2)[0]
            _remove(site / relative)
        _remove(info)
    # Deepest first, so a package folder goes once its subfolders have.
    for folder in sorted(
        (p for p in site.rglob("*") if p.is_dir()), key=lambda p: len(p.parts), reverse=True
    ):
        if not any(folder.iterdir()):
            folder.rmdir()


def megabytes(path: Path) -> float:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file() and not f.is_symlink()) / 1e6


def strip_rust_extensions(site: Path) -> None:
    """Drops the symbol tables maturin-built wheels ship (tokenizers, cryptography: 6 MB).

    Their extensions link no bundled library, so no auditwheel-patched ELF (which strip can break) is touched.
    """
    strip = shutil.which("strip")
    if strip is None:
        return
    for wheel in site.glob("*.dist-info/WHEEL"):
        if "Generator: maturin" not in wheel.read_text():
            continue
        for line in (wheel.parent / "RECORD").read_text().splitlines():
            relative = line.rsplit(",", 2)[0]
            if relative.endswith(".so"):
                subprocess.run([strip, "--strip-unneeded", str(site / relative)], check=True)


def prune(layer: Path) -> None:
    site = layer / "python"
    for name in UNUSED_DISTRIBUTIONS:
        remove_distribution(site, name)
    for relative in UNUSED_PATHS:
        _remove(site / relative)
    for name in UNUSED_DIR_NAMES:
        for folder in sorted(site.rglob(name), reverse=True):
            _remove(folder)
    for pattern in UNUSED_GLOBS:
        for path in site.glob(pattern):
            _remove(path)
    strip_rust_extensions(site)


def main() -> int:
    layer = Path(sys.argv[1])
    prune(layer)
    for part in sorted(p for p in layer.iterdir() if p.is_dir()):
        print(f"{part.name}: {megabytes(part):.1f} MB unzipped")
    return 0


if __name__ == "__main__":
    sys.exit(main())
