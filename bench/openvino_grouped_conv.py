"""OpenVINO int8 grouped 1×1 convolutions: which widths the CPU plugin computes wrongly, and whether edgekd's
rule (edgekd/backends/openvino/grouped_conv.py) splits exactly those.

For every number of input channels per group in --widths and every group count in --groups, one Q/DQ graph
(u8 activations × i8 per-channel weights → grouped 1×1 Conv → Relu, as edgekd's quantizer writes it) runs in
ONNX Runtime (the simulation) and in OpenVINO's CPU plugin as edgekd converts it, without the split. The
difference is in output steps; above --limit steps a width is "wrong". Prints the wrong and exact widths per
group count as ranges, and every width where the rule disagrees with the measurement: "wrong, not split" is
a defect edgekd ships; "split, exact" only costs speed. Run it after an OpenVINO upgrade: once nothing is
wrong, the split can go.

    .venv/bin/python bench/openvino_grouped_conv.py [--widths 4-156] [--groups 2,4] [--json FILE]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from edgekd.backends.openvino.grouped_conv import computed_wrongly  # noqa: E402
from qdq_graphs import grouped_pointwise_qdq, openvino_steps, pointwise_input, simulate  # noqa: E402


def parse_range(text: str) -> list[int]:
    out = []
    for part in text.split(","):
        low, _, high = part.partition("-")
        out += range(int(low), int(high or low) + 1)
    return out


def as_ranges(values: list[int]) -> str:
    """[4, 5, 6, 9] -> '4-6, 9'."""
    if not values:
        return "none"
    runs, start = [], values[0]
    for previous, value in zip(values, values[1:] + [None]):
        if value != previous + 1:
            runs.append(f"{start}" if start == previous else f"{start}-{previous}")
            start = value
    return ", ".join(runs)


def scan(widths: list[int], groups: list[int]) -> dict[int, dict[int, float]]:
    steps: dict[int, dict[int, float]] = {}
    for g in groups:
        steps[g] = {}
        for i, per_group in enumerate(widths, 1):
            model = grouped_pointwise_qdq(per_group * g, g)
            x = pointwise_input(per_group * g)
            steps[g][per_group] = round(openvino_steps(model, x, simulate(model, x)), 2)
            print(f"\r  groups {g}: {i}/{len(widths)} widths", end="", file=sys.stderr, flush=True)
        print(file=sys.stderr)
    return steps


def report(steps: dict[int, dict[int, float]], limit: float) -> tuple[list[str], int]:
    import openvino as ov

    lines = [
        f"OpenVINO {ov.get_version()}: int8 grouped 1×1 convolutions vs ONNX Runtime (wrong: > {limit} output steps)",
        "",
        "| groups | wrong (input channels per group) | worst, steps | exact |",
        "|---:|---|---:|---|",
    ]
    rule = []
    unsplit = 0
    for g, by_width in steps.items():
        wrong = [w for w, s in by_width.items() if s > limit]
        exact = [w for w, s in by_width.items() if s <= limit]
        worst = max(by_width.values())
        lines.append(f"| {g} | {as_ranges(wrong)} | {worst:.1f} | {as_ranges(exact)} |")
        not_split = [w for w in wrong if not computed_wrongly_at(w, g)]
        split_exact = [w for w in exact if computed_wrongly_at(w, g)]
        unsplit += len(not_split)
        rule.append(
            f"- groups {g}: wrong and NOT split (a defect edgekd ships): {as_ranges(not_split)}; "
            f"split though exact (costs only speed): {as_ranges(split_exact)}"
        )
    return lines + ["", "edgekd's rule against the measurement:", *rule], unsplit


def computed_wrongly_at(per_group: int, groups: int) -> bool:
    import onnx

    node = onnx.helper.make_node("Conv", ["x", "w"], ["y"], group=groups)
    return computed_wrongly(node, (per_group * groups, per_group, 1, 1))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--widths", default="4-156", help="input channels per group: ranges, e.g. 4-156 or 60-70,128")
    parser.add_argument("--groups", default="2,4")
    parser.add_argument("--limit", type=float, default=1.001, help="output steps a rounding tie may differ by")
    parser.add_argument("--json", type=Path, help="write the steps per group and width here")
    args = parser.parse_args(argv)
    steps = scan(parse_range(args.widths), [int(g) for g in args.groups.split(",")])
    lines, unsplit = report(steps, args.limit)
    print("\n".join(lines))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({str(g): s for g, s in steps.items()}, indent=1))
    return 1 if unsplit else 0


if __name__ == "__main__":
    sys.exit(main())
