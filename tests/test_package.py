"""What ships: the deployment zip built exactly as the deploy workflow builds it, and .funcignore.

The workflow's "Build the app package" step is read from .github/workflows/deploy.yml and run
in a clean copy of the tracked files (as CI's checkout is), so a change to either the workflow
or the tree that would ship test or bench code fails here.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import zipfile
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
PRODUCT_PACKAGES = ("core", "connections", "rotation", "leases", "inventory")
DEV_ONLY = ("tests/", "bench/", "scripts/", "docs/", "infra/", "node_modules/", ".local/", ".venv/")
# Helpers that exist for tests, benchmarks or `make run` only, wherever they would sit.
DEV_MODULES = ("azurite", "table_stats", "azure_fake", "harness", "conftest", "seed")


def _build_step() -> str:
    workflow = yaml.safe_load((ROOT / ".github" / "workflows" / "deploy.yml").read_text())
    for job in workflow["jobs"].values():
        for step in job.get("steps", []):
            if step.get("name") == "Build the app package":
                return str(step["run"])
    raise AssertionError("deploy.yml has no 'Build the app package' step")


@pytest.fixture(scope="module")
def package(tmp_path_factory: pytest.TempPathFactory) -> list[str]:
    """The names in broker.zip, built by the workflow's own script from a clean checkout."""
    checkout = tmp_path_factory.mktemp("checkout")
    tracked = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=ROOT,
        capture_output=True,
        check=True,
    ).stdout.split(b"\0")
    for name in filter(None, (t.decode() for t in tracked)):
        source = ROOT / name
        if source.is_file():
            (checkout / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, checkout / name)
    (checkout / "core" / "__pycache__").mkdir(exist_ok=True)
    (checkout / "core" / "__pycache__" / "x.cpython-311.pyc").write_bytes(b"")  # as a local run leaves
    subprocess.run(["bash", "-c", _build_step()], cwd=checkout, check=True, capture_output=True)
    with zipfile.ZipFile(checkout / "broker.zip") as archive:
        return [n for n in archive.namelist() if not n.endswith("/")]


def test_the_package_holds_the_app_and_every_product_package(package: list[str]) -> None:
    assert {"function_app.py", "host.json", "requirements.txt"} <= set(package)
    for name in PRODUCT_PACKAGES:
        assert f"{name}/__init__.py" in package, name
    tracked_product = [
        str(p.relative_to(ROOT))
        for name in PRODUCT_PACKAGES
        for p in (ROOT / name).rglob("*.py")
        if "__pycache__" not in p.parts
    ]
    assert set(tracked_product) <= set(package)


def test_the_package_holds_no_test_bench_or_dev_helper(package: list[str]) -> None:
    assert not [n for n in package if n.startswith(DEV_ONLY)]
    assert not [n for n in package if any(Path(n).stem.startswith(m) for m in DEV_MODULES)]
    assert not [n for n in package if "__pycache__" in n or n.endswith(".pyc")]
    assert not [n for n in package if n.startswith(".")]


def test_product_code_never_imports_dev_helpers() -> None:
    """Shipped code must run without tests/ or bench/ (they are not in the package)."""
    dev_import = re.compile(r"^\s*(from|import)\s+(tests|bench|scripts)\b", re.MULTILINE)
    files = [ROOT / "function_app.py", *(p for name in PRODUCT_PACKAGES for p in (ROOT / name).rglob("*.py"))]
    assert len(files) > 20
    assert not [str(p.relative_to(ROOT)) for p in files if dev_import.search(p.read_text())]


def test_funcignore_keeps_dev_material_out_of_core_tools_and_azd_packages() -> None:
    ignored = {line.strip() for line in (ROOT / ".funcignore").read_text().splitlines()}
    for entry in (*DEV_ONLY, "*.md", "requirements-dev.txt", "Makefile", "package.json"):
        assert entry in ignored, f".funcignore should list {entry}"
