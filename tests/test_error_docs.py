"""Every problem `type` the code can answer with is documented in docs/errors.md."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("core", "connections", "rotation", "leases")
CODE = re.compile(r'\bcode_?\s*=\s*(?:\d+,\s*"[^"]*",\s*)?"([a-z][a-z-]+)"')
HTTP_CODES = {"not-found", "method-not-allowed", "unauthorized", "forbidden", "http-error"}


def codes_in_source() -> set[str]:
    found: set[str] = set()
    for package in PACKAGES:
        for source in (ROOT / package).rglob("*.py"):
            found.update(CODE.findall(source.read_text()))
    return found | HTTP_CODES


def test_every_problem_type_has_an_anchor() -> None:
    anchors = set(re.findall(r'<a id="([a-z-]+)"></a>', (ROOT / "docs" / "errors.md").read_text()))
    codes = codes_in_source()
    assert len(codes) > 20  # the scan found the codes
    assert codes - anchors == set(), "document these in docs/errors.md"
