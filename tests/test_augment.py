"""Letterboxing and augmentations keep boxes on the structures they label."""

import numpy as np
import pytest

from common.config import AugmentConfig
from common.data.augment import augment, boxes_to_pixels, letterbox, mosaic, pixels_to_boxes, random_affine
from common.inference.postprocess import to_original

NONE = AugmentConfig(hflip=0, degrees=0, translate=0, scale=0, brightness=0, contrast=0, gamma=0, noise=0)


def _scene(h=120, w=200, box=(50, 30, 90, 70)):
    img = np.zeros((h, w), np.uint8)
    x1, y1, x2, y2 = box
    img[y1:y2, x1:x2] = 255
    return img, np.array([[0, x1, y1, x2, y2]], np.float32)


def _bright_bbox(img):
    ys, xs = np.nonzero(img > 200)
    return np.array([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1], np.float32)


def test_letterbox_and_back_to_original_pixels():
    img, boxes = _scene()
    out, gain, pad = letterbox(img, 100)
    assert out.shape == (100, 100) and gain == pytest.approx(0.5) and pad == (0.0, 20.0)
    moved = boxes[:, 1:].copy()
    moved[:, [0, 2]] = moved[:, [0, 2]] * gain + pad[0]
    moved[:, [1, 3]] = moved[:, [1, 3]] * gain + pad[1]
    np.testing.assert_allclose(_bright_bbox(out), moved[0], atol=1)
    back = to_original(np.concatenate([moved, [[0.9, 0]]], 1), gain, pad, img.shape)
    np.testing.assert_allclose(back[0, :4], boxes[0, 1:], atol=1e-4)


def test_yolo_rows_round_trip():
    rows = np.array([[0, 0.5, 0.4, 0.2, 0.1]], np.float32)
    px = boxes_to_pixels(rows, 64, 64)
    np.testing.assert_allclose(pixels_to_boxes(px, 64), rows, atol=1e-6)


@pytest.mark.parametrize("seed", range(5))
def test_affine_boxes_follow_the_object(seed):
    img, boxes = _scene(100, 100, (40, 40, 60, 60))
    cfg = AugmentConfig(degrees=10, translate=0.1, scale=0.2)
    out, moved = random_affine(img, boxes, cfg, np.random.default_rng(seed))
    truth = _bright_bbox(out)
    assert len(moved) == 1
    assert np.all(moved[0, 1:3] <= truth[:2] + 1.5) and np.all(moved[0, 3:] >= truth[2:] - 1.5)  # box covers object
    assert (moved[0, 3] - moved[0, 1]) <= (truth[2] - truth[0]) * 1.5  # and is not much larger


def test_flip_moves_box_and_intensity_keeps_shape():
    img, boxes = _scene(100, 100, (10, 20, 30, 40))
    cfg = AugmentConfig(hflip=1.0, degrees=0, translate=0, scale=0, brightness=0.2, contrast=0.2, gamma=0.2, noise=0.02)
    out, moved = augment(img, boxes, cfg, np.random.default_rng(0))
    assert out.shape == img.shape and out.dtype == np.uint8
    np.testing.assert_allclose(moved[0, 1:], [70, 20, 90, 40])
    assert out[30, 80] > out[30, 20]  # the object moved to the right half


def test_box_pushed_out_of_the_image_is_dropped():
    img, boxes = _scene(100, 100, (0, 0, 6, 6))
    cfg = AugmentConfig(degrees=0, translate=0.0, scale=0.0)
    cfg.translate = 0.3
    kept = [len(random_affine(img, boxes, cfg, np.random.default_rng(s))[1]) for s in range(20)]
    assert 0 in kept and 1 in kept


def test_mosaic_combines_four_images():
    tiles = [_scene(64, 64, (20, 20, 44, 44)) for _ in range(4)]
    tiles = [(letterbox(i, 64)[0], b) for i, b in tiles]
    out, boxes = mosaic(tiles, 64, np.random.default_rng(3))
    assert out.shape == (64, 64)
    assert 1 <= len(boxes) <= 4
    assert np.all(boxes[:, 1:] >= 0) and np.all(boxes[:, 1:] <= 64)
    assert AugmentConfig(mosaic=0.5).mixes_images and not AugmentConfig().mixes_images
