"""Calibration observers: running min/max, EMA arithmetic by hand, per-channel axes, the percentile
histogram against np.percentile, the least-squares range against a brute-force search, and NaN/Inf
errors that name the tensor and sample."""

from __future__ import annotations

import json

import numpy as np
import pytest

from edgekd.errors import ConfigError, DataError
from edgekd.quant.observers import (
    OBSERVERS,
    EMAMinMaxObserver,
    MinMaxObserver,
    MSEObserver,
    PercentileObserver,
    make_observer,
)
from edgekd.quant.qparams import ACT_INT8_ASYM, ACT_INT8_SYM, SCHEMES, fake_quantize, qparams_from_range


def exact_observer(kind: str):
    """An observer whose range is the plain min/max on a single batch (percentile 100)."""
    return make_observer(kind, **({"percentile": 100.0} if kind == "percentile" else {}))


def squared_error(x: np.ndarray, qp) -> float:
    return float(np.sum((fake_quantize(x, qp).astype(np.float64) - x) ** 2))


def batch(lo: float, hi: float) -> np.ndarray:
    return np.float32([lo, (lo + hi) / 2, hi])


# --- min/max and EMA -------------------------------------------------------------------------


def test_minmax_keeps_the_extremes_of_all_batches():
    obs = MinMaxObserver()
    for b in (batch(-1, 2), batch(-3, 1), batch(0, 5)):
        obs.update(b)
    lo, hi = obs.min_max()
    assert (lo, hi) == (-3.0, 5.0) and lo.shape == () and obs.batches == 3


def test_ema_by_hand_with_half():
    obs = EMAMinMaxObserver(averaging_constant=0.5)
    obs.update(batch(-1, 2))  # the first batch sets the range
    assert obs.min_max() == (-1.0, 2.0)
    obs.update(batch(-3, 4))  # -1 + 0.5·(-3 + 1) = -2;  2 + 0.5·(4 - 2) = 3
    assert obs.min_max() == (-2.0, 3.0)
    obs.update(batch(1, 5))  # -2 + 0.5·(1 + 2) = -0.5;  3 + 0.5·(5 - 3) = 4
    assert obs.min_max() == (-0.5, 4.0)
    assert obs.qparams(ACT_INT8_ASYM) == qparams_from_range(-0.5, 4.0, ACT_INT8_ASYM)


def test_ema_by_hand_with_the_default_constant():
    obs = EMAMinMaxObserver()
    assert obs.averaging_constant == 0.01
    for b in (batch(0, 1), batch(-1, 2), batch(0, 0)):
        obs.update(b)
    lo, hi = obs.min_max()
    # min: 0 → 0 + 0.01·(-1 - 0) = -0.01 → -0.01 + 0.01·(0 + 0.01) = -0.0099
    # max: 1 → 1 + 0.01·(2 - 1) = 1.01 → 1.01 + 0.01·(0 - 1.01) = 0.9999
    assert lo == pytest.approx(-0.0099, abs=1e-15) and hi == pytest.approx(0.9999, abs=1e-15)


def test_ema_with_constant_one_keeps_only_the_last_batch():
    obs = EMAMinMaxObserver(averaging_constant=1.0)
    obs.update(batch(-5, 5))
    obs.update(batch(-1, 2))
    assert obs.min_max() == (-1.0, 2.0)


@pytest.mark.parametrize("c", [0.0, -0.1, 1.5])
def test_ema_constant_outside_0_1_is_refused(c):
    with pytest.raises(ConfigError, match="averaging_constant"):
        EMAMinMaxObserver(averaging_constant=c)


# --- per channel -----------------------------------------------------------------------------


