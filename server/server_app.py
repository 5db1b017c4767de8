"""fracfl's Flower ServerApp: a thin edge that loads the run's job and hands the Grid to `server.run`."""

from __future__ import annotations

import os

from flwr.app import Context
from flwr.serverapp import Grid, ServerApp

from server.job import load_job
from server.run import run_federation

app = ServerApp()


@app.main()
def main(grid: Grid, context: Context) -> None:
    job, manifest = load_job(dict(context.run_config), os.environ.get("FRACFL_JOB"), grid)
    run_federation(grid, job, sites_manifest=manifest)
