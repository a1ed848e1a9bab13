"""Every distillation loss and schedule against closed-form values on tiny tensors."""

from __future__ import annotations

import math

import pytest
import torch

from edgekd.distill.losses import (
    FeatureHint,
    attention_map,
    attention_transfer,
    clip_term,
    compensation_weights,
    decoupled_kd,
    hinton_kd,
    kd_with_labels,
)
from edgekd.distill.schedules import LearnableTemperature, Schedule


def softmax(v, t):
    e = [math.exp(x / t) for x in v]
    return [x / sum(e) for x in e]


def test_hinton_kd_closed_form():
    s, t, T = [1.0, 2.0, 0.5], [0.2, 3.0, -1.0], 4.0
    p_t, p_s = softmax(t, T), softmax(s, T)
    expected = sum(a * math.log(a / b) for a, b in zip(p_t, p_s)) * T * T
    got = hinton_kd(torch.tensor([s]), torch.tensor([t]), T)
    assert got.item() == pytest.approx(expected, rel=1e-5)


def test_hinton_kd_is_zero_for_equal_logits_and_averages_the_batch():
    x = torch.randn(3, 5)
    assert hinton_kd(x, x, 2.0).item() == pytest.approx(0.0, abs=1e-6)
    a, b = torch.randn(2, 4), torch.randn(2, 4)
    per_sample = [hinton_kd(a[i : i + 1], b[i : i + 1], 3.0).item() for i in range(2)]
    assert hinton_kd(a, b, 3.0).item() == pytest.approx(sum(per_sample) / 2, rel=1e-5)


def test_decoupled_kd_closed_form():
    s, t, T, y = [1.0, 2.0, 0.5], [0.2, 3.0, -1.0], 4.0, 1
    p_t, p_s = softmax(t, T), softmax(s, T)
    b_t, b_s = [p_t[y], 1 - p_t[y]], [p_s[y], 1 - p_s[y]]
    tckd = sum(a * math.log(a / b) for a, b in zip(b_t, b_s))
    q_t, q_s = softmax([t[0], t[2]], T), softmax([s[0], s[2]], T)  # the non-target classes alone
    nckd = sum(a * math.log(a / b) for a, b in zip(q_t, q_s))
    got = decoupled_kd(torch.tensor([s]), torch.tensor([t]), torch.tensor([y]), T, alpha=0.5, beta=8.0)
    assert got.item() == pytest.approx((0.5 * tckd + 8.0 * nckd) * T * T, rel=1e-4)  # float32, β amplifies


def test_hinton_kd_is_decoupled_kd_with_beta_one_minus_the_teachers_target_probability():
    torch.manual_seed(0)
    s, t, y, T = torch.randn(6, 10) * 3, torch.randn(6, 10) * 3, torch.randint(0, 10, (6,)), 4.0
    for i in range(6):
        p_target = torch.softmax(t[i] / T, -1)[y[i]].item()
        dkd = decoupled_kd(s[i : i + 1], t[i : i + 1], y[i : i + 1], T, alpha=1.0, beta=1 - p_target)
        assert dkd.item() == pytest.approx(hinton_kd(s[i : i + 1], t[i : i + 1], T).item(), rel=1e-5)
    assert decoupled_kd(s, s, y, T).item() == pytest.approx(0.0, abs=1e-5)


def test_decoupled_kd_gradients_are_finite_with_confident_teachers():
    s = torch.tensor([[30.0, -30.0, 0.0]], requires_grad=True)
    decoupled_kd(s, torch.tensor([[-50.0, 50.0, 0.0]]), torch.tensor([1]), 1.0).backward()
    assert torch.isfinite(s.grad).all() and s.grad.abs().sum() > 0