@pytest.mark.parametrize("ch_axis, axis", [(0, 0), (1, 1), (2, 2), (-1, 2), (-3, 0)])
@pytest.mark.parametrize("cls", [MinMaxObserver, EMAMinMaxObserver])
def test_per_channel_reduces_over_every_other_axis(cls, ch_axis, axis):
    rng = np.random.default_rng(0)
    batches = [rng.normal(size=(2, 3, 4)).astype(np.float32) for _ in range(3)]
    obs = cls(ch_axis=ch_axis)
    for b in batches:
        obs.update(b)
    others = tuple(i for i in range(3) if i != axis)
    if cls is MinMaxObserver:
        whole = np.concatenate(batches, axis=0 if axis != 0 else 1)
        expected = whole.min(axis=others), whole.max(axis=others)
    else:
        lo, hi = batches[0].min(axis=others).astype(np.float64), batches[0].max(axis=others).astype(np.float64)
        for b in batches[1:]:
            lo, hi = lo + 0.01 * (b.min(axis=others) - lo), hi + 0.01 * (b.max(axis=others) - hi)
        expected = lo, hi
    lo, hi = obs.min_max()
    assert lo.shape == (batches[0].shape[axis],)
    np.testing.assert_allclose(lo, expected[0], rtol=0, atol=1e-12)
    np.testing.assert_allclose(hi, expected[1], rtol=0, atol=1e-12)
    qp = obs.qparams(ACT_INT8_SYM)
    assert qp.axis == axis and qp.scale.shape == lo.shape


def test_per_channel_channel_count_must_not_change():
    obs = MinMaxObserver(ch_axis=1)
    obs.update(np.zeros((2, 3, 4), np.float32))
    obs.update(np.zeros((5, 3, 1), np.float32))  # other axes may vary
    with pytest.raises(DataError, match="3 channels"):
        obs.update(np.zeros((2, 4, 4), np.float32), tensor="conv1")
    with pytest.raises(ConfigError, match="out of range"):
        MinMaxObserver(ch_axis=3).update(np.zeros((2, 3, 4), np.float32))
    with pytest.raises(ConfigError):
        MinMaxObserver(ch_axis=1.0)


# --- percentile ------------------------------------------------------------------------------


def test_percentile_matches_np_percentile_within_a_bin_while_the_range_grows():
    rng = np.random.default_rng(1)
    # Growing spread and a shifting centre force several widenings, to both sides.
    batches = [(rng.normal(size=20_000) * (1 + i) + 0.5 * i * (-1) ** i).astype(np.float32) for i in range(8)]
    obs = PercentileObserver(percentile=99.9, bins=1024)
    for b in batches:
        obs.update(b)
    data = np.concatenate(batches)
    lo, hi = obs.min_max()
    expected_lo, expected_hi = np.percentile(data, [0.1, 99.9])
    assert abs(lo - expected_lo) <= obs.width and abs(hi - expected_hi) <= obs.width
    assert obs.counts.shape == (1024,) and obs.counts.sum() == data.size  # bounded memory, no lost counts
    assert obs.lo <= data.min() and obs.lo + obs.bins * obs.width >= data.max()
    assert obs.width * obs.bins <= 2 * (data.max() - data.min())  # widening costs at most 2× resolution


@pytest.mark.parametrize("centre", [0.0, 3e4, -1e6])
def test_percentile_of_float32_values_far_from_zero_stays_within_a_bin(centre):
    # Values are binned in float32 (the fast path): a widened histogram's edge is off the float32 grid,
    # and far from zero rounding it must not move the bins.
    rng = np.random.default_rng(2)
    batches = [(centre + rng.normal(size=50_000) * spread).astype(np.float32) for spread in (0.01, 0.03)]
    obs = PercentileObserver(percentile=99.0, bins=512)
    for b in batches:  # the widening puts the edge off the float32 grid
        obs.update(b)
    data = np.concatenate(batches)
    lo, hi = obs.min_max()
    expected_lo, expected_hi = np.percentile(data.astype(np.float64), [1.0, 99.0])
    assert abs(lo - expected_lo) <= obs.width and abs(hi - expected_hi) <= obs.width


def test_percentile_100_is_the_exact_min_max():
    obs = PercentileObserver(percentile=100.0)
    obs.update(np.float32([0.1, 0.2]))
    obs.update(np.float32([-7.25, 3.5]))
    assert obs.min_max() == (-7.25, 3.5)


def test_percentile_starting_from_a_constant_batch():
    obs = PercentileObserver(percentile=99.0, bins=256)
    obs.update(np.full(100, 2.0, np.float32))
    assert obs.min_max() == (2.0, 2.0)
    uniform = np.linspace(-10, 10, 10_001, dtype=np.float32)
    obs.update(uniform)
    data = np.concatenate([np.full(100, 2.0), uniform])
    lo, hi = obs.min_max()
    expected_lo, expected_hi = np.percentile(data, [1.0, 99.0])
    assert abs(lo - expected_lo) <= obs.width and abs(hi - expected_hi) <= obs.width


