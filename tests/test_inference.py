"""Single-image prediction gives exactly what dataset evaluation gives: one preprocessing and decoding path."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from tests_support import NANO

from common.config import EvalConfig
from common.data.dataset import DetectionDataset
from common.data.images import read_image
from common.engine.evaluate import predict_dataset
from common.inference import Predictor, TorchBackend
from common.nn.model import build_model


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return build_model(NANO)


def test_predictor_matches_dataset_evaluation(model, synth_data):
    data = DetectionDataset.from_data(synth_data, "val", 128)
    cfg = EvalConfig(conf=0.0)
    expected = predict_dataset(model, data, cfg, torch.device("cpu"), progress=False)
    predictor = Predictor(TorchBackend(model, imgsz=128), cfg)
    for path, want in list(zip(data.images, expected))[:3]:
        got = predictor.predict(read_image(path))
        assert len(got.scores) == len(want.pred_scores) > 0
        np.testing.assert_allclose(got.boxes, want.pred_boxes, atol=1e-3)
        np.testing.assert_allclose(got.scores, want.pred_scores, atol=1e-5)
        assert got.probability == pytest.approx(float(want.pred_scores.max()), abs=1e-5)


def test_operating_point_decides_findings_and_verdict(model, synth_data):
    img = read_image(DetectionDataset.from_data(synth_data, "val", 128).images[0])
    backend = TorchBackend(model, imgsz=128)
    everything = Predictor(backend, EvalConfig(conf=0.0)).predict(img)
    top = float(everything.scores.max())
    above = Predictor(backend, EvalConfig(conf=top)).predict(img)
    below = Predictor(backend, EvalConfig(conf=min(1.0, top + 1e-3))).predict(img)
    assert (
        above.positive and len(above.findings()) >= 1 and above.findings()[0]["score"] == pytest.approx(top, abs=1e-4)
    )
    assert not below.positive and below.findings() == []
    assert all(0 <= f["box"][0] <= img.shape[1] and 0 <= f["box"][3] <= img.shape[0] for f in everything.findings())


def test_predictor_refuses_colour_or_float_input(model):
    with pytest.raises(ValueError, match="grey uint8"):
        Predictor(TorchBackend(model, imgsz=64), EvalConfig()).predict(np.zeros((10, 10, 3), np.uint8))


def test_load_backend_from_weights_file_or_version_folder(model, tmp_path):
    from common.errors import DataError
    from common.inference import load_backend
    from common.nn.weights import save_weights

    save_weights(model, NANO, tmp_path / "v0001" / "model.safetensors", {"imgsz": 96})
    for ref in (tmp_path / "v0001", tmp_path / "v0001" / "model.safetensors"):
        b = load_backend(ref)
        assert b.imgsz == 96 and b.names == dict(model.names)
        x = torch.rand(1, 3, 96, 96)
        torch.testing.assert_close(b(x), model.eval()(x)[0])
    with pytest.raises(DataError, match="no model here"):
        load_backend(tmp_path / "missing")
    with pytest.raises(DataError, match="unknown backend"):
        load_backend(tmp_path / "v0001", "onnx")


def test_weights_without_a_trained_size_are_refused_not_run_at_a_guessed_one(model, tmp_path):
    """A model trained at 128 px and run at a guessed 640 px finds nothing, silently (a benchmark lost a session to
    it): a file that records no size is refused with its path, unless the caller gives the size."""
    from common.errors import DataError
    from common.inference import load_backend
    from common.nn.weights import save_weights

    path = save_weights(model, NANO, tmp_path / "public.safetensors", {"source": "hand-made"})
    with pytest.raises(DataError, match=r"public\.safetensors: records no training image size"):
        load_backend(path)
    assert load_backend(path, imgsz=128).imgsz == 128


def test_boxes_past_the_edge_are_clipped_before_nms_not_after():
    """Two boxes that both run past the image overlap by IoU 0.5 before clipping and are identical after it: NMS
    must see them clipped, or both survive as duplicate findings covering the same area."""
    from common.inference.postprocess import decode, image_bounds, to_original

    # (1, 4 + nc, anchors): centre x, centre y, width, height, class score; image 100 x 100 at the letterbox's origin.
    raw = torch.tensor([[[25.0, 75.0], [50.0, 50.0], [150.0, 150.0], [100.0, 100.0], [0.9, 0.8]]])
    cfg = EvalConfig(conf=0.5, nms_iou=0.6)
    assert len(decode(raw, cfg, nc=1)[0]) == 2  # what happened before: both kept, then clipped to the same box
    bounds = [image_bounds(1.0, (0.0, 0.0), (100, 100))]
    det = to_original(decode(raw, cfg, nc=1, bounds=bounds)[0].numpy(), 1.0, (0.0, 0.0), (100, 100))
    assert len(det) == 1 and det[0, 4] == pytest.approx(0.9)
    np.testing.assert_allclose(det[0, :4], [0, 0, 100, 100])
