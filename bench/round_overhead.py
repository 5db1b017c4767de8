"""Per-round overhead of fracfl's federated loop vs plain Flower FedAvg, same model size, side by side.

Both run on Flower's simulation engine (Ray) with 3 sites and YOLOv7-tiny's state (8.1 M parameters); local work
is a no-op in both (fracfl: `train.local_epochs=0`, no site or server evaluation, no edge exports: those are built in
separate low-priority processes, see docs/export.md). fracfl's round still screens
every update, aggregates buffers apart, writes its checkpoint, publishes to the registry and appends records:
that is the overhead measured. Per-round time = (time of N rounds - time of 1 round) / (N - 1), so start-up
(Ray, imports) cancels out; plain and fracfl runs alternate, and the medians of `--repeats` pairs are compared.

    .venv/bin/python bench/round_overhead.py [--rounds 8] [--repeats 3]
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import REPO, emit, machine  # noqa: E402


def plain_flower(rounds: int) -> None:
    """Flower's own FedAvg with `Strategy.start`: clients send the weights straight back."""
    from flwr.app import ArrayRecord, Context, Message, MetricRecord, RecordDict
    from flwr.clientapp import ClientApp
    from flwr.serverapp import Grid, ServerApp
    from flwr.serverapp.strategy import FedAvg
    from flwr.simulation import run_simulation

    from common.nn.model import ModelSpec, build_model

    client, server = ClientApp(), ServerApp()

    @client.train()
    def train(msg: Message, context: Context) -> Message:
        arrays = msg.content["arrays"]
        return Message(RecordDict({"arrays": arrays, "metrics": MetricRecord({"num-examples": 10})}), reply_to=msg)

    @server.main()
    def main(grid: Grid, context: Context) -> None:
        state = build_model(ModelSpec()).state_dict()
        FedAvg(fraction_evaluate=0.0, min_train_nodes=3, min_available_nodes=3).start(
            grid=grid, initial_arrays=ArrayRecord(state), num_rounds=rounds)

    run_simulation(server_app=server, client_app=client, num_supernodes=3,
                   backend_config={"client_resources": {"num_cpus": 1, "num_gpus": 0.0}, "init_args": {"include_dashboard": False}})


def fracfl(rounds: int, data: str, out: str) -> None:
    from common.cli import main

    code = main(["simulate", "model=yolov7_tiny", "partition=iid", f"partition.source={data}", "federation.sites=3",
                 "federation.min_sites=3", f"federation.rounds={rounds}", "federation.fraction_evaluate=0",
                 "federation.server_eval=false", "train.local_epochs=0", "tracking=disabled", "progress=false",
                 "export.enabled=false",
                 f"run_dir={out}"])
    if code:
        raise SystemExit(code)


def timed(args: list[str]) -> float:
    t0 = time.perf_counter()
    subprocess.run([sys.executable, __file__, *args], check=True, capture_output=True, cwd=REPO)
    return time.perf_counter() - t0


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--rounds", type=int, default=8)
    p.add_argument("--repeats", type=int, default=3, help="alternating plain/fracfl pairs; medians are reported")
    p.add_argument("--child", nargs="+", help=argparse.SUPPRESS)
    a = p.parse_args()
    if a.child:
        kind, rounds, *rest = a.child
        plain_flower(int(rounds)) if kind == "plain" else fracfl(int(rounds), *rest)
        return

    sys.path.insert(0, str(REPO / "tests"))
    from tests_support import toy_dataset

    print("machine:", machine())
    per_round: dict[str, list[float]] = {"plain": [], "fracfl": []}
    with tempfile.TemporaryDirectory() as tmp:
        data = str(toy_dataset(Path(tmp) / "toy", n=12, positives=9))
        for rep in range(a.repeats):
            for kind in ("plain", "fracfl"):
                extra = lambda n: [data, f"{tmp}/{kind}-{rep}-{n}"] if kind == "fracfl" else []  # noqa: E731
                t1 = timed(["--child", kind, "1", *extra(1)])
                tn = timed(["--child", kind, str(a.rounds), *extra(a.rounds)])
                per_round[kind].append((tn - t1) / (a.rounds - 1))
                print(f"{rep}: {kind:7s}: 1 round {t1:6.1f} s, {a.rounds} rounds {tn:6.1f} s "
                      f"-> {per_round[kind][-1]:.2f} s per round")
    medians = {k: statistics.median(v) for k, v in per_round.items()}
    ratios = [f / p for f, p in zip(per_round["fracfl"], per_round["plain"])]
    ratio = medians["fracfl"] / medians["plain"]
    print(f"per round (median of {a.repeats}): plain Flower {medians['plain']:.2f} s, fracfl {medians['fracfl']:.2f} s")
    print(f"fracfl / plain Flower: {ratio:.2f}x (pairs: {', '.join(f'{r:.2f}' for r in ratios)}; goal: at most 1.2x)")
    emit({"bench": "round_overhead", "machine": machine(), "rounds": a.rounds, "repeats": a.repeats,
          **medians, "pair_ratios": ratios, "ratio": ratio})


if __name__ == "__main__":
    main()