@pytest.mark.parametrize("kw", [{"ch_axis": 0}, {"percentile": 30.0}, {"percentile": 100.5}, {"bins": 1}])
def test_percentile_arguments_are_validated(kw):
    with pytest.raises(ConfigError):
        PercentileObserver(**kw)


# --- least squared error -------------------------------------------------------------------


@pytest.mark.parametrize("scheme", sorted(SCHEMES))
def test_mse_range_clips_rare_outliers_and_beats_min_max_on_the_data(scheme):
    rng = np.random.default_rng(0)
    x = np.concatenate([rng.normal(1.0, 1.0, 200_000), [40.0, -30.0]]).astype(np.float32)
    obs = MSEObserver()
    for part in np.array_split(x, 7):
        obs.update(part)
    chosen, full = obs.qparams(SCHEMES[scheme]), qparams_from_range(x.min(), x.max(), SCHEMES[scheme])
    assert float(chosen.scale) < 0.7 * float(full.scale)  # two values in 200,002 do not set the grid
    assert squared_error(x, chosen) < 0.7 * squared_error(x, full)
    # within 3 % of the best factor on the data itself (the histogram sees bin centres, not the values)
    brute = min(
        squared_error(x, qparams_from_range(x.min() * f, x.max() * f, SCHEMES[scheme])) for f in MSEObserver.FACTORS
    )
    assert squared_error(x, chosen) <= 1.03 * brute


def test_mse_range_keeps_a_tail_that_carries_mass():
    x = np.random.default_rng(1).uniform(0.0, 6.0, 100_000).astype(np.float32)
    obs = MSEObserver()
    obs.update(x)
    assert float(obs.qparams(ACT_INT8_ASYM).scale) * 255 == pytest.approx(6.0, rel=0.02)


# --- errors and bookkeeping ------------------------------------------------------------------


@pytest.mark.parametrize("kind", sorted(OBSERVERS))
def test_non_finite_values_name_the_tensor_the_sample_and_the_count(kind):
    obs = exact_observer(kind)
    obs.update(np.float32([1.0, 2.0]))
    bad = np.float32([np.nan, 1.0, np.inf, -np.inf, np.nan])
    with pytest.raises(DataError) as e:
        obs.update(bad, tensor="layer3.conv2", sample=17)
    message = e.value.message
    assert "'layer3.conv2'" in message and "sample 17" in message and "4 non-finite" in message
    assert "2 NaN" in message and "2 Inf" in message and e.value.hint
    with pytest.raises(DataError, match="1 non-finite"):
        obs.update(np.float32([np.inf]))
    assert obs.batches == 1 and obs.min_max() == (1.0, 2.0)  # the bad batch changed nothing


@pytest.mark.parametrize("kind", sorted(OBSERVERS))
def test_no_data_empty_batches_and_integer_input(kind):
    obs = exact_observer(kind)
    with pytest.raises(DataError, match="no data"):
        obs.qparams(ACT_INT8_ASYM)
    obs.update(np.zeros((0, 3), np.float32))
    assert obs.batches == 0
    obs.update(np.arange(-3, 5, dtype=np.int32))
    assert obs.min_max() == (-3.0, 4.0)


@pytest.mark.parametrize("kind", sorted(OBSERVERS))
def test_to_dict_is_json(kind):
    obs = exact_observer(kind)
    assert json.loads(json.dumps(obs.to_dict()))["batches"] == 0
    obs.update(np.float32([-1.0, 3.0]))
    d = json.loads(json.dumps(obs.to_dict()))
    assert d["kind"] == kind and d["batches"] == 1 and (d["min"], d["max"]) == (-1.0, 3.0)


def test_make_observer_by_name():
    assert set(OBSERVERS) == {"ema", "minmax", "percentile", "mse"}
    obs = make_observer("ema", averaging_constant=0.2, ch_axis=1)
    assert isinstance(obs, EMAMinMaxObserver) and obs.averaging_constant == 0.2 and obs.ch_axis == 1
    with pytest.raises(ConfigError) as e:
        make_observer("kl")
    assert "ema, minmax, mse, percentile" in e.value.hint
    with pytest.raises(ConfigError, match="percentile") as e:
        make_observer("minmax", percentile=99.0)
    assert "ch_axis" in e.value.hint
