"""Server-side screening of site updates and the handling of buffers (no Flower needed)."""

import numpy as np
import pytest
from tests_support import NANO

from common.nn.model import build_model
from server.updates import aggregate_buffers, check_examples, check_update, split_state


@pytest.fixture(scope="module")
def reference():
    return {k: v.numpy().copy() for k, v in build_model(NANO).state_dict().items()}


def test_good_update_passes(reference):
    update = {k: (v + 0.01 if v.dtype.kind == "f" else v) for k, v in reference.items()}
    assert check_update(update, reference, max_norm=1e3) is None


@pytest.mark.parametrize(
    "break_it,expected",
    [
        (lambda s: s.pop("model.0.conv.weight"), "wrong keys"),
        (lambda s: s.__setitem__("extra.weight", np.zeros(3, np.float32)), "unexpected: extra.weight"),
        (
            lambda s: s.__setitem__("model.0.conv.weight", np.zeros((1, 1), np.float32)),
            "wrong shape for model.0.conv.weight",
        ),
        (
            lambda s: s["model.0.conv.weight"].__setitem__((0, 0, 0, 0), np.nan),
            "non-finite values in model.0.conv.weight",
        ),
        (lambda s: s["model.0.bn.running_var"].__setitem__(0, np.inf), "non-finite values in model.0.bn.running_var"),
        (
            lambda s: s["model.1.conv.weight"].__setitem__((0, 0, 0, 0), -np.inf),
            "non-finite values in model.1.conv.weight",
        ),
        (lambda s: s.__setitem__("model.0.conv.weight", s["model.0.conv.weight"] + 100.0), "exceeds the bound"),
        (
            lambda s: s.__setitem__("model.0.bn.num_batches_tracked", np.float32(3.0) * np.ones((), np.float32)),
            "wrong dtype",
        ),
        (lambda s: s.__setitem__("model.0.bn.num_batches_tracked", np.array(3, np.uint64)), "wrong dtype"),
        (lambda s: s["model.0.bn.running_var"].__setitem__(0, -1e30), "negative variance"),
    ],
)
def test_bad_updates_are_named(reference, break_it, expected):
    update = {k: v.copy() for k, v in reference.items()}
    break_it(update)
    reason = check_update(update, reference, max_norm=50.0)
    assert reason is not None and expected in reason


def test_buffers_are_weighted_and_counters_stay_integers(reference):
    params, buffers = split_state(reference)
    assert "model.0.bn.running_mean" in buffers and "model.0.conv.weight" in params
    dfl = next(k for k in reference if ".dfl." in k)
    assert dfl in buffers and dfl not in params  # the fixed DFL projection is never aggregated or noised
    a = {k: v.copy() for k, v in reference.items()}
    b = {k: v.copy() for k, v in reference.items()}
    a["model.0.bn.running_var"][:] = 1.0
    b["model.0.bn.running_var"][:] = 4.0
    a["model.0.bn.num_batches_tracked"] = np.array(10, np.int64)
    b["model.0.bn.num_batches_tracked"] = np.array(30, np.int64)
    out = aggregate_buffers([a, b], [30, 10])
    assert set(out) == {k for k in buffers if k != dfl}  # the server keeps its own copy of the constant
    np.testing.assert_allclose(out["model.0.bn.running_var"], 1.75)  # (30*1 + 10*4) / 40
    assert out["model.0.bn.num_batches_tracked"].dtype == np.int64 and out["model.0.bn.num_batches_tracked"] == 30
    assert out["model.0.bn.running_var"].dtype == np.float32


@pytest.mark.parametrize(
    "value,ok",
    [
        (40.0, True),
        (1, True),
        (0.0, False),
        (-5.0, False),
        (float("nan"), False),
        (2.5, False),
        (1e12, False),
        ("many", False),
    ],
)
def test_example_counts_are_checked(value, ok):
    assert (check_examples(value) is None) is ok
