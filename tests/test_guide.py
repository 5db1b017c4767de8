"""docs/deployment.md cannot drift unnoticed: every fenced block in it is marked `<!-- test: NAME -->` and used by a
test (tests/guide_commands.py), and the blocks no other test runs (the offline switches, a real run's file and
commands) are checked here against what the tested ones do."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

from guide_commands import DEPLOYMENT, block, blocks, commands
from hydra import compose, initialize_config_dir

from common.config import CONF_DIR
from server.deploy.systemd import OFFLINE

TESTS = Path(__file__).resolve().parent


def test_every_block_of_the_guide_is_marked_and_run_by_a_test():
    text = DEPLOYMENT.read_text()
    fences = len(re.findall(r"^```[a-z]+$", text, re.MULTILINE))
    assert fences == len(blocks()), "docs/deployment.md: a fenced block without <!-- test: NAME --> before it"
    sources = "\n".join(p.read_text() for p in TESTS.glob("test_*.py"))
    templates = re.findall(r'f"([a-z-]+)\{', sources)  # commands(f"systemd-{role}") with role in a parameter list

    def used(name: str) -> bool:
        return f'"{name}"' in sources or any(
            name.startswith(t) and f'"{name.removeprefix(t)}"' in sources for t in templates
        )

    unused = [name for name in blocks() if not used(name)]
    assert not unused, f"docs/deployment.md: blocks marked but run by no test: {unused}"


def test_the_offline_switches_are_the_ones_the_services_and_tests_set():
    exported = dict(cmd[1].split("=", 1) for cmd in commands("offline-env"))
    assert exported == OFFLINE


def test_a_real_runs_file_composes_with_dp_sgd_and_is_started_like_the_smoke_run():
    real = tomllib.loads(block("real-toml"))
    assert real["simulate"] is False
    with initialize_config_dir(str(CONF_DIR), version_base="1.3"):
        cfg = compose("federated", real["overrides"].split())
    assert cfg.privacy.mode == "dp_sgd"  # a real site refuses any other mode unless its site.toml lists it
    assert cfg.run_dir.startswith("/") and cfg.registry.startswith("/")
    [smoke] = commands("smoke-run", {"/srv/fracfl/smoke.toml": "FILE"})
    started, listed, logged = commands("real-run", {"/srv/fracfl/run-2026-12.toml": "FILE"})
    assert started == [*smoke, "--stream"]
    assert listed[:3] == ["flwr", "ls", smoke[3]] and logged[:2] == ["flwr", "log"] and logged[3] == smoke[3]
