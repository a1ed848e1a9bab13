"""The yolo-det decode in the graph: formula by hand, two separate outputs, a plain ONNX export that ONNX
Runtime runs to the same numbers, and the output layouts post-processing understands."""

from __future__ import annotations

import io
import math
import warnings

import numpy as np
import onnx
import pytest
import torch

from edgekd.detect.postprocess import split_outputs
from edgekd.errors import DataError
from edgekd.models.yolo import YoloDet
from edgekd.models.yolo_decode import DecodedYolo, cell_grid, decode_level
from edgekd.runtime import ort_session


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny models: a second thread only contends on a busy machine
    yield
    torch.set_num_threads(before)


def test_zero_raw_output_is_a_four_stride_box_on_the_cell_centre():
    box = torch.zeros(1, 4, 2, 3)
    out = decode_level(box, 8, torch.from_numpy(cell_grid(2, 3)))
    assert out.shape == (1, 6, 4)
    # cell (gx=2, gy=1): centre (2.5·8, 1.5·8) = (20, 12), size (2·½)² · 4 · 8 = 32
    np.testing.assert_allclose(out[0, 5].numpy(), [4, -4, 36, 28])


def test_offsets_and_sizes_by_hand():
    raw = torch.tensor([math.log(3.0), -100.0, -math.log(3.0), 100.0]).view(1, 4, 1, 1)
    out = decode_level(raw, 4, torch.from_numpy(cell_grid(1, 1)))[0, 0]
    cx = (0 + 2 * 0.75 - 0.5) * 4  # σ(log 3) = 0.75
    cy = (0 + 0 - 0.5) * 4  # σ(-100) = 0: reaches half a cell above
    w = (2 * 0.25) ** 2 * 4 * 4  # σ(-log 3) = 0.25 → one stride
    h = 4 * 4 * 4  # σ(100) = 1: the largest box, 16 strides
    np.testing.assert_allclose(out.numpy(), [cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], atol=1e-5)


def test_a_new_head_starts_with_stride_sized_boxes():
    model = YoloDet(1, width=0.125, strides=(4, 8, 16), head_channels=(16, 16), decode=True).eval()
    with torch.no_grad():
        boxes, _ = model(torch.zeros(1, 3, 64, 64))
    sizes = boxes[0, :, 2:] - boxes[0, :, :2]
    assert sizes[0].tolist() == pytest.approx([4.0, 4.0], rel=0.5)  # stride-4 cell: about 4 px


@pytest.fixture(scope="module")
def decoded():
    torch.manual_seed(0)
    return DecodedYolo(YoloDet(3, width=0.125, strides=(4, 8, 16), head_channels=(16, 16))).eval()


def test_boxes_and_scores_are_two_outputs(decoded):
    with torch.no_grad():
        boxes, scores = decoded(torch.randn(2, 3, 64, 96))
    cells = sum((64 // s) * (96 // s) for s in (4, 8, 16))
    assert boxes.shape == (2, cells, 4) and scores.shape == (2, cells, 3)
    assert ((scores >= 0) & (scores <= 1)).all()
    assert (boxes[..., 2:] > boxes[..., :2]).all()


def test_decoded_graph_exports_without_shape_ops_and_runs_the_same(decoded):
    x = torch.randn(1, 3, 64, 96)
    buf = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            decoded,
            (x,),
            buf,
            dynamo=False,
            opset_version=17,
            input_names=["input"],
            output_names=list(DecodedYolo.output_names),
        )
    proto = onnx.load_from_string(buf.getvalue())
    ops = {n.op_type for n in proto.graph.node}
    assert not ops & {"Shape", "Range", "ConstantOfShape"}  # grids are constants: static, quantizer-friendly
    assert "Sigmoid" in ops and not ops & {"Exp", "Pow"}  # lowerable everywhere (TFLite has no Exp in edgekd)
    assert [o.name for o in proto.graph.output] == ["boxes", "scores"]
    got = ort_session(buf.getvalue()).run(None, {"input": x.numpy()})
    with torch.no_grad():
        ref = decoded(x)
    for g, r in zip(got, ref):
        np.testing.assert_allclose(g, r.numpy(), rtol=1e-4, atol=1e-3)


def test_split_outputs_layouts():
    boxes, scores = np.zeros((1, 5, 4)), np.ones((1, 5, 2))
    assert split_outputs([boxes, scores])[1] is scores
    assert split_outputs([scores, boxes])[0] is boxes
    # Ultralytics: [N, 4 + C, A] with cx, cy, w, h
    y = np.zeros((1, 6, 1), np.float32)
    y[0, :, 0] = [10, 20, 4, 6, 0.3, 0.7]
    b, s = split_outputs([y])
    np.testing.assert_allclose(b[0, 0], [8, 17, 12, 23])
    np.testing.assert_allclose(s[0, 0], [0.3, 0.7])
    with pytest.raises(DataError, match="neither"):
        split_outputs([np.zeros((1, 4, 8, 8)), np.zeros((1, 2, 8, 8))])
