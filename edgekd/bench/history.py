"""Every benchmark run of an artifact, appended to ``results/history.sqlite`` with the device's facts."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

from edgekd.artifact import RESULTS_DIR

DB = "history.sqlite"
_SCHEMA = """
CREATE TABLE IF NOT EXISTS runs (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    started TEXT NOT NULL, device TEXT NOT NULL, target TEXT NOT NULL, runtime TEXT NOT NULL,
    runtime_version TEXT, artifact_sha256 TEXT NOT NULL, threads INTEGER, iterations INTEGER,
    p50_ms REAL, p90_ms REAL, p99_ms REAL, mean_ms REAL, std_ms REAL, throughput_fps REAL, peak_rss_mb REAL,
    host TEXT, result TEXT NOT NULL
)"""
# Columns added since the first table; a database written before them gains them, empty, on first use.
ADDED = {"e2e_p50_ms": "REAL", "e2e_p90_ms": "REAL", "e2e_mean_ms": "REAL"}
COLUMNS = (
    "started",
    "device",
    "target",
    "runtime",
    "runtime_version",
    "artifact_sha256",
    "threads",
    "iterations",
    "p50_ms",
    "p90_ms",
    "p99_ms",
    "mean_ms",
    "std_ms",
    "throughput_fps",
    "peak_rss_mb",
    *ADDED,
)


def _connect(artifact: Path) -> sqlite3.Connection:
    (artifact / RESULTS_DIR).mkdir(exist_ok=True)
    db = sqlite3.connect(artifact / RESULTS_DIR / DB)
    db.execute(_SCHEMA)
    have = {row[1] for row in db.execute("PRAGMA table_info(runs)")}
    for name, kind in ADDED.items():
        if name not in have:
            db.execute(f"ALTER TABLE runs ADD COLUMN {name} {kind}")
    return db


def append(artifact: Path, result: dict) -> None:
    lat, mem = result["latency"], result.get("memory") or {}
    total = ((result.get("end_to_end") or {}).get("stages") or {}).get("total") or {}
    row = (
        result["started"],
        result["device"],
        result["artifact"]["target"],
        result["runtime"]["name"],
        result["runtime"].get("version"),
        result["artifact"]["sha256"],
        result["settings"].get("threads"),
        lat.get("iterations"),
        lat.get("p50_ms"),
        lat.get("p90_ms"),
        lat.get("p99_ms"),
        lat.get("mean_ms"),
        lat.get("std_ms"),
        lat.get("throughput_fps"),
        mem.get("peak_rss_mb"),
        total.get("p50_ms"),
        total.get("p90_ms"),
        total.get("mean_ms"),
        json.dumps(result.get("host")),
        json.dumps({k: v for k, v in result.items() if k != "latencies_ms"}),
    )
    with _connect(artifact) as db:
        db.execute(
            f"INSERT INTO runs ({', '.join(COLUMNS)}, host, result) VALUES ({', '.join('?' * (len(COLUMNS) + 2))})", row
        )
    db.close()


def runs(artifact: Path) -> list[dict]:
    if not (artifact / RESULTS_DIR / DB).exists():
        return []
    db = _connect(artifact)
    try:
        cur = db.execute(f"SELECT {', '.join(COLUMNS)}, host FROM runs ORDER BY started, id")
        return [dict(zip((*COLUMNS, "host"), r)) for r in cur.fetchall()]
    finally:
        db.close()


def latest_per_device(artifacts: list[Path]) -> list[dict]:
    """The newest run for each (artifact target, device, runtime, threads), across artifacts."""
    best: dict[tuple, dict] = {}
    for a in artifacts:
        for r in runs(a):
            best[(r["target"], r["device"], r["runtime"], r["threads"])] = r
    return sorted(best.values(), key=lambda r: (r["target"], r["p50_ms"] or 0))


def plot_compare(rows: list[dict], path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = [f"{r['target']}\n{r['device']} ({r['runtime']}, {r['threads']}t)" for r in rows]
    p50 = [r["p50_ms"] for r in rows]
    lo = [0 for _ in rows]
    hi = [max(0.0, (r["p99_ms"] or r["p50_ms"]) - r["p50_ms"]) for r in rows]
    fig, ax = plt.subplots(figsize=(max(5, 1.6 * len(rows)), 4))
    ax.bar(range(len(rows)), p50, yerr=[lo, hi], capsize=4)
    e2e = [(i, r["e2e_p50_ms"]) for i, r in enumerate(rows) if r.get("e2e_p50_ms") is not None]
    if e2e:  # detectors: frame to detections, beside the model alone
        ax.plot(*zip(*e2e), "kD", label="end to end p50 (preprocess + model + NMS)")
        ax.legend(fontsize=7)
    ax.set_xticks(range(len(rows)), labels, fontsize=7)
    ax.set_ylabel("latency (ms): bar p50, whisker p99")
    ax.set_title("latency across devices and targets")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
