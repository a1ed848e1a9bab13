"""``--precision auto`` and ``--latency-budget``: candidates compiled for real, timed by an injected
function (so which one wins does not depend on this machine's load), shipped atomically with their table;
one budget search times its students for real on the loopback SSH board."""

from __future__ import annotations

import warnings
from pathlib import Path

import pytest
from click.testing import CliRunner

from edgekd import api
from edgekd.cli import main
from edgekd.errors import ConfigError, SearchError
from edgekd.passes.calibrate import CalibrationWarning
from edgekd.search.budget import candidate_students


def timing_from(table: dict[str, list[float]], calls: list | None = None):
    """Latency by candidate folder name (the precision, or the student with ':' as '_') and repeat."""

    def timing(path: Path, repeat: int) -> float:
        if calls is not None:
            calls.append((Path(path).name, repeat))
        return table[Path(path).name][repeat]

    return timing


def auto_config(tmp_path, zoo_models, labelled, **kw):
    path, calib, shape = zoo_models["resnet20"]
    kw.setdefault("max_drop", 100.0)  # random weights: any drop; the tests are about speed
    return api.make_config(
        str(path),
        "onnx-cpu",
        tmp_path / "out",
        input_shape=shape,
        precision="auto",
        calib=calib,
        eval=labelled,
        eval_samples=32,
        sensitivity_samples=4,
        verify_samples=4,
        **kw,
    )


def run(config, timing):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", CalibrationWarning)
        return api.compile(config, timing=timing)


def test_auto_ships_float_when_int8_is_slower(tmp_path, zoo_models, labelled):
    calls = []
    result = run(
        auto_config(tmp_path, zoo_models, labelled),
        timing_from({"fp32": [1.0, 1.1, 0.9], "int8": [1.5, 1.6, 1.4]}, calls),
    )
    m = result.manifest
    assert m["artifact"]["precision"] == "fp32" and m["config"]["precision"] == "auto"
    ps = m["precision_search"]
    assert ps["chosen"] == "fp32" and "int8 slower than float" in ps["why"]
    assert [c["precision"] for c in ps["candidates"]] == ["fp32", "int8"]
    int8 = ps["candidates"][1]
    assert int8["speedup_vs_float"]["max"] < 1 and int8["ms"] == [1.5, 1.6, 1.4]
    # interleaved: every repeat times each candidate once, in turn
    assert calls == [("fp32", 0), ("int8", 0), ("fp32", 1), ("int8", 1), ("fp32", 2), ("int8", 2)]
    report = (result.output / "report.md").read_text()
    assert "## Precision search" in report and "Shipped **fp32**" in report
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]  # no candidate left beside the output


def test_auto_ships_int8_faster_in_every_repeat_within_the_budget(tmp_path, zoo_models, labelled):
    result = run(
        auto_config(tmp_path, zoo_models, labelled), timing_from({"fp32": [2.0, 2.1, 1.9], "int8": [1.0, 1.0, 1.0]})
    )
    ps = result.manifest["precision_search"]
    assert ps["chosen"] == "int8" and result.manifest["artifact"]["precision"] == "int8"
    assert ps["candidates"][1]["speedup_vs_float"] == {"median": 2.0, "min": 1.9, "max": 2.1, "repeats": 3}
    assert result.manifest["int8_coverage"]["measured"]  # the shipped int8 keeps its own records


def test_auto_on_eval_images_without_labels_weighs_speed_against_agreement(tmp_path, zoo_models):
    _, calib, _ = zoo_models["resnet20"]  # an .npy: no classes
    config = auto_config(tmp_path, zoo_models, calib, max_drop=0.0)
    result = run(config, timing_from({"fp32": [2.0, 2.1, 1.9], "int8": [1.0, 1.0, 1.0]}))
    ps = result.manifest["precision_search"]
    assert ps["metric"] == "agreement" and ps["chosen"] == "int8"
    fp32, int8 = ps["candidates"]
    assert fp32["top1"] == 1.0 and fp32["drop_pt"] == 0.0  # float agrees with itself
    assert int8["top1"] == result.manifest["accuracy"]["artifact_top1"] == 1.0  # --max-drop 0: on every image
    assert "| precision | agreement % |" in (result.output / "report.md").read_text()


def test_a_win_that_noise_can_explain_buys_no_accuracy(tmp_path, zoo_models, labelled):
    result = run(
        auto_config(tmp_path, zoo_models, labelled), timing_from({"fp32": [1.0, 1.0, 1.0], "int8": [0.8, 1.05, 0.9]})
    )  # faster on the median only
    assert result.manifest["precision_search"]["chosen"] == "fp32"


def test_auto_needs_eval_and_max_drop_and_writes_nothing(tmp_path, zoo_models):
    path, calib, shape = zoo_models["resnet20"]
    config = api.make_config(str(path), "onnx-cpu", tmp_path / "out", input_shape=shape, precision="auto", calib=calib)
    with pytest.raises(ConfigError, match="needs --eval DIR and --max-drop"):
        api.compile(config, timing=timing_from({}))
    assert not (tmp_path / "out").exists()


# --- latency budget -----------------------------------------------------------------------------------


