"""The wire between server and sites: the weights codec both sides use on Flower records (common/records.py):
the bytes Flower's own writer makes, exact arrays both ways, malformed bytes refused; the message keys and the
site's reply, named once in common/protocol.py; and the server's background commit of each round."""

import ast
import json
import threading
from pathlib import Path

import numpy as np
import pytest
import torch
from flwr.app import Array, ArrayRecord

from common import protocol
from common.protocol import SiteReply
from common.records import from_record, to_record, torch_state
from server.commit import Committer

REPO = Path(__file__).resolve().parents[1]


def test_records_round_trip_exactly_with_every_shape():
    state = {
        "w": np.arange(24, dtype=np.float32).reshape(2, 3, 4),
        "t": np.asfortranarray(np.eye(3)),
        "bn.num_batches_tracked": np.array(7, dtype=np.int64),
        "e": np.zeros((0, 5), np.float32),
    }
    back = from_record(to_record(state))
    for k, v in state.items():
        assert back[k].shape == v.shape and back[k].dtype == v.dtype and np.array_equal(back[k], v), k
    assert not back["w"].flags.writeable  # views of the received bytes: nothing may change them in place
    flower = {k: t.numpy() for k, t in to_record(state).to_torch_state_dict().items()}  # Flower's own reading
    assert all(np.array_equal(flower[k], back[k]) and flower[k].shape == back[k].shape for k in state)


def test_written_bytes_are_flowers_and_tensors_read_back_exactly():
    state = {
        "w": np.random.rand(4, 3).astype(np.float32),
        "n": np.array(3, np.int64),
        "e": np.zeros((0, 2), np.float32),
        "f": np.asfortranarray(np.random.rand(3, 2)),
    }
    ours, flowers = (
        to_record(state),
        ArrayRecord({k: Array.from_numpy_ndarray(np.require(v, requirements="C")) for k, v in state.items()}),
    )
    assert all(ours[k].data == flowers[k].data and ours[k].shape == flowers[k].shape for k in state)
    tensors = torch_state(ours)
    assert all(
        tensors[k].shape == v.shape and torch.equal(tensors[k], torch.from_numpy(np.require(v, requirements="C")))
        for k, v in state.items()
    )
    model = torch.nn.Linear(3, 4)
    model.load_state_dict(torch_state(to_record({"weight": state["w"], "bias": np.ones(4, np.float32)})))
    assert torch.equal(model.weight.detach(), torch.from_numpy(state["w"]))


@pytest.mark.parametrize("damage", ["truncated", "object"])
def test_malformed_arrays_are_refused(damage):
    record = to_record({"w": np.ones(10, np.float32)})
    array = record["w"]
    if damage == "truncated":
        data = array.data[:-4]
    else:
        data = array.data.replace(b"'<f4'", b"'|O' ").ljust(len(array.data), b" ")
    bad = ArrayRecord({"w": Array(dtype=array.dtype, shape=array.shape, stype=array.stype, data=data)})
    with pytest.raises(ValueError):
        from_record(bad)


def test_commits_run_one_at_a_time_and_a_failure_stops_the_run():
    order, running = [], threading.Lock()

    def work(i):
        def run():
            assert running.acquire(blocking=False), "two commits at once"
            order.append(i)
            running.release()

        return run

    with Committer() as c:
        for i in range(5):
            c.submit(work(i))
    assert order == [0, 1, 2, 3, 4]

    def fails():
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"), Committer() as c:
        c.submit(fails)
        c.submit(work(5))  # waits for the failed commit first, and raises its error
    assert order == [0, 1, 2, 3, 4]


def test_message_keys_are_spelt_only_in_the_protocol():
    """A key written as a literal on one side drifts from the other side's: server/ and client/ use the names."""
    keys = {v for k, v in vars(protocol).items() if k.isupper() and isinstance(v, str) and "-" in v}
    assert {"num-examples", "sites-manifest", "model-version", "server-round", "real-site"} <= keys
    found = [
        f"{f.relative_to(REPO)}:{node.lineno} {node.value!r}"
        for layer in ("server", "client")
        for f in sorted((REPO / layer).rglob("*.py"))
        for node in ast.walk(ast.parse(f.read_text(encoding="utf-8")))
        if isinstance(node, ast.Constant) and node.value in keys
    ]
    assert not found, "\n".join(found)


def test_the_site_reply_keeps_only_short_names_and_numbers():
    report = {"epsilon": 2.5, "noise": "secure", "ledger_head": "ab" * 32, "note": "x" * 500, "nested": {"a": 1}}
    sent = SiteReply("trauma_center", "ok", report).to_record()
    got = SiteReply.from_record(sent)
    assert got == SiteReply("trauma_center", "ok", {"epsilon": 2.5, "noise": "secure", "ledger_head": "ab" * 32})
    assert SiteReply.from_record({}) == SiteReply("", "ok", None)  # a reply that says nothing
    long = SiteReply.from_record({"name": "n" * 100, "status": "failed: " + "y" * 300, "privacy": "not json"})
    assert len(long.name) == 64 and len(long.status) == 200 and long.privacy is None
    assert SiteReply.from_record({"privacy": json.dumps([1, 2])}).privacy is None
