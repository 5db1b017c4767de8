"""systemd units for a SuperLink (coordinator) and a SuperNode (site), with this environment's absolute paths.

Restart policy, from Flower 1.42's behaviour (docs/deployment.md, "Services"):
- A SuperNode restarted within about a minute of a crash is refused by the SuperLink and exits; `fracfl site supernode`
  retries that itself, so systemd only restarts what ended otherwise. `Restart=always` also brings a SuperNode back
  after it ended on its own (its key unregistered, a SuperLink restarted without `--database`) once the coordinator
  registers it again; a refused SuperNode keeps its wrapper busy for minutes, so the start limit counts only fast
  failures (a wrong flag, a missing file).
- Stopping: the SuperNode unit sends SIGTERM to the wrapper alone (`KillMode=mixed`), which stops the SuperNode
  gracefully (a restart is then accepted at once) and ends everything it started; systemd SIGKILLs what is left after
  `TimeoutStopSec`. The SuperLink unit signals its whole control group (ServerApps included).
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

from common.errors import ConfigError

OFFLINE = {"FLWR_TELEMETRY_ENABLED": "0", "FLWR_DISABLE_UPDATE_CHECK": "1"}
ROLES = {
    "superlink": ("fracfl SuperLink (Flower; coordinator)", ["flower-superlink"], "on-failure", "control-group"),
    "supernode": ("fracfl SuperNode (Flower; hospital site)", ["fracfl", "site", "supernode", "--"], "always", "mixed"),
    "control-proxy": (
        "fracfl control proxy (the SuperLink's public port; coordinator)",
        ["fracfl", "deploy", "control-proxy"],
        "on-failure",
        "control-group",
    ),
}
_PLAIN = re.compile(r"[A-Za-z0-9_@+=:,./-]+")


def _quote(arg: str) -> str:
    """One argument of a systemd command line: `%` and `$` are systemd's specifiers and variables, not the program's."""
    arg = arg.replace("%", "%%").replace("$", "$$")
    if _PLAIN.fullmatch(arg):
        return arg
    return '"' + arg.replace("\\", "\\\\").replace('"', '\\"') + '"'


def unit_text(role: str, args: list[str], user: str, workdir: Path, bin_dir: Path, app_gate: Path | None = None) -> str:
    """The unit file for `role` running its program with `args` (the flags the guide gives it); a SuperNode's
    `app_gate` is the site folder whose gate it runs (`fracfl site supernode --app-gate`)."""
    description, program, restart, kill_mode = ROLES[role]
    if app_gate is not None:
        if role != "supernode":
            raise ConfigError("--app-gate: only a SuperNode runs app bundles")
        program = [*program[:-1], "--app-gate", str(app_gate), program[-1]]
    exe = bin_dir / program[0]
    if not exe.is_file():
        raise ConfigError(f"{exe} does not exist: run this command with the environment the service will use")
    if not workdir.is_absolute():
        raise ConfigError(f"--workdir {workdir}: give an absolute path")
    env = {"PATH": f"{bin_dir}:/usr/local/bin:/usr/bin:/bin", "FLWR_HOME": str(workdir / ".flwr"), **OFFLINE}
    command = " ".join(_quote(a) for a in [str(exe), *program[1:], *args])
    return "\n".join(
        [
            "[Unit]",
            f"Description={description}",
            "After=network-online.target",
            "Wants=network-online.target",
            "StartLimitIntervalSec=600",
            "StartLimitBurst=5",
            "",
            "[Service]",
            "Type=simple",
            f"User={user}",
            f"WorkingDirectory={_quote(str(workdir))}",
            *(f"Environment={_quote(f'{k}={v}')}" for k, v in env.items()),
            f"ExecStart={command}",
            f"Restart={restart}",
            "RestartSec=15",
            f"KillMode={kill_mode}",
            "TimeoutStopSec=60",
            "",
            "[Install]",
            "WantedBy=multi-user.target",
            "",
        ]
    )


def write_unit(role: str, out: Path, args: list[str], user: str, workdir: Path, app_gate: Path | None = None) -> Path:
    """Write `fracfl-<role>.service` into `out` (never over an existing file); programs from this environment."""
    text = unit_text(role, args, user, workdir, Path(sys.executable).parent, app_gate)
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"fracfl-{role}.service"
    try:
        with path.open("x") as f:
            f.write(text)
    except FileExistsError:
        raise ConfigError(f"{path} exists; remove it or choose another --out folder") from None
    return path