def test_student_lists_expand_widths():
    assert candidate_students("resnet8:0.25,0.5") == ["resnet8:0.25", "resnet8:0.5"]
    assert candidate_students("resnet8:0.5,mobilenetv2-cifar:0.35,0.5") == [
        "resnet8:0.5",
        "mobilenetv2-cifar:0.35",
        "mobilenetv2-cifar:0.5",
    ]
    assert candidate_students("resnet8") == [f"resnet8:{w}" for w in (0.25, 0.35, 0.5, 0.75, 1.0)]
    with pytest.raises(ConfigError, match="comes before a model name"):
        candidate_students("0.5,resnet8")


def budget_config(tmp_path, zoo_models, labelled, students, budget, **kw):
    path, _, shape = zoo_models["resnet20"]
    return api.make_config(
        str(path),
        "onnx-cpu",
        tmp_path / "out",
        input_shape=shape,
        precision="fp32",
        student=students,
        data=labelled,
        epochs=1,
        latency_budget=budget,
        verify_samples=4,
        train_options={"batch_size": 32},
        **kw,
    )


def test_budget_search_drops_slow_students_and_distils_the_best_proxy(tmp_path, zoo_models, labelled):
    timing = timing_from(
        {"resnet8_0.25": [1.0, 1.1, 1.0], "resnet8_0.5": [1.3, 1.2, 1.4], "resnet8_1.0": [3.0, 3.1, 2.9]}
    )
    result = run(budget_config(tmp_path, zoo_models, labelled, "resnet8:0.25,0.5,1.0", 1.5), timing)
    lb = result.manifest["latency_budget"]
    rows = {c["student"]: c for c in lb["candidates"]}
    assert [r["fits"] for r in rows.values()] == [True, True, False]
    assert rows["resnet8:1.0"]["proxy_top1"] is None  # over budget: never trained
    fits = [rows["resnet8:0.25"], rows["resnet8:0.5"]]
    assert all(r["proxy_top1"] is not None for r in fits)
    best = max(fits, key=lambda r: (r["proxy_top1"], -r["p50_ms"]))
    assert lb["chosen"] == best["student"] and result.manifest["distill"]["student"] == best["student"]
    assert rows["resnet8:0.5"]["macs"] > rows["resnet8:0.25"]["macs"] > 0
    assert "## Latency budget" in (result.output / "report.md").read_text()


def test_no_student_within_the_budget_is_a_named_error_with_the_table(tmp_path, zoo_models, labelled):
    timing = timing_from({"resnet8_0.25": [9.0, 9.0, 9.0]})
    with pytest.raises(SearchError, match="no student runs within 1 ms on local") as e:
        run(budget_config(tmp_path, zoo_models, labelled, "resnet8:0.25", 1.0), timing)
    assert "resnet8:0.25" in e.value.message and "9.000" in e.value.message
    assert not (tmp_path / "out").exists()


def test_budget_search_times_students_on_the_loopback_board(tmp_path, zoo_models, labelled, ssh_board):
    """Real timing over SSH: what is asserted is where and how often it ran, not how fast."""
    inventory = ssh_board.inventory(tmp_path / "devices.toml")
    path, _, shape = zoo_models["resnet20"]
    r = CliRunner().invoke(
        main,
        [
            "compile",
            str(path),
            "-t",
            "onnx-cpu",
            "-o",
            str(tmp_path / "out"),
            "--input-shape",
            "1,3,32,32",
            "--precision",
            "fp32",
            "--student",
            "resnet8:0.25,0.5",
            "--data",
            str(labelled),
            "--epochs",
            "1",
            "--batch-size",
            "32",
            "--latency-budget",
            "10000",
            "--device",
            "board",
            "--inventory",
            str(inventory),
            "--verify-samples",
            "4",
            "-q",
        ],
    )
    assert r.exit_code == 0, r.output
    assert "within budget" in r.output and "(chosen)" in r.output
    import json

    lb = json.loads((tmp_path / "out" / "manifest.json").read_text())["latency_budget"]
    assert lb["device"] == "board" and lb["repeats"] == 3
    assert all(len(c["ms"]) == 3 and min(c["ms"]) > 0 and c["fits"] for c in lb["candidates"])
    assert not list((ssh_board.dir / "work").glob("edgekd-run-*"))  # the board keeps nothing


def test_device_without_a_search_is_refused_up_front(tmp_path, zoo_models):
    path, calib, shape = zoo_models["resnet20"]
    r = CliRunner().invoke(
        main,
        [
            "compile",
            str(path),
            "-t",
            "onnx-cpu",
            "-o",
            str(tmp_path / "out"),
            "--input-shape",
            "1,3,32,32",
            "--device",
            "board",
        ],
    )
    assert r.exit_code == 2 and "--device and --inventory say where" in r.output and "--bench DEVICE" in r.output
    assert not (tmp_path / "out").exists()


def test_an_unknown_device_fails_before_any_candidate_compiles(tmp_path, zoo_models, labelled):
    from edgekd.errors import UnknownNameError

    config = auto_config(tmp_path, zoo_models, labelled, device="nosuch")
    with pytest.raises(UnknownNameError, match="unknown device 'nosuch'"):
        api.compile(config)
    assert not (tmp_path / "out").exists()
