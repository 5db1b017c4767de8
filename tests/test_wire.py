"""The server's reading and writing of Flower records: exact arrays both ways, malformed bytes refused, and the
background commit of each round (no Flower engine needed)."""

import threading

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord

from server.commit import Committer
from server.loop import from_record, to_record


def test_records_round_trip_exactly_with_every_shape():
    state = {"w": np.arange(24, dtype=np.float32).reshape(2, 3, 4), "t": np.asfortranarray(np.eye(3)),
             "bn.num_batches_tracked": np.array(7, dtype=np.int64), "e": np.zeros((0, 5), np.float32)}
    back = from_record(to_record(state))
    for k, v in state.items():
        assert back[k].shape == v.shape and back[k].dtype == v.dtype and np.array_equal(back[k], v), k
    assert not back["w"].flags.writeable  # views of the received bytes: nothing may change them in place
    flower = {k: t.numpy() for k, t in to_record(state).to_torch_state_dict().items()}  # Flower's own reading
    assert all(np.array_equal(flower[k], back[k]) and flower[k].shape == back[k].shape for k in state)


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

    with pytest.raises(OSError, match="disk full"):
        with Committer() as c:
            c.submit(fails)
            c.submit(work(5))  # waits for the failed commit first, and raises its error
    assert order == [0, 1, 2, 3, 4]
