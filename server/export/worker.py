"""`python -m server.export.worker`: one version's exports in their own process (started by `BackgroundExports`).

A separate process can be stopped when it overruns its time limit, cannot take the server down if the converter
crashes, and returns all its memory when it ends. It writes the card itself; its exit code says whether it got
that far.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m server.export.worker")
    p.add_argument("--registry", required=True)
    p.add_argument("--version", required=True)
    p.add_argument("--config", required=True, help="ExportConfig as JSON")
    p.add_argument("--eval", default="{}", help="EvalConfig as JSON")
    p.add_argument("--val-data", default=None)
    a = p.parse_args(argv)
    if hasattr(os, "nice"):
        os.nice(10)  # the rounds go first: exports take whatever CPU they leave
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")

    import torch

    from common.config import EvalConfig
    from server.export.config import ExportConfig
    from server.export.version import export_version
    from server.registry import Registry

    cfg = ExportConfig(**json.loads(a.config))
    torch.set_num_threads(max(1, cfg.threads))
    entries = export_version(
        Registry(a.registry),
        a.version,
        cfg,
        a.val_data,
        EvalConfig(**json.loads(a.eval)),
        report=lambda e: logging.info("%s %s: %s", a.version, e["variant"], e["status"]),
    )
    logging.info("%s: card updated with %d export entries", a.version, len(entries))
    return 0


if __name__ == "__main__":
    sys.exit(main())
