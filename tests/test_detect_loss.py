"""Label assignment and the detection loss: level by size, centre cell and two neighbours, the nearest
object wins a contested cell, CIoU by hand, and a tiny detector that learns boxes from the loss."""

from __future__ import annotations

import pytest
import torch

from edgekd.detect.assign import assign, level_of
from edgekd.detect.boxes import aligned_iou, complete_iou
from edgekd.detect.loss import DetectionLoss
from edgekd.models.yolo import YoloDet
from edgekd.models.yolo_decode import DecodedYolo

STRIDES = (4, 8, 16)


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    # tiny models: on a busy machine a second intra-op thread only contends (40× slower measured on 2 busy cores)
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _t(rows):
    return torch.tensor(rows, dtype=torch.float32)


def test_level_by_longer_side():
    boxes = _t([[0, 0, 3, 10], [0, 0, 16, 2], [0, 0, 17, 2], [0, 0, 20, 32], [0, 0, 5, 33], [0, 0, 300, 300]])
    assert level_of(boxes, STRIDES).tolist() == [0, 0, 1, 1, 2, 2]


def test_centre_cell_and_nearest_neighbours():
    # centre (9, 13) px at stride 4 → cell (2, 3), fraction (0.25, 0.25): neighbours left (1, 3) and above (2, 2)
    pos = assign(_t([[0, 0, 8, 10, 10, 16]]), [(8, 8), (4, 4), (2, 2)], STRIDES)
    cells = sorted((int(c) % 8, int(c) // 8) for c in pos[0].cell)
    assert cells == [(1, 3), (2, 2), (2, 3)]
    assert pos[0].target.tolist() == [0, 0, 0] and not len(pos[1].cell) and not len(pos[2].cell)


def test_neighbours_outside_the_map_are_dropped():
    pos = assign(_t([[1, 0, 0, 0, 2, 2]]), [(8, 8), (4, 4), (2, 2)], STRIDES)  # centre (1, 1) in cell (0, 0)
    assert pos[0].cell.tolist() == [0] and pos[0].image.tolist() == [1]


def test_contested_cell_goes_to_the_nearer_object():
    # two 3 × 8 px objects whose centres sit in neighbouring cells (stride 4): A at (5, 6), B at (9.5, 6)
    targets = _t([[0, 0, 3.5, 2, 6.5, 10], [0, 0, 8, 2, 11, 10]])
    pos = assign(targets, [(8, 8), (4, 4), (2, 2)], STRIDES)[0]
    owner = {int(c): int(t) for c, t in zip(pos.cell, pos.target)}
    assert len(owner) == len(pos.cell)  # one object per cell
    assert owner[1 * 8 + 1] == 0  # A's own centre cell
    assert owner[1 * 8 + 2] == 1  # B's own centre cell, also A's right neighbour


def test_iou_and_ciou_by_hand():
    a, b = _t([[0, 0, 10, 10]]), _t([[5, 0, 15, 10]])
    assert float(aligned_iou(a, b)) == pytest.approx(1 / 3)
    # same aspect ratio: CIoU = IoU − centre distance² / enclosing diagonal² = 1/3 − 25/(15² + 10²)
    assert float(complete_iou(a, b)) == pytest.approx(1 / 3 - 25 / 325)
    far = complete_iou(_t([[0, 0, 2, 2]]), _t([[10, 10, 12, 12]]))
    assert float(far) < 0  # no overlap, still a signal


def test_no_objects_means_only_background_loss():
    model = YoloDet(2, width=0.125, strides=STRIDES, head_channels=(16, 16))
    loss, parts = DetectionLoss(STRIDES)(model(torch.randn(1, 3, 32, 32)), torch.zeros(0, 6))
    assert parts["positives"] == 0 and parts["box"] == 0 and loss > 0
    loss.backward()


def test_a_small_detector_learns_its_boxes():
    torch.manual_seed(0)
    model = YoloDet(2, width=0.125, strides=STRIDES, head_channels=(16, 16))
    x = torch.zeros(2, 3, 64, 64)
    targets = _t([[0, 0, 8, 8, 14, 20], [0, 1, 40, 30, 60, 50], [1, 1, 20, 40, 26, 44]])
    for b, c, x0, y0, x1, y1 in targets.tolist():
        x[int(b), int(c), int(y0) : int(y1), int(x0) : int(x1)] = 1.0
    loss_fn = DetectionLoss(STRIDES)
    opt = torch.optim.Adam(model.parameters(), 3e-3)
    first = None
    for _ in range(150):
        loss, parts = loss_fn(model(x), targets)
        first = first or float(loss.detach())
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert float(loss) < first / 3 and parts["iou"] > 0.6
    with torch.no_grad():
        boxes, scores = DecodedYolo(model.eval())(x)
    for b, c, *box in targets.tolist():
        best = scores[int(b), :, int(c)].argmax()
        iou = aligned_iou(boxes[int(b), best], torch.tensor(box))
        assert float(iou) > 0.5, (b, c, box, boxes[int(b), best].tolist())
