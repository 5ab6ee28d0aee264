"""Every script and config file a README or doc names exists (a renamed tool must not leave dead commands)."""

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
NAMED = re.compile(r"(?<![\w/.])((?:tools|configs|experiments)/[a-z0-9_./-]+\.(?:py|yaml))")


def _documents():
    yield ROOT / "README.md"
    yield from (ROOT / "docs").glob("*.md")
    yield from (ROOT / "src").rglob("README.md")
    yield from (ROOT / "experiments").rglob("README.md")


def test_every_named_script_and_config_exists():
    missing = [
        f"{document.relative_to(ROOT)}: {name}"
        for document in _documents()
        for name in sorted(set(NAMED.findall(document.read_text())))
        if not (ROOT / name).is_file()
    ]
    assert not missing, "\n".join(missing)
