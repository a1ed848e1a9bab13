"""Detection distillation losses: class-map KD by hand, box KD, neck pairing, and a student that moves
towards its teacher."""

from __future__ import annotations

import math

import pytest
import torch

from edgekd.distill.detection import DetectionDistillLoss, box_kd, class_map_kd, neck_layers
from edgekd.distill.features import capture
from edgekd.errors import ConfigError
from edgekd.models.yolo import yolo_det, yolo_det_p2


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny models: a second thread only contends on a busy machine
    yield
    torch.set_num_threads(before)


def _maps(cls_logit: float, box=(0.0, 0.0, 0.0, 0.0), h=1, w=1):
    box_t = torch.tensor(box).view(1, 4, 1, 1).expand(1, 4, h, w).clone()
    return (box_t, torch.full((1, 1, h, w), cls_logit))


def test_class_kd_by_hand():
    # one cell, one class: student p = 0.5, teacher p = 0.8 at T = 1 → KL = 0.8 ln(0.8/0.5) + 0.2 ln(0.2/0.5)
    t = math.log(0.8 / 0.2)
    got = class_map_kd(_maps(0.0), _maps(t), temperature=1.0)
    assert float(got) == pytest.approx(0.8 * math.log(1.6) + 0.2 * math.log(0.4), rel=1e-5)
    # at T = 2 the logits are halved and the result is scaled by 4
    p = 1 / (1 + math.exp(-t / 2))
    got2 = class_map_kd(_maps(0.0), _maps(t), temperature=2.0)
    assert float(got2) == pytest.approx(4 * (p * math.log(p / 0.5) + (1 - p) * math.log((1 - p) / 0.5)), rel=1e-5)


def test_class_kd_is_zero_on_agreement_and_weighted_by_teacher_score():
    s = (torch.zeros(1, 4, 1, 2), torch.tensor([[[[3.0, -3.0]]]]))
    assert float(class_map_kd(s, s)) == pytest.approx(0.0, abs=1e-6)
    # the student is wrong on both cells; the teacher-confident cell (p 0.95) weighs 19× the other (p 0.05)
    teacher = (torch.zeros(1, 4, 1, 2), torch.tensor([[[[math.log(19), -math.log(19)]]]]))
    student_a = (torch.zeros(1, 4, 1, 2), torch.tensor([[[[-3.0, -math.log(19)]]]]))  # wrong on the confident cell
    student_b = (torch.zeros(1, 4, 1, 2), torch.tensor([[[[math.log(19), 3.0]]]]))  # wrong on the background cell
    assert float(class_map_kd(student_a, teacher, 1.0)) > 5 * float(class_map_kd(student_b, teacher, 1.0))


def test_box_kd_zero_on_agreement_and_positive_otherwise():
    t = _maps(2.0, box=(0.3, -0.2, 0.5, 0.1), h=2, w=2)
    assert float(box_kd(t, t, (8,))) == pytest.approx(0.0, abs=1e-6)
    s = _maps(-5.0, box=(0.0, 0.0, 0.0, 0.0), h=2, w=2)
    assert float(box_kd(s, t, (8,))) > 0.05


def test_levels_must_match():
    with pytest.raises(ConfigError, match="head levels"):
        class_map_kd(_maps(0.0, h=2, w=2), _maps(0.0, h=1, w=1))


def test_neck_layers_are_the_head_inputs():
    model = yolo_det_p2(2, width=0.125)
    names = neck_layers(model)
    with capture(model, list(names)) as feats:
        model.eval()(torch.zeros(1, 3, 64, 64))
    assert [tuple(feats[n].shape[-2:]) for n in names] == [(16, 16), (8, 8), (4, 4)]
    assert len(neck_layers(yolo_det(2))) == 3


def test_strides_must_match():
    with pytest.raises(ConfigError, match="strides"):
        DetectionDistillLoss(yolo_det_p2(1, width=0.125), yolo_det(1, width=0.125), torch.zeros(1, 3, 64, 64))


def test_student_moves_towards_the_teacher():
    torch.manual_seed(0)
    teacher = yolo_det_p2(1, width=0.25, decode=False)
    for m in teacher.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.momentum = 1.0
    for branch in teacher.head.cls:  # a teacher with confident, varied class maps (not the p≈0.01 start)
        torch.nn.init.normal_(branch[-1].weight, std=1.0)
        torch.nn.init.zeros_(branch[-1].bias)
    student = yolo_det_p2(1, width=0.125, decode=False)
    x = torch.randn(4, 3, 32, 32)
    with torch.no_grad():  # BN statistics of the data, as a trained teacher has (random init shrinks activations)
        teacher.train()(x)
        teacher.eval()
    loss_fn = DetectionDistillLoss(student, teacher, x[:1], labels=0.0, hint=1.0, attention=1.0)
    opt = torch.optim.Adam(list(student.parameters()) + list(loss_fn.parameters()), 3e-3)
    with torch.no_grad(), capture(teacher, loss_fn.teacher_layers) as t_feats:
        t_raw = teacher(x)
    first = None
    for _ in range(80):
        with capture(student, loss_fn.student_layers) as s_feats:
            s_raw = student(x)
        loss, parts = loss_fn(s_raw, t_raw, torch.zeros(0, 6), s_feats, t_feats)
        first = first or parts
        opt.zero_grad()
        loss.backward()
        opt.step()
    # a random teacher's per-cell boxes on noise are hard for a smaller net to copy (box_kd falls slowly here;
    # test_box_kd_gradient_reaches_the_teacher_boxes checks it converges); every term must fall
    for term, factor in (("kd", 0.3), ("hint", 0.85), ("attention", 0.5), ("box_kd", 0.95)):
        assert parts[term] < factor * first[term], (term, first[term], parts[term])


def test_box_kd_gradient_reaches_the_teacher_boxes():
    torch.manual_seed(0)
    teacher = (torch.randn(2, 4, 4, 4) * 0.5, torch.randn(2, 1, 4, 4) * 2)
    raw = torch.zeros(2, 4, 4, 4, requires_grad=True)
    opt = torch.optim.Adam([raw], 0.05)
    start = float(box_kd((raw, teacher[1]), teacher, (8,)))
    for _ in range(200):
        loss = box_kd((raw, teacher[1]), teacher, (8,))
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert start > 0.2 and float(loss) < 0.02
