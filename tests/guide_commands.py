"""The commands of a docs/ guide exactly as written, for tests that follow the guide instead of keeping their own copies.

In the guide, an HTML comment `<!-- test: NAME -->` (invisible when rendered) right before a fenced block marks a block
a test runs. A test replaces only the guide's example values (hosts, ports, paths, names) with its own; every value it
replaces must be in the block, so an edited example fails the test instead of running against /etc/... . To test
another block: mark it, then call `block` (a config file's text) or `commands` (argv lists) with its name.
"""

from __future__ import annotations

import re
import shlex
from collections.abc import Mapping
from pathlib import Path

DEPLOYMENT = Path(__file__).resolve().parents[1] / "docs" / "deployment.md"
_MARKED = re.compile(r"^<!-- test: (\S+) -->\n```[a-z]*\n(.*?)^```$", re.MULTILINE | re.DOTALL)


def blocks(doc: Path = DEPLOYMENT) -> dict[str, str]:
    """Every marked block of `doc` by name."""
    found: dict[str, str] = {}
    for name, text in _MARKED.findall(doc.read_text()):
        assert name not in found, f"{doc.name}: two blocks marked {name!r}"
        found[name] = text
    return found


def block(name: str, subst: Mapping[str, str] = {}, doc: Path = DEPLOYMENT) -> str:
    """The text of block `name`, each key of `subst` replaced by its value (in one pass: values are not re-read)."""
    text = blocks(doc).get(name)
    assert text is not None, f"{doc.name} has no block marked <!-- test: {name} -->"
    missing = [k for k in subst if k not in text]
    assert not missing, f"{doc.name}, block {name!r}: the example values {missing} are gone; update the test"
    if not subst:
        return text
    pattern = "|".join(re.escape(k) for k in sorted(subst, key=len, reverse=True))
    return re.sub(pattern, lambda m: subst[m.group(0)], text)


def commands(name: str, subst: Mapping[str, str] = {}, doc: Path = DEPLOYMENT) -> list[list[str]]:
    """The shell commands of block `name` as argv lists: lines joined at a trailing backslash, comments dropped."""
    text = block(name, subst, doc).replace("\\\n", " ")
    return [argv for line in text.splitlines() if (argv := shlex.split(line, comments=True))]
