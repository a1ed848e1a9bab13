"""Letterbox and stretch: the pixels a detector sees, and boxes mapped both ways."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from edgekd.data.detection.letterbox import PAD_VALUE, fit, letterbox, read_letterboxed
from edgekd.data.preprocess import Preprocess, load_image
from edgekd.errors import ConfigError


def _image(h, w, seed=0):
    return np.random.default_rng(seed).integers(0, 255, (h, w, 3), dtype=np.uint8)


def test_wide_image_is_centred_with_grey_bars_above_and_below():
    img = _image(100, 200)
    out, t = letterbox(img, (64, 64))
    assert out.shape == (64, 64, 3)
    assert t.scale == (0.32, 0.32) and t.pad == (0, 16)
    assert (out[:16] == PAD_VALUE).all() and (out[48:] == PAD_VALUE).all()
    expected = np.asarray(Image.fromarray(img).resize((64, 32), Image.BILINEAR))
    assert (out[16:48] == expected).all()


def test_tall_image_pads_left_and_right_and_odd_padding_goes_right():
    out, t = letterbox(_image(90, 30), (60, 41))
    assert t.scale == (pytest.approx(20 / 30), pytest.approx(60 / 90)) and t.pad == (10, 0)
    assert (out[:, :10] == PAD_VALUE).all() and (out[:, 30:] == PAD_VALUE).all()


def test_same_size_is_untouched():
    img = _image(64, 64)
    out, t = letterbox(img, (64, 64))
    assert (out == img).all() and t.scale == (1.0, 1.0) and t.pad == (0, 0)


@pytest.mark.parametrize("mode", ["letterbox", "stretch"])
def test_boxes_round_trip(mode):
    t = fit((480, 640), (320, 320), mode)
    boxes = np.asarray([[10, 20, 110, 220], [0, 0, 640, 480]], np.float32)
    np.testing.assert_allclose(t.to_source(t.to_input(boxes)), boxes, atol=1e-3)
    inp = t.to_input(boxes)
    if mode == "letterbox":
        np.testing.assert_allclose(inp[1], [0, 40, 320, 280], atol=1e-4)
    else:
        np.testing.assert_allclose(inp[1], [0, 0, 320, 320], atol=1e-4)


def test_to_source_clips_to_the_image():
    t = fit((100, 200), (64, 64))
    np.testing.assert_allclose(t.to_source(np.asarray([[-5, 0, 70, 64]], np.float32)), [[0, 0, 200, 100]])


def test_preprocess_letterbox_is_the_same_function(tmp_path):
    path = tmp_path / "a.png"
    Image.fromarray(_image(50, 80, seed=3)).save(path)
    pre = Preprocess(size=(32, 32), resize="letterbox")
    got = load_image(path, pre)
    np.testing.assert_array_equal(got, pre.apply(read_letterboxed(path, (32, 32))[0]))
    np.testing.assert_allclose(got[:, :6], PAD_VALUE / 255, rtol=1e-6)  # grey bars at the top (80×50 → 32×20)
    stretched = load_image(path, Preprocess(size=(32, 32)))
    assert not np.allclose(stretched, got)


def test_unknown_resize_mode():
    with pytest.raises(ConfigError, match="resize"):
        Preprocess(resize="crop")
    with pytest.raises(ConfigError, match="resize mode"):
        fit((10, 10), (5, 5), "crop")
