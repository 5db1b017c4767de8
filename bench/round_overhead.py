"""Per-round overhead of fracfl's federated loop vs plain Flower FedAvg, same model size, side by side.

Both run on Flower's simulation engine (Ray) with 3 sites and YOLOv7-tiny's state (8.1 M parameters); local training
is a no-op in both. Plain Flower's clients do what its PyTorch quickstart does around the training call (arrays into
the model, the model's state into the reply). fracfl: `train.local_epochs=0`, no site or server evaluation, no edge
exports (built in separate low-priority processes, see docs/export.md); its round still checks the site's privacy
settings and data, screens every update, aggregates buffers apart, writes its checkpoint, publishes to the registry
and appends records: that is the overhead measured. Per-round time = the median time between consecutive round ends within one run
(plain Flower: its `evaluate_fn` hook, called after each round; fracfl: the server's end-of-round log line), round 1
(start-up) left out, so neither start-up nor a load spike on a shared machine counts; plain and fracfl runs
alternate, and the medians of `--repeats` pairs are compared.

    .venv/bin/python bench/round_overhead.py [--rounds 20] [--repeats 5]
"""

from __future__ import annotations

import argparse
import json
import logging
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import REPO, emit, machine


def plain_flower(rounds: int) -> list[float]:
    """Flower's own FedAvg with `Strategy.start`; each client does what Flower's PyTorch quickstart does around
    its training call (received arrays into the model, the model's state back into the reply), training a no-op."""
    from flwr.app import ArrayRecord, Context, Message, MetricRecord, RecordDict
    from flwr.clientapp import ClientApp
    from flwr.serverapp import Grid, ServerApp
    from flwr.serverapp.strategy import FedAvg
    from flwr.simulation import run_simulation

    from common.nn.model import ModelSpec, build_model, reusable_model

    client, server = ClientApp(), ServerApp()

    @client.train()
    def train(msg: Message, context: Context) -> Message:
        model = reusable_model(ModelSpec())  # built once per worker (a model in the closure would be pickled per call)
        model.load_state_dict(msg.content["arrays"].to_torch_state_dict())
        reply = {"arrays": ArrayRecord(model.state_dict()), "metrics": MetricRecord({"num-examples": 10})}
        return Message(RecordDict(reply), reply_to=msg)

    @server.main()
    def main(grid: Grid, context: Context) -> None:
        state = build_model(ModelSpec()).state_dict()
        FedAvg(fraction_evaluate=0.0, min_train_nodes=3, min_available_nodes=3).start(
            grid=grid,
            initial_arrays=ArrayRecord(state),
            num_rounds=rounds,
            evaluate_fn=lambda rnd, arrays: ends.append(time.perf_counter()) and None,
        )  # called after each round

    ends: list[float] = []

    run_simulation(
        server_app=server,
        client_app=client,
        num_supernodes=3,
        backend_config={
            "client_resources": {"num_cpus": 1, "num_gpus": 0.0},
            "init_args": {"include_dashboard": False},
        },
    )
    return ends[1:]  # the first call is round 0 (before any round)


class _RoundEnds(logging.Handler):
    """The time of each 'round k/N: ... for sites and aggregation' line the server logs as a round ends."""

    def __init__(self) -> None:
        super().__init__()
        self.ends: list[float] = []

    def emit(self, record: logging.LogRecord) -> None:
        if "for sites and aggregation" in record.msg:
            self.ends.append(time.perf_counter())


def fracfl(rounds: int, data: str, out: str) -> list[float]:
    from common.cli import main

    ends = _RoundEnds()
    logging.getLogger("fracfl.server").addHandler(ends)
    code = main(
        [
            "simulate",
            "model=yolov7_tiny",
            "partition=iid",
            f"partition.source={data}",
            "federation.sites=3",
            "federation.min_sites=3",
            f"federation.rounds={rounds}",
            "federation.fraction_evaluate=0",
            "federation.server_eval=false",
            "train.local_epochs=0",
            "tracking=disabled",
            "progress=false",
            "export.enabled=false",
            f"run_dir={out}",
        ]
    )
    if code:
        raise SystemExit(code)
    return ends.ends


def round_time(args: list[str]) -> tuple[float, list[float]]:
    """Median time between consecutive round ends in a child run (round 1, which includes start-up, left out)."""
    out = subprocess.run([sys.executable, __file__, *args], check=True, capture_output=True, text=True, cwd=REPO)
    ends = json.loads(next(line for line in out.stdout.splitlines() if line.startswith("ROUND-ENDS "))[11:])
    gaps = [b - a for a, b in zip(ends, ends[1:])]
    return statistics.median(gaps), gaps


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--rounds", type=int, default=20)
    p.add_argument("--repeats", type=int, default=5, help="alternating plain/fracfl pairs; medians are reported")
    p.add_argument("--child", nargs="+", help=argparse.SUPPRESS)
    a = p.parse_args()
    if a.child:
        kind, rounds, *rest = a.child
        ends = plain_flower(int(rounds)) if kind == "plain" else fracfl(int(rounds), *rest)
        print("ROUND-ENDS " + json.dumps(ends))
        return

    sys.path.insert(0, str(REPO / "tests"))
    from tests_support import toy_dataset

    print("machine:", machine())
    per_round: dict[str, list[float]] = {"plain": [], "fracfl": []}
    with tempfile.TemporaryDirectory() as tmp:
        data = str(toy_dataset(Path(tmp) / "toy", n=12, positives=9))
        for rep in range(a.repeats):
            for kind in ("plain", "fracfl"):
                extra = [data, f"{tmp}/{kind}-{rep}"] if kind == "fracfl" else []
                median, gaps = round_time(["--child", kind, str(a.rounds), *extra])
                per_round[kind].append(median)
                print(
                    f"{rep}: {kind:7s}: {median:.3f} s per round (rounds 2..{a.rounds}: "
                    f"{' '.join(f'{g:.2f}' for g in gaps)})",
                    flush=True,
                )
    medians = {k: statistics.median(v) for k, v in per_round.items()}
    ratios = [f / p for f, p in zip(per_round["fracfl"], per_round["plain"])]
    ratio = medians["fracfl"] / medians["plain"]
    print(
        f"per round (median of {a.repeats} runs): plain Flower {medians['plain']:.3f} s, fracfl {medians['fracfl']:.3f} s"
    )
    print(f"fracfl / plain Flower: {ratio:.2f}x (pairs: {', '.join(f'{r:.2f}' for r in ratios)}; goal: at most 1.2x)")
    emit(
        {
            "bench": "round_overhead",
            "machine": machine(),
            "rounds": a.rounds,
            "repeats": a.repeats,
            **medians,
            "pair_ratios": ratios,
            "ratio": ratio,
        }
    )


if __name__ == "__main__":
    main()
