"""NMS: the numpy one (runner side) by hand and against ONNX Runtime's NonMaxSuppression, and the graph NMS."""

from __future__ import annotations

import numpy as np
import onnx
import onnx_ir as ir
import pytest
from onnx import TensorProto, helper

from edgekd.detect.graph_nms import SELECTED, add_nms
from edgekd.detect.nms import iou_matrix, nms, select_from_graph
from edgekd.detect.postprocess import NmsSettings, select
from edgekd.errors import ConfigError
from edgekd.runtime import ort_session


def test_iou_matrix_by_hand():
    a = np.asarray([[0, 0, 10, 10]], np.float32)
    b = np.asarray([[0, 0, 10, 10], [5, 0, 15, 10], [20, 20, 30, 30], [0, 0, 0, 0]], np.float32)
    np.testing.assert_allclose(iou_matrix(a, b), [[1.0, 50 / 150, 0.0, 0.0]])


def test_overlapping_box_is_suppressed_and_distant_one_kept():
    boxes = np.asarray([[0, 0, 10, 10], [1, 0, 11, 10], [50, 50, 60, 60]], np.float32)  # IoU(0, 1) = 90/110
    scores = np.asarray([0.6, 0.9, 0.5], np.float32)
    assert nms(boxes, scores, 0.5).tolist() == [1, 2]
    assert nms(boxes, scores, 0.9).tolist() == [1, 0, 2]  # 0.818 ≤ 0.9: both kept, best first


def test_iou_equal_to_threshold_is_kept():
    boxes = np.asarray([[0, 0, 10, 10], [5, 0, 15, 10]], np.float32)  # IoU exactly 1/3
    assert nms(boxes, np.asarray([0.9, 0.8]), 1 / 3).tolist() == [0, 1]
    assert nms(boxes, np.asarray([0.9, 0.8]), 0.33).tolist() == [0]


def test_classes_do_not_suppress_each_other_and_max_keep():
    boxes = np.asarray([[0, 0, 10, 10], [0, 0, 10, 10], [0, 0, 10, 10], [30, 30, 40, 40]], np.float32)
    scores = np.asarray([0.9, 0.8, 0.7, 0.6], np.float32)
    assert nms(boxes, scores, 0.5, classes=np.asarray([0, 1, 0, 1])).tolist() == [0, 1, 3]
    assert nms(boxes, scores, 0.5, classes=np.asarray([0, 1, 0, 1]), max_keep=2).tolist() == [0, 1]
    assert nms(np.zeros((0, 4)), np.zeros(0), 0.5).tolist() == []


def _nms_graph(n: int, iou: float, score: float, max_out: int) -> bytes:
    boxes = helper.make_tensor_value_info("boxes", TensorProto.FLOAT, [1, n, 4])
    scores = helper.make_tensor_value_info("scores", TensorProto.FLOAT, [1, 1, n])
    out = helper.make_tensor_value_info("selected", TensorProto.INT64, [None, 3])
    inits = [
        helper.make_tensor("m", TensorProto.INT64, [1], [max_out]),
        helper.make_tensor("i", TensorProto.FLOAT, [1], [iou]),
        helper.make_tensor("s", TensorProto.FLOAT, [1], [score]),
    ]
    node = helper.make_node("NonMaxSuppression", ["boxes", "scores", "m", "i", "s"], ["selected"])
    g = helper.make_graph([node], "nms", [boxes, scores], [out], inits)
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)]).SerializeToString()


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_numpy_nms_equals_onnx_runtime(seed):
    rng = np.random.default_rng(seed)
    n = 300
    xy = rng.uniform(0, 100, (n, 2))
    wh = rng.uniform(2, 30, (n, 2))
    boxes = np.concatenate([xy, xy + wh], 1).astype(np.float32)
    scores = rng.uniform(0, 1, n).astype(np.float32)
    sess = ort_session(_nms_graph(n, 0.45, 0.0, n))
    ref = sess.run(None, {"boxes": boxes[None], "scores": scores[None, None]})[0][:, 2]
    assert nms(boxes, scores, 0.45).tolist() == ref.tolist()


