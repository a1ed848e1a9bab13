"""The trtexec summary parser, on outputs recorded from real runs of TensorRT 7.x to 10.16 (tests/data/trtexec,
each file's first line names its source). The numbers below were read off those files by eye."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from edgekd.backends.tensorrt.trtexec import TrtexecSummary, _decode_version, parse_trtexec, to_bench_latency
from edgekd.bench import runner
from edgekd.errors import EdgekdError, TrtexecParseError

DATA = Path(__file__).parent / "data" / "trtexec"

EXPECTED = {
    "trt7_average_runs.txt": dict(
        format="average-runs-7.x",
        tensorrt_version=None,
        throughput_qps=18.0758,
        latency_ms={"min": 55.1414, "max": 57.542, "mean": 55.3094, "median": 55.2737, "p99": 57.542},
        end_to_end_ms={"min": 55.1486, "max": 57.561, "mean": 55.3221, "median": 55.2913, "p99": 57.561},
        enqueue_ms={"min": 3.87885, "max": 5.10864, "median": 4.06059},
        gpu_compute_ms={"min": 55.0791, "max": 57.4766, "mean": 55.2468, "median": 55.2111, "p99": 57.4766},
        h2d_ms={},
        d2h_ms={},
        total_host_walltime_s=3.09807,
        total_gpu_compute_s=3.09382,
        timed_queries=56,
    ),
    "trt7_no_enqueue_average_runs.txt": dict(
        format="average-runs-7.x",
        tensorrt_version=None,
        throughput_qps=870.434,
        latency_ms={"min": 73.1875, "max": 79.78, "mean": 73.515, "median": 73.5, "p99": 73.75},
        end_to_end_ms={"min": 73.1875, "max": 79.7888, "mean": 73.5256, "median": 73.5119, "p99": 73.75},
        enqueue_ms={},
        gpu_compute_ms={"min": 71.5625, "max": 78.0872, "mean": 71.8974, "median": 71.875, "p99": 72.125},
        total_host_walltime_s=735.265,
        total_gpu_compute_s=718.974,
        timed_queries=None,
    ),
    "trt8.2_summary.txt": dict(
        format="summary-8.x",
        tensorrt_version="8.2.1",
        throughput_qps=72.2544,
        latency_ms={"min": 13.7075, "max": 14.8861, "mean": 13.8259, "median": 13.7999, "p99": 14.8121},
        end_to_end_ms={"min": 13.7175, "max": 14.9229, "mean": 13.8394, "median": 13.8109, "p99": 14.831},
        enqueue_ms={"min": 6.08826, "max": 9.51123, "mean": 7.35561, "median": 7.19287, "p99": 9.49573},
        h2d_ms={"min": 0.117554, "max": 0.13623, "mean": 0.120202, "median": 0.119202, "p99": 0.128906},
        gpu_compute_ms={"min": 13.5784, "max": 14.7576, "mean": 13.6963, "median": 13.6698, "p99": 14.6803},
        d2h_ms={"min": 0.00830078, "max": 0.0100708, "mean": 0.00940053, "median": 0.00939941, "p99": 0.0100098},
        total_host_walltime_s=3.03096,
        total_gpu_compute_s=2.99948,
    ),
    "trt8.4_summary.txt": dict(
        format="summary-8.x",
        tensorrt_version="8.4.0",
        throughput_qps=41087.7,
        latency_ms={"min": 0.387207, "max": 0.447357, "mean": 0.402238, "median": 0.401947, "p99": 0.420288},
        end_to_end_ms={},
        enqueue_ms={"min": 0.0830078, "max": 0.229004, "mean": 0.090497, "median": 0.0871582, "p99": 0.126099},
        h2d_ms={"min": 0.00622559, "max": 0.0571899, "mean": 0.0104126, "median": 0.00952148, "p99": 0.0272217},
        gpu_compute_ms={"min": 0.375977, "max": 0.403564, "mean": 0.388221, "median": 0.388443, "p99": 0.393188},
        d2h_ms={"min": 0.00195312, "max": 0.00537109, "mean": 0.00360451, "median": 0.00366211, "p99": 0.00488281},
        total_host_walltime_s=3.00119,
        total_gpu_compute_s=2.99202,
    ),
    "trt8.4_cv_warning_summary.txt": dict(
        format="summary-8.x",
        tensorrt_version=None,
        throughput_qps=716.632,
        latency_ms={"min": 1.3476, "max": 1.5657, "mean": 1.38629, "median": 1.38037, "p99": 1.55853},
        enqueue_ms={"min": 0.0109863, "max": 0.0975342, "mean": 0.022185, "median": 0.0200195, "p99": 0.071167},
        h2d_ms={"min": 0.0, "max": 0.0, "mean": 0.0, "median": 0.0, "p99": 0.0},
        gpu_compute_ms={"min": 1.3476, "max": 1.5657, "mean": 1.38629, "median": 1.38037, "p99": 1.55853},
        total_host_walltime_s=3.00294,
        total_gpu_compute_s=2.9833,
        gpu_cv_percent=2.10486,
    ),
    "trt8.5_summary.txt": dict(
        format="summary-8.x",
        tensorrt_version="8.5.2",
        throughput_qps=97.8649,
        latency_ms={
            "min": 10.642,
            "max": 10.9861,
            "mean": 10.7971,
            "median": 10.7972,
            "p90": 10.9329,
            "p95": 10.949,
            "p99": 10.9744,
        },
        gpu_compute_ms={
            "min": 10.0343,
            "max": 10.3575,
            "mean": 10.1824,
            "median": 10.1851,
            "p90": 10.3206,
            "p95": 10.338,
            "p99": 10.356,
        },
        d2h_ms={
            "min": 0.17041,
            "max": 0.312134,
            "mean": 0.29821,
            "median": 0.298584,
            "p90": 0.302856,
            "p95": 0.304077,
            "p99": 0.310608,
        },
        total_host_walltime_s=3.0348,
        total_gpu_compute_s=3.02418,
        timed_queries=None,
        gpu_cv_percent=None,
    ),
    "trt10.16_summary.txt": dict(
        format="summary-8.x",
        tensorrt_version="10.16.0",
        throughput_qps=12634.0,
        latency_ms={
            "min": 0.0454102,
            "max": 0.648438,
            "mean": 0.0698211,
            "median": 0.0627747,
            "p90": 0.0787354,
            "p95": 0.0864258,
            "p99": 0.229492,
        },
        enqueue_ms={
            "min": 0.0483398,
            "max": 0.608887,
            "mean": 0.0561581,
            "median": 0.0534668,
            "p90": 0.0667725,
            "p95": 0.0695801,
            "p99": 0.0864258,
        },
        h2d_ms={
            "min": 0.00286865,
            "max": 0.278198,
            "mean": 0.00372425,
            "median": 0.00354004,
            "p90": 0.00421143,
            "p95": 0.00463867,
            "p99": 0.0057373,
        },
        gpu_compute_ms={
            "min": 0.0388184,
            "max": 0.640991,
            "mean": 0.0613819,
            "median": 0.0549927,
            "p90": 0.0695801,
            "p95": 0.0766602,
            "p99": 0.217163,
        },
        d2h_ms={
            "min": 0.00317383,
            "max": 0.0323486,
            "mean": 0.00471571,
            "median": 0.00463867,
            "p90": 0.00561523,
            "p95": 0.006073,
            "p99": 0.00878906,
        },
        end_to_end_ms={},
        total_host_walltime_s=3.00016,
        total_gpu_compute_s=2.32662,
        timed_queries=37904,
        gpu_cv_percent=45.6534,
    ),
}

UNSTABLE = (
    "GPU compute time is unstable, with coefficient of variance = {}%. If not already in use, locking GPU "
    "clock frequency or adding --useSpinWait may improve the stability."
)


def read(name: str) -> str:
    return (DATA / name).read_text()


def test_every_recorded_output_has_a_source_and_expectations():
    names = sorted(p.name for p in DATA.glob("*.txt"))
    assert names == sorted(EXPECTED)
    for name in names:
        assert read(name).startswith("# source: "), name


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_recorded_output(name):
    summary = parse_trtexec(read(name))
    for key, value in EXPECTED[name].items():
        assert getattr(summary, key) == value, key


def test_no_release_prints_microseconds():
    """trtexec prints ms for every latency and s for walltimes in every recorded release (as its
    sampleReporting.cpp does); microseconds are still read, below."""
    for name in EXPECTED:
        body = "\n".join(line for line in read(name).splitlines() if not line.startswith("#"))
        assert not re.search(r"\d (us|\u00b5s)\b", body), name


def test_units_are_normalised_to_ms_and_s():
    text = "\n".join(
        [
            "=== Performance summary ===",
            "Throughput: 1020.87 qps",
            "Latency: min = 950 us, max = 1.8 ms, mean = 980 us, median = 970 us, percentile(99.9%) = 0.0011 s",
            "Total Host Walltime: 3000 ms",
            "Total GPU Compute Time: 2.5 s",
        ]
    )
    s = parse_trtexec(text)
    assert s.latency_ms == pytest.approx({"min": 0.95, "max": 1.8, "mean": 0.98, "median": 0.97, "p99.9": 1.1})
    assert s.total_host_walltime_s == pytest.approx(3.0) and s.total_gpu_compute_s == 2.5
    assert s.throughput_qps == 1020.87


def test_prefixes_are_optional_and_may_be_stacked():
    text = read("trt10.16_summary.txt")
    no_time = re.sub(r"(?m)^\[\d\d/\d\d/\d{4}-[\d:]+\] ", "", text)  # "[I] Throughput: ..." (older builds, pastes)
    bare = re.sub(r"(?m)^(\[[^\]\s]*\]\s*)+", "", text)  # "Throughput: ..." (pasted from a terminal)
    wrapped = re.sub(r"(?m)^\[", "[INFO] [", text)  # a wrapper logger adding its own tag
    assert "[04/" not in no_time and "[I]" not in bare and "[INFO] [04/" in wrapped
    expected = parse_trtexec(text)
    for variant in (no_time, bare, wrapped):
        assert parse_trtexec(variant) == expected
    crlf = parse_trtexec(read("trt7_average_runs.txt").replace("\n", "\r\n"))
    assert crlf == parse_trtexec(read("trt7_average_runs.txt"))


def test_variance_warning():
    s = parse_trtexec(read("trt10.16_summary.txt"))
    assert s.variance_warning == UNSTABLE.format("45.6534") and s.gpu_cv_percent == 45.6534
    assert s.warnings == (
        "Throughput may be bound by Enqueue Time rather than GPU Compute and the GPU may be "
        "under-utilized. If not already in use, --useCudaGraph (utilize CUDA graphs where possible) "
        "may increase the throughput.",
        UNSTABLE.format("45.6534"),
    )
    s = parse_trtexec(read("trt8.4_cv_warning_summary.txt"))
    assert s.variance_warning == UNSTABLE.format("2.10486") and s.warnings == (s.variance_warning,)
    for name in ("trt8.2_summary.txt", "trt8.4_summary.txt", "trt8.5_summary.txt", "trt7_average_runs.txt"):
        s = parse_trtexec(read(name))
        assert s.variance_warning is None and s.gpu_cv_percent is None and s.warnings == ()


def test_warnings_from_stderr_joined_after_stdout():
    """trtexec logs [W] to stderr: the Jetson runner joins stdout + stderr, so the warnings land after PASSED."""
    lines = read("trt10.16_summary.txt").splitlines()
    stdout = [line for line in lines if "] [W] " not in line]
    stderr = [line for line in lines if "] [W] " in line]
    assert len(stderr) == 4
    assert parse_trtexec("\n".join(stdout) + "\n" + "\n".join(stderr)) == parse_trtexec("\n".join(lines))


def test_comment_lines_only_skipped_at_the_top():
    text = read("trt8.5_summary.txt")
    uncommented = "\n".join(line for line in text.splitlines() if not line.startswith("#"))
    assert parse_trtexec(uncommented) == parse_trtexec(text)


def test_last_run_wins_and_keeps_its_own_version():
    new, old = read("trt10.16_summary.txt"), read("trt8.2_summary.txt")
    assert parse_trtexec(old + "\n" + new) == parse_trtexec(new)
    assert parse_trtexec(new + "\n" + old).tensorrt_version == "8.2.1"
    mixed = parse_trtexec(old + "\n" + read("trt7_average_runs.txt"))
    assert mixed.format == "average-runs-7.x" and mixed.tensorrt_version is None


@pytest.mark.parametrize(
    "tag, version",
    [
        ("8001", "8.0.1"),
        ("8201", "8.2.1"),
        ("8400", "8.4.0"),
        ("8502", "8.5.2"),
        ("8601", "8.6.1"),
        ("100200", "10.2.0"),
        ("101600", "10.16.0"),
        ("8.6.3", "8.6.3"),
    ],
)
def test_version_forms(tag, version):
    assert _decode_version(tag) == version


def tail_of(message: str) -> list[str]:
    return [line.strip() for line in message.split("\n")[1:]]


def test_truncated_summary_raises_with_the_tail():
    lines = read("trt10.16_summary.txt").splitlines()
    cut = lines[: next(i for i, line in enumerate(lines) if "Throughput:" in line) + 1]
    with pytest.raises(TrtexecParseError) as e:
        parse_trtexec("\n".join(cut))
    assert "incomplete" in e.value.message
    assert tail_of(e.value.message)[-1] == "[04/30/2026-18:15:48] [I] Throughput: 12634 qps"
    assert isinstance(e.value, EdgekdError) and e.value.hint and "hint:" in str(e.value)

    old = read("trt7_average_runs.txt").splitlines()
    with pytest.raises(TrtexecParseError, match="incomplete"):
        parse_trtexec("\n".join(old[: old.index("[01/12/2021-17:36:31] [I] Host Latency") + 1]))


def test_trace_without_summary_raises():
    lines = read("trt10.16_summary.txt").splitlines()
    cut = lines[: next(i for i, line in enumerate(lines) if "=== Performance summary ===" in line)]
    with pytest.raises(TrtexecParseError, match="no trtexec performance summary") as e:
        parse_trtexec("\n".join(cut))
    kept = [line.strip() for line in cut if line.strip() and not line.startswith("#")]
    assert tail_of(e.value.message) == kept[-15:] and "Average on 10 runs" in kept[-2]


def test_garbage_raises_with_the_tail():
    garbage = "\n".join(f"line {i}" for i in range(40)) + "\nSegmentation fault (core dumped)\n"
    with pytest.raises(TrtexecParseError) as e:
        parse_trtexec(garbage)
    assert tail_of(e.value.message) == [f"line {i}" for i in range(26, 40)] + ["Segmentation fault (core dumped)"]
    with pytest.raises(TrtexecParseError, match="empty"):
        parse_trtexec("# source: nothing\n\n")


def test_to_bench_latency_matches_the_runner_shape():
    assert set(to_bench_latency(parse_trtexec(read("trt8.5_summary.txt")))) == set(runner.summarize([1.0, 2.0], 1))
    assert to_bench_latency(parse_trtexec(read("trt8.5_summary.txt"))) == {
        "iterations": None,
        "mean_ms": 10.7971,
        "std_ms": None,
        "min_ms": 10.642,
        "max_ms": 10.9861,
        "p50_ms": 10.7972,
        "p90_ms": 10.9329,
        "p99_ms": 10.9744,
        "throughput_fps": 97.8649,
    }
    assert to_bench_latency(parse_trtexec(read("trt7_average_runs.txt"))) == {
        "iterations": 56,
        "mean_ms": 55.3094,
        "std_ms": None,
        "min_ms": 55.1414,
        "max_ms": 57.542,
        "p50_ms": 55.2737,
        "p90_ms": None,
        "p99_ms": 57.542,
        "throughput_fps": 18.0758,
    }
    assert to_bench_latency(parse_trtexec(read("trt10.16_summary.txt")))["iterations"] == 37904


def test_zero_qps_is_no_throughput():
    """TensorRT 7.x prints "throughput: 0 qps" for explicit-batch engines; that is not a measurement."""
    s = TrtexecSummary(format="average-runs-7.x", throughput_qps=0.0, latency_ms={"mean": 1.66069})
    assert to_bench_latency(s)["throughput_fps"] is None and to_bench_latency(s)["mean_ms"] == 1.66069
