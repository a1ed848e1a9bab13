"""Read the performance summary that TensorRT's ``trtexec`` prints, from TensorRT 7.x to 10.x.

Two shapes exist (tests/data/trtexec holds a recorded output of each release's variant):

* ``average-runs-7.x`` (TensorRT 7.x): after the "Average on N runs" trace, blocks headed ``Host Latency``
  (``Host latency`` in the earliest 7.x), ``Enqueue Time`` (absent in the earliest) and ``GPU Compute``, one
  ``min: 1.2 ms (end to end 1.3 ms)`` line per statistic, ``percentile: 2.6 ms at 99%``, ``throughput: N qps``,
  ``walltime: N s`` and ``total compute time: N s``.
* ``summary-8.x`` (TensorRT 8.x to 10.x): after ``=== Performance summary ===``, one line per metric,
  ``Latency: min = 0.95 ms, max = ..., mean = ..., median = ..., percentile(99%) = ... ms``. 8.0-8.2 add an
  ``End-to-End Host Latency`` line; 8.4 drops it and adds the coefficient-of-variance warning; from 8.5 every
  line carries ``percentile(90%)``, ``(95%)`` and ``(99%)`` (the list is ``--percentile``'s).

Every release prints times in ms (walltimes in s), per trtexec's ``sampleReporting.cpp``; ``us`` is read too
and everything is normalised to ms. Lines may carry ``[MM/DD/YYYY-HH:MM:SS]`` and ``[I]``/``[W]`` prefixes or
none. When the text holds several runs, the last summary is read. The module has no dependency beyond the
standard library.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from edgekd.errors import TrtexecParseError

SUMMARY, AVERAGE_RUNS = "summary-8.x", "average-runs-7.x"
TAIL_LINES = 15

_NUM = r"[-+]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][-+]?\d+)?|[-+]?inf|nan"
_TO_MS = {"ms": 1.0, "us": 1e-3, "\u00b5s": 1e-3, "\u03bcs": 1e-3, "s": 1e3}
_UNIT = r"ms|us|\u00b5s|\u03bcs|s"
_PREFIX = re.compile(r"^\s*((?:\[[^\]\s]*\]\s*)+)")  # [05/18/2023-21:52:15] [I] [TRT] ...
_STAT = re.compile(rf"(min|max|mean|median|percentile\(([\d.]+)%\))\s*=\s*({_NUM})\s+({_UNIT})\b")
_OLD_STAT = re.compile(
    rf"^(min|max|mean|median):\s*({_NUM})\s+({_UNIT})\b"
    rf"(?:\s*\(end to end\s+({_NUM})\s+({_UNIT})\))?"
)
_OLD_PCT = re.compile(
    rf"^percentile:\s*({_NUM})\s+({_UNIT})\s+at\s+([\d.]+)%"
    rf"(?:\s*\(end to end\s+({_NUM})\s+({_UNIT})\s+at\s+[\d.]+%\))?"
)
_VALUE = re.compile(rf"^({_NUM})\s+({_UNIT}|qps)\b")
_CV = re.compile(rf"coefficient of variance\s*=\s*({_NUM})\s*%")
_QUERIES = re.compile(r"^Timing trace has (\d+) queries over")
_VERSION_LINE = re.compile(r"^TensorRT version:\s*(\S+)")
_VERSION_TAG = re.compile(r"\[TensorRT v(\d+)\]")

# summary-8.x line label -> TrtexecSummary field
_SUMMARY_STATS = {
    "Latency": "latency_ms",
    "End-to-End Host Latency": "end_to_end_ms",
    "Enqueue Time": "enqueue_ms",
    "H2D Latency": "h2d_ms",
    "GPU Compute Time": "gpu_compute_ms",
    "D2H Latency": "d2h_ms",
}
# average-runs-7.x block header -> TrtexecSummary field
_OLD_BLOCKS = {
    "Host Latency": "latency_ms",
    "Host latency": "latency_ms",
    "Enqueue Time": "enqueue_ms",
    "GPU Compute": "gpu_compute_ms",
}


@dataclass(frozen=True)
class TrtexecSummary:
    """One trtexec run's summary. Times are in ms; dicts hold min, max, mean, median and p90/p95/p99 (p<N> for
    any other ``--percentile``) where that release printed them."""

    format: str
    tensorrt_version: str | None = None
    throughput_qps: float | None = None
    latency_ms: dict = field(default_factory=dict)  # host latency: H2D + GPU compute + D2H of one query
    gpu_compute_ms: dict = field(default_factory=dict)
    enqueue_ms: dict = field(default_factory=dict)
    h2d_ms: dict = field(default_factory=dict)
    d2h_ms: dict = field(default_factory=dict)
    end_to_end_ms: dict = field(default_factory=dict)  # 7.x "(end to end ...)", 8.0-8.2 "End-to-End Host Latency"
    total_host_walltime_s: float | None = None
    total_gpu_compute_s: float | None = None
    timed_queries: int | None = None  # "Timing trace has N queries" (x --batch for implicit batch)
    variance_warning: str | None = None  # the unstable-GPU-compute warning, continuation included
    gpu_cv_percent: float | None = None  # its coefficient of variance
    warnings: tuple[str, ...] = ()  # every "* ..." warning trtexec printed with the summary


def parse_trtexec(text: str) -> TrtexecSummary:
    """The last performance summary in ``text`` (trtexec's stdout and stderr); ``#`` lines at the top are
    skipped. Raises TrtexecParseError, with the output's last lines, when there is no complete summary."""
    raw = text.splitlines()
    while raw and raw[0].lstrip().startswith("#"):
        raw.pop(0)
    lines = [_clean(line) for line in raw]
    start, fmt = _last_summary(lines)
    if start is None:
        raise TrtexecParseError(_with_tail("no trtexec performance summary in the output", raw))
    run = _run_span(lines, start)
    end = next((i for i in range(start + 1, run[1]) if lines[i][1].startswith("&&&&")), run[1])
    if fmt == SUMMARY:
        fields = _read_summary(lines[start + 1 : end]) | _read_warnings(lines[start + 1 : run[1]])
    else:
        fields = _read_average_runs(lines[start:end])
    if not fields.get("latency_ms"):
        raise TrtexecParseError(_with_tail("trtexec's performance summary is incomplete (no latency figures)", raw))
    queries = [int(m.group(1)) for _, t in lines[run[0] : start] if (m := _QUERIES.match(t))]
    return TrtexecSummary(
        format=fmt,
        tensorrt_version=_version(lines[run[0] : run[1]]),
        timed_queries=queries[-1] if queries else None,
        **fields,
    )


def to_bench_latency(summary: TrtexecSummary) -> dict:
    """The ``latency`` entry of edgekd's benchmark result (as ``runner.summarize`` makes it), so a Jetson result
    sits in the same table as other devices. None where trtexec reports no such figure (std; p90 before 8.5);
    a throughput of 0 qps (7.x prints that for explicit-batch engines) becomes None."""
    lat = summary.latency_ms
    return {
        "iterations": summary.timed_queries,
        "mean_ms": lat.get("mean"),
        "std_ms": None,
        "min_ms": lat.get("min"),
        "max_ms": lat.get("max"),
        "p50_ms": lat.get("median"),
        "p90_ms": lat.get("p90"),
        "p99_ms": lat.get("p99"),
        "throughput_fps": summary.throughput_qps or None,
    }


def _clean(line: str) -> tuple[str, str]:
    """(severity letter or "", text): the bracketed timestamp and severity prefixes taken off, whitespace stripped."""
    line = line.rstrip()
    m = _PREFIX.match(line)
    if not m:
        return "", line.strip()
    tags = set(re.findall(r"\[([^\]]*)\]", m.group(1)))
    severity = next((s[0] for s in ("W", "WARNING", "I", "INFO", "V", "VERBOSE", "E", "ERROR") if s in tags), "")
    return severity, line[m.end() :].strip()


def _last_summary(lines: list[tuple[str, str]]) -> tuple[int | None, str | None]:
    found: tuple[int | None, str | None] = (None, None)
    for i, (_, text) in enumerate(lines):
        if text == "=== Performance summary ===":
            found = (i, SUMMARY)
        elif text in ("Host Latency", "Host latency"):
            found = (i, AVERAGE_RUNS)
    return found


def _run_span(lines: list[tuple[str, str]], start: int) -> tuple[int, int]:
    """The lines of the run the summary at ``start`` belongs to: from its "&&&& RUNNING" line (or the line after
    the previous run's "&&&& PASSED"/"FAILED") to the next run's "&&&& RUNNING"."""
    begin = 0
    for i in range(start - 1, -1, -1):
        if lines[i][1].startswith("&&&&"):
            begin = i if lines[i][1].startswith("&&&& RUNNING") else i + 1
            break
    end = next((i for i in range(start + 1, len(lines)) if lines[i][1].startswith("&&&& RUNNING")), len(lines))
    return begin, end


def _version(lines: list[tuple[str, str]]) -> str | None:
    for _, text in lines:
        if m := _VERSION_LINE.match(text):
            return _decode_version(m.group(1))
    for _, text in lines:
        if m := _VERSION_TAG.search(text):
            return _decode_version(m.group(1))
    return None


def _decode_version(v: str) -> str:
    """``8.6.3`` as is; the integer forms: 8001 -> 8.0.1, 8502 -> 8.5.2 (MAJOR*1000 + MINOR*100 + PATCH before
    TensorRT 10), 100200 -> 10.2.0, 101600 -> 10.16.0 (MAJOR*10000 + MINOR*100 + PATCH from 10)."""
    if not v.isdigit():
        return v
    n = int(v)
    if n >= 10000:
        return f"{n // 10000}.{n // 100 % 100}.{n % 100}"
    return f"{n // 1000}.{n // 100 % 10}.{n % 100}"


def _ms(value: str, unit: str) -> float:
    return float(value) * _TO_MS[unit]


def _pct_key(p: str) -> str:
    return f"p{float(p):g}"


def _qps(text: str) -> float | None:
    m = _VALUE.match(text)
    return float(m.group(1)) if m and m.group(2) == "qps" else None


def _seconds(text: str) -> float | None:
    m = _VALUE.match(text)
    if not m or m.group(2) == "qps":
        return None
    return float(m.group(1)) if m.group(2) == "s" else _ms(m.group(1), m.group(2)) / 1e3


def _read_summary(lines: list[tuple[str, str]]) -> dict:
    out: dict = {}
    for _, text in lines:
        if text.startswith("==="):  # "=== Explanations of the performance metrics ===" and the like
            break
        label, _, rest = text.partition(": ")
        if label in _SUMMARY_STATS:
            stats = {
                _pct_key(m.group(2)) if m.group(2) else m.group(1): _ms(m.group(3), m.group(4))
                for m in _STAT.finditer(rest)
            }
            if stats:
                out.setdefault(_SUMMARY_STATS[label], stats)
        elif label == "Throughput":
            out["throughput_qps"] = _qps(rest)
        elif label == "Total Host Walltime":
            out["total_host_walltime_s"] = _seconds(rest)
        elif label == "Total GPU Compute Time":
            out["total_gpu_compute_s"] = _seconds(rest)
    return out


def _read_warnings(lines: list[tuple[str, str]]) -> dict:
    """The "* ..." warnings trtexec prints after the summary, each with its indented second line. They go to
    stderr, so they may sit after the PASSED line when stdout and stderr were captured apart and joined."""
    warnings: list[str] = []
    in_warning = False
    for severity, text in lines:
        if text.startswith("* ") and severity in ("W", ""):
            warnings.append(text[2:])
            in_warning = True
        elif in_warning and text and (severity == "W" or not (severity or text.startswith(("Explanations", "&&&&")))):
            warnings[-1] += " " + text  # the indented second line
        else:
            in_warning = False
    out: dict = {"warnings": tuple(warnings)}
    for w in warnings:
        if m := _CV.search(w):
            out["variance_warning"], out["gpu_cv_percent"] = w, float(m.group(1))
    return out


def _read_average_runs(lines: list[tuple[str, str]]) -> dict:
    out: dict = {}
    block = None
    for _, text in lines:
        if text.startswith("==="):
            break
        if text in _OLD_BLOCKS:
            block = _OLD_BLOCKS[text]
            out.setdefault(block, {})
        elif block and (m := _OLD_STAT.match(text)):
            out[block][m.group(1)] = _ms(m.group(2), m.group(3))
            if block == "latency_ms" and m.group(4):
                out.setdefault("end_to_end_ms", {})[m.group(1)] = _ms(m.group(4), m.group(5))
        elif block and (m := _OLD_PCT.match(text)):
            out[block][_pct_key(m.group(3))] = _ms(m.group(1), m.group(2))
            if block == "latency_ms" and m.group(4):
                out.setdefault("end_to_end_ms", {})[_pct_key(m.group(3))] = _ms(m.group(4), m.group(5))
        elif text.startswith("throughput:"):
            out["throughput_qps"] = _qps(text.partition(":")[2].strip())
        elif text.startswith("walltime:"):
            out["total_host_walltime_s"] = _seconds(text.partition(":")[2].strip())
        elif text.startswith("total compute time:"):
            out["total_gpu_compute_s"] = _seconds(text.partition(":")[2].strip())
    return out


def _with_tail(message: str, raw: list[str]) -> str:
    tail = [line.rstrip() for line in raw if line.strip()][-TAIL_LINES:]
    if not tail:
        return f"{message}: the output is empty"
    return f"{message}; its last {len(tail)} lines:\n" + "\n".join("    " + line for line in tail)