def test_select_thresholds_picks_best_class_and_caps_detections():
    boxes = np.asarray([[0, 0, 10, 10], [0, 0, 10, 10], [40, 40, 50, 50], [80, 80, 90, 90]], np.float32)
    scores = np.asarray([[0.2, 0.9], [0.8, 0.1], [0.05, 0.001], [0.3, 0.6]], np.float32)
    det = select(boxes, scores, NmsSettings(conf=0.01, iou=0.5, max_det=2))
    assert det.scores.tolist() == pytest.approx([0.9, 0.8]) and det.classes.tolist() == [1, 0]
    det = select(boxes, scores, NmsSettings(conf=0.5, iou=0.5))
    assert det.classes.tolist() == [1, 0, 1]


def test_graph_selected_rows_become_one_images_detections():
    scores = np.zeros((2, 4, 2), np.float32)
    scores[0, :, 0], scores[0, :, 1] = [0.9, 0.1, 0.5, 0.0], [0.2, 0.8, 0.0, 0.5]
    scores[1] = 0.99
    selected = np.asarray([[0, 1, 3], [0, 0, 2], [1, 0, 1], [0, 1, 1], [0, 0, 0], [0, 0, 1]], np.int64)
    box, cls, score = select_from_graph(selected, scores, 0, conf=0.3, max_det=3)
    # image 0 above 0.3: box 0 (0.9), box 1 class 1 (0.8), then boxes 2 and 3 at 0.5: the lower index first
    assert box.tolist() == [0, 1, 2] and cls.tolist() == [0, 1, 0]
    assert score.tolist() == pytest.approx([0.9, 0.8, 0.5])
    assert select_from_graph(selected[:0], scores, 0, 0.3, 3)[0].tolist() == []


def _decoded_graph(a: int, c: int) -> ir.Model:
    """boxes/scores pass-through graph: the shape of a decoded detector's outputs."""
    b = helper.make_tensor_value_info("b_in", TensorProto.FLOAT, [1, a, 4])
    s = helper.make_tensor_value_info("s_in", TensorProto.FLOAT, [1, a, c])
    nodes = [helper.make_node("Identity", ["b_in"], ["boxes"]), helper.make_node("Identity", ["s_in"], ["scores"])]
    outs = [
        helper.make_tensor_value_info("boxes", TensorProto.FLOAT, [1, a, 4]),
        helper.make_tensor_value_info("scores", TensorProto.FLOAT, [1, a, c]),
    ]
    g = helper.make_graph(nodes, "det", [b, s], outs)
    return ir.from_proto(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)]))


def test_graph_nms_matches_numpy_per_class():
    rng = np.random.default_rng(5)
    a, c = 200, 2
    xy = rng.uniform(0, 100, (a, 2))
    boxes = np.concatenate([xy, xy + rng.uniform(5, 25, (a, 2))], 1).astype(np.float32)[None]
    scores = rng.uniform(0, 1, (1, a, c)).astype(np.float32)
    model = add_nms(_decoded_graph(a, c), iou_threshold=0.5, score_threshold=0.2, max_per_class=50)
    proto = ir.to_proto(model)
    onnx.checker.check_model(proto)
    assert [o.name for o in proto.graph.output] == ["boxes", "scores", SELECTED]
    sess = ort_session(proto.SerializeToString())
    b_out, s_out, selected = sess.run(None, {"b_in": boxes, "s_in": scores})
    np.testing.assert_array_equal(b_out, boxes)
    for cls in range(c):
        keep = np.flatnonzero(scores[0, :, cls] > 0.2)
        want = keep[nms(boxes[0, keep], scores[0, keep, cls], 0.5, max_keep=50)]
        assert selected[selected[:, 1] == cls, 2].tolist() == want.tolist()


def test_graph_nms_finds_unnamed_outputs_by_shape():
    model = _decoded_graph(10, 2)
    model.graph.outputs[0].name, model.graph.outputs[1].name = "output1", "output0"
    model.graph.outputs.reverse()  # scores first
    add_nms(model)
    nms_node = next(n for n in model.graph if n.op_type == "NonMaxSuppression")
    assert nms_node.inputs[0].name == "output1"


def test_graph_nms_refuses_a_graph_without_decoded_outputs():
    model = _decoded_graph(10, 1)
    model.graph.outputs.pop()
    with pytest.raises(ConfigError, match=r"decoded boxes \[N, A, 4\]"):
        add_nms(model)
    model = add_nms(_decoded_graph(10, 1))
    with pytest.raises(ConfigError, match="already"):
        add_nms(model)
