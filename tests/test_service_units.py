"""The guide's systemd units (`fracfl deploy systemd`) and what the SuperNode wrapper assumes of Flower; the wrapper
itself runs in tests/test_deployment.py, on a real deployment."""

from __future__ import annotations

import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from guide_commands import DEPLOYMENT, commands

from common.cli import main


def _unit(path: Path) -> dict[str, list[str]]:
    """`Key=value` lines of a unit file, all values of a repeated key in order."""
    keys: dict[str, list[str]] = {}
    for line in path.read_text().splitlines():
        if "=" in line and not line.startswith(("#", "[")):
            key, value = line.split("=", 1)
            keys.setdefault(key, []).append(value)
    return keys


@pytest.mark.parametrize(
    ("role", "program", "restart", "kill_mode"),
    [
        ("superlink", ["flower-superlink"], "on-failure", "control-group"),
        ("supernode", ["fracfl", "site", "supernode", "--app-gate", "/var/lib/fracfl/site", "--"], "always", "mixed"),
        ("control-proxy", ["fracfl", "deploy", "control-proxy"], "on-failure", "control-group"),
    ],
)
def test_the_guides_units_run_the_guides_commands(tmp_path, monkeypatch, capsys, role, program, restart, kill_mode):
    monkeypatch.chdir(tmp_path)
    [cmd] = commands(f"systemd-{role}")
    assert main(cmd[1:]) == 0
    path = tmp_path / f"fracfl-{role}.service"
    assert f"systemctl enable --now fracfl-{role}" in capsys.readouterr().out
    unit = _unit(path)
    bin_dir = Path(sys.executable).parent
    [guide_cmd] = commands(role)  # the guide's SuperLink, control proxy (section 2) or SuperNode (section 4) command
    assert guide_cmd[: len(program)] == program
    flags = guide_cmd[len(program) :]
    assert cmd[cmd.index("--") + 1 :] == flags  # the unit gets the same flags
    exec_start = shlex.split(unit["ExecStart"][0])
    assert exec_start == [str(bin_dir / program[0]), *program[1:], *flags]
    assert Path(exec_start[0]).is_file()
    env = dict(e.strip('"').split("=", 1) for e in unit["Environment"])
    assert env["PATH"].split(":")[0] == str(bin_dir)  # the SuperLink/SuperNode start flower-superexec etc. from PATH
    assert env["FLWR_TELEMETRY_ENABLED"] == "0" and env["FLWR_DISABLE_UPDATE_CHECK"] == "1"
    assert (unit["Restart"], unit["KillMode"], unit["User"]) == ([restart], [kill_mode], ["fracfl"])
    if shutil.which("systemd-analyze"):
        done = subprocess.run(["systemd-analyze", "verify", str(path)], capture_output=True, text=True, timeout=60)
        assert (done.returncode, done.stdout + done.stderr) == (0, "")
    assert main(cmd[1:]) == 2  # never overwritten
    assert "exists" in capsys.readouterr().err


def test_unit_arguments_are_quoted_for_systemd(tmp_path):
    from server.deploy.systemd import unit_text

    args = ["--node-config", "site-name='a b' data-dir=\"/data/x\\y\"", "100%", "$HOME"]
    text = unit_text("supernode", args, "fracfl", tmp_path, Path(sys.executable).parent)
    [line] = [x for x in text.splitlines() if x.startswith("ExecStart=")]
    assert "100%%" in line and "$$HOME" in line  # systemd's specifiers and variables, escaped
    assert shlex.split(line.removeprefix("ExecStart="))[-4:-2] == args[:2]


def test_the_wrapper_refuses_bad_arguments(capsys, tmp_path):
    assert main(["site", "supernode"]) == 2
    assert "after --" in capsys.readouterr().err
    assert main(["site", "supernode", "--app-gate", str(tmp_path), "--", "--insecure"]) == 2  # fails closed
    assert f"run `fracfl site app-gate {tmp_path}` first" in capsys.readouterr().err
    assert main(["site", "supernode", "--retry-for", "-1", "--", "--insecure"]) == 2
    assert "--retry-for" in capsys.readouterr().err


def test_the_guide_states_flowers_session_expiry():
    """The wrapper's and the guide's 60 s are Flower 1.42's heartbeat interval x patience: a Flower upgrade that
    changes them fails here."""
    from flwr.common.constant import HEARTBEAT_DEFAULT_INTERVAL, HEARTBEAT_PATIENCE

    from client.supervise import REFUSED, STALE_S

    assert (HEARTBEAT_DEFAULT_INTERVAL, HEARTBEAT_PATIENCE, STALE_S) == (30, 2, 60)
    guide = " ".join(DEPLOYMENT.read_text().split())
    assert "until 60 s after its last heartbeat or activation (2 x its 30 s heartbeat interval" in guide
    assert REFUSED.decode() in guide