def test_alpha_mix_with_hard_labels():
    s, t, y = torch.tensor([[1.0, 0.0]]), torch.tensor([[0.0, 1.0]]), torch.tensor([0])
    kd = hinton_kd(s, t, 2.0).item()
    ce = math.log(1 + math.exp(-1.0))  # CE of logits [1, 0] for class 0
    assert kd_with_labels(s, t, y, 2.0, alpha=0.7).item() == pytest.approx(0.7 * kd + 0.3 * ce, rel=1e-5)
    assert kd_with_labels(s, t, None, 2.0, alpha=0.7).item() == pytest.approx(kd, rel=1e-6)  # label-free


def test_feature_hint_mse_cosine_and_adapter():
    s, t = torch.ones(1, 2, 2, 2), torch.full((1, 2, 2, 2), 3.0)
    assert FeatureHint(2, 2, "mse")(s, t).item() == pytest.approx(4.0)
    assert FeatureHint(2, 2, "cosine")(s, t).item() == pytest.approx(0.0, abs=1e-6)
    assert FeatureHint(2, 2, "cosine")(s, -t).item() == pytest.approx(2.0)
    hint = FeatureHint(3, 5)
    assert (
        isinstance(hint.adapter, torch.nn.Conv2d) and hint(torch.randn(2, 3, 4, 4), torch.randn(2, 5, 4, 4)).dim() == 0
    )
    with pytest.raises(ValueError, match="differ in shape"):
        FeatureHint(2, 2)(torch.randn(1, 2, 4, 4), torch.randn(1, 2, 2, 2))


def test_attention_transfer_closed_form():
    f = torch.zeros(1, 2, 1, 2)
    f[0, :, 0, 0] = torch.tensor([1.0, 1.0])  # energy only at the first position
    g = torch.zeros(1, 2, 1, 2)
    g[0, :, 0, 1] = torch.tensor([2.0, 0.0])  # energy only at the second
    assert attention_map(f).tolist() == [[1.0, 0.0]]
    assert attention_transfer(f, g).item() == pytest.approx(2.0)  # |[1,0] − [0,1]|²
    assert attention_transfer(f, 3 * f).item() == pytest.approx(0.0, abs=1e-7)  # scale-free


def test_clip_keeps_direction_and_bounds_value():
    w = torch.tensor(2.0, requires_grad=True)
    loss = clip_term(w * w, 0.3)
    assert loss.item() == pytest.approx(0.3)
    loss.backward()
    assert w.grad.item() == pytest.approx(0.3 / 4 * 4)  # d/dw (w²·0.3/4) at w=2
    small = torch.tensor(0.1, requires_grad=True)
    assert clip_term(small, 0.3) is small


def test_compensation_weights_balance_gradient_norms():
    p = torch.tensor([1.0, 1.0], requires_grad=True)
    terms = {"big": (p * 10).sum(), "small": (p * 1).sum()}  # gradient norms 10·√2 and √2
    w = compensation_weights(terms, [p], {"big": 1.0, "small": 1.0})
    mean = (10 + 1) / 2
    assert w["big"] == pytest.approx(max(0.5, mean / 10))  # 0.55
    assert w["small"] == pytest.approx(min(2.0, mean / 1))  # clamped at 2.0


@pytest.mark.parametrize(
    "kind,p,expected",
    [
        ("constant", 0.5, 6.0),
        ("linear", 0.25, 5.0),
        ("linear", 1.0, 2.0),
        ("cosine", 0.0, 6.0),
        ("cosine", 0.5, 4.0),
        ("cosine", 1.0, 2.0),
    ],
)
def test_schedules(kind, p, expected):
    assert Schedule(kind, 6.0, 2.0).at(p) == pytest.approx(expected)


def test_learnable_temperature_trains_and_stays_in_bounds():
    temp = LearnableTemperature(4.0, 1.0, 10.0)
    assert temp().item() == pytest.approx(4.0, rel=1e-6)
    opt = torch.optim.SGD(temp.parameters(), lr=100.0)
    for _ in range(50):
        opt.zero_grad()
        (-temp()).backward()  # push it up as hard as possible
        opt.step()
    assert 9.0 < temp().item() <= 10.0
    with pytest.raises(ValueError):
        LearnableTemperature(0.5)
