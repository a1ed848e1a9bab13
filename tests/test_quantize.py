"""QDQ placement for each scheme, weights/bias arithmetic in the graph, calibration, simulation vs float."""

from __future__ import annotations

import itertools
import json
import math
import warnings

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from onnx import numpy_helper

from conftest import CALIB, compile_quick, realistic
from conftest import ZOO_SHAPES as SHAPES
from edgekd import api
from edgekd.errors import AccuracyBudgetError, ConfigError, DataError, PassFailedError
from edgekd.ir.graph import FUSED_ACTIVATION
from edgekd.models import build_model
from edgekd.passes.calibrate import CalibrationWarning
from edgekd.quant.accuracy import PairedDrop, greedy_keep_float, paired_drop


def compile_int8(tmp_path, model, shape, calib, **kw):
    """With the sensitivity pass unless ``kw`` skips it."""
    settings = {"skip": (), "sensitivity_samples": 4, "force": True, **kw}
    result = compile_quick(model, "onnx-cpu", tmp_path / "out", shape, calib, **settings)
    return result, onnx.load(str(result.output / "model.onnx"))


def producers(graph):
    return {o: n for n in graph.node for o in n.output}


def inits(graph):
    return {i.name: numpy_helper.to_array(i) for i in graph.initializer}


def weight_dq(graph, node):
    return producers(graph).get(node.input[1])


@pytest.mark.parametrize("name", list(SHAPES))
@pytest.mark.parametrize("scheme", ["asymmetric-int8", "symmetric-int8", "asymmetric-uint8", "symmetric-by-sign"])
def test_simulation_tracks_float_on_zoo_models(tmp_path, zoo_models, name, scheme):
    path, calib, shape = zoo_models[name]
    result, model = compile_int8(
        tmp_path,
        path,
        shape,
        calib,
        activation_scheme=scheme,
        **({"skip": ("sensitivity",)} if name != "resnet20" else {}),
    )
    m = result.manifest
    assert m["quantization"]["activation_scheme"] == scheme
    assert m["quantization"]["error_vs_float"]["sqnr_db"] > 25.0
    # the emitted QDQ model runs unchanged in a plain session and agrees with the simulation
    sess = ort.InferenceSession(str(result.output / "model.onnx"), providers=["CPUExecutionProvider"])
    outs = sess.run(None, {sess.get_inputs()[0].name: np.load(calib)[:1]})
    assert all(np.isfinite(o).all() for o in outs)
    assert m["fidelity"].get("decisive_disagreements", 0) == 0


def test_outputs_placement_quantizes_after_fused_activations(tmp_path, zoo_models):
    """asymmetric-int8 is not onnx-cpu's own scheme, so it gets the scheme's placement: outputs (TFLite's)."""
    path, calib, shape = zoo_models["resnet20"]
    result, model = compile_int8(tmp_path, path, shape, calib, activation_scheme="asymmetric-int8")
    assert result.manifest["calibration"]["placement"] == "outputs"
    g = model.graph
    prod = producers(g)
    for node in g.node:
        if node.op_type == "QuantizeLinear":
            src = prod.get(node.input[0])
            # never between a Conv and the ReLU fused into it
            if src is not None and src.op_type == "Conv":
                assert not any(p.key == FUSED_ACTIVATION for p in src.metadata_props)
    relus = [n for n in g.node if n.op_type == "Relu"]
    readers = {i: n for n in g.node for i in n.input}
    assert relus and all(readers[r.output[0]].op_type == "QuantizeLinear" for r in relus)
    # the model input is quantized first thing, the logits last
    assert readers[g.input[0].name].op_type == "QuantizeLinear"
    assert prod[g.output[0].name].op_type == "DequantizeLinear"
    # every Conv and the Gemm read int8 per-channel weights along the output channels
    values = inits(g)
    for node in (n for n in g.node if n.op_type in ("Conv", "Gemm")):
        dq = weight_dq(g, node)
        assert dq.op_type == "DequantizeLinear"
        w, scale, zp = (values[i] for i in dq.input)
        assert w.dtype == np.int8 and np.abs(w).max() <= 127 and not zp.any()
        assert dict((a.name, a.i) for a in dq.attribute).get("axis", 1) == 0 and scale.shape == (w.shape[0],)


def test_symmetric_placement_follows_tensorrt(tmp_path, zoo_models):
    path, calib, shape = zoo_models["resnet20"]
    _, model = compile_int8(tmp_path, path, shape, calib, activation_scheme="symmetric-int8")
    g = model.graph
    prod, values = producers(g), inits(g)
    for node in g.node:
        if node.op_type in ("Conv", "Gemm"):
            assert prod[node.input[0]].op_type == "DequantizeLinear"  # inputs of weighted ops
        if node.op_type == "Add":
            assert all(prod[i].op_type == "DequantizeLinear" for i in node.input)  # the residual join
        if node.op_type == "QuantizeLinear":
            assert not values[node.input[2]].any() and values[node.input[2]].dtype == np.int8  # zero point 0
            src = prod.get(node.input[0])
            assert src is None or src.op_type != "Gemm"  # weighted-op outputs stay unquantized
    assert prod[g.output[0].name].op_type == "Gemm"


def test_uint8_scheme_uses_uint8_activations(tmp_path, zoo_models):
    path, calib, shape = zoo_models["resnet20"]
    _, model = compile_int8(tmp_path, path, shape, calib, activation_scheme="asymmetric-uint8", skip=("sensitivity",))
    values = inits(model.graph)
    zps = [values[n.input[2]] for n in model.graph.node if n.op_type == "QuantizeLinear"]
    assert zps and all(z.dtype == np.uint8 for z in zps)


def test_bias_is_int32_with_input_times_weight_scale(tmp_path, zoo_models):
    path, calib, shape = zoo_models["resnet20"]
    _, model = compile_int8(tmp_path, path, shape, calib, skip=("sensitivity",))
    g = model.graph
    prod, values = producers(g), inits(g)
    checked = 0
    for node in (n for n in g.node if n.op_type in ("Conv", "Gemm") and len(n.input) > 2):
        b_dq, x_dq, w_dq = prod[node.input[2]], prod[node.input[0]], prod[node.input[1]]
        assert b_dq.op_type == "DequantizeLinear" and values[b_dq.input[0]].dtype == np.int32
        expected = np.float32(values[x_dq.input[1]]) * values[w_dq.input[1]]
        np.testing.assert_array_equal(values[b_dq.input[1]], expected.astype(np.float32))
        checked += 1
    assert checked >= 20


def test_fixed_range_outputs_use_the_runtime_convention(tmp_path, zoo_models):
    path, calib, shape = zoo_models["yolo-det:0.25"]
    _, model = compile_int8(tmp_path, path, shape, calib, skip=("sensitivity",), activation_scheme="asymmetric-int8")
    prod, values = producers(model.graph), inits(model.graph)
    sig_q = [
        n
        for n in model.graph.node
        if n.op_type == "QuantizeLinear" and n.input[0] in prod and prod[n.input[0]].op_type == "Sigmoid"
    ]
    assert sig_q
    for q in sig_q:
        assert values[q.input[1]] == np.float32(1 / 256) and values[q.input[2]] == -128


def test_keep_float_layers_keep_float_weights(tmp_path, zoo_models):
    path, calib, shape = zoo_models["resnet20"]
    r, model = compile_int8(tmp_path, path, shape, calib, keep_float_count=2)
    ranked = [s["layer"] for s in r.manifest["quantization"]["sensitivity"]]
    assert r.manifest["quantization"]["layers_in_float"] == sorted(ranked[:2])
    kept = {n.name: n for n in model.graph.node if n.name in ranked[:2]}
    assert len(kept) == 2
    prod = producers(model.graph)
    for node in kept.values():
        assert node.input[1] not in prod  # a float initializer, not a DequantizeLinear output
        assert prod.get(node.input[0]) is None or prod[node.input[0]].op_type != "DequantizeLinear"


def test_sensitivity_ranks_every_weighted_layer(tmp_path, zoo_models):
    path, calib, shape = zoo_models["resnet20"]
    r, _ = compile_int8(tmp_path, path, shape, calib)
    sens = r.manifest["quantization"]["sensitivity"]
    assert len(sens) == 22  # 21 Conv + 1 Gemm
    values = [s["sqnr_db"] for s in sens]
    assert values == sorted(values) and all(v > 20 for v in values)
    assert (r.output / "sensitivity.png").stat().st_size > 1000 and "sensitivity.png" in (
        r.output / "report.md"
    ).read_text()


def test_manifest_records_calibration_and_qparams(tmp_path, zoo_models):
    path, calib, shape = zoo_models["resnet20"]
    r, _ = compile_int8(tmp_path, path, shape, calib, calib_method="percentile", skip=("sensitivity",))
    m = json.loads((r.output / "manifest.json").read_text())
    cal = m["calibration"]
    assert cal["samples"] == 48 and cal["method"] == "percentile" and len(cal["sha256"]) == 64
    assert m["artifact"]["precision"] == "int8"
    inp = m["inputs"][0]["quantization"]
    assert inp["scheme"]["dtype"] == "uint8" and inp["axis"] is None and inp["scale"] > 0
    assert "quantization" not in m["outputs"][0]  # qlinear: QGemm writes the logits in float
    assert m["quantization"]["why"] and "U8S8" in m["quantization"]["why"]
    conv_w = [v for k, v in m["quantization"]["tensors"].items() if v["axis"] == 0]
    assert len(conv_w) == 22


def test_fewer_than_256_samples_warn(tmp_path, zoo_models):
    path, calib, shape = zoo_models["resnet20"]
    config = api.make_config(
        str(path), "onnx-cpu", tmp_path / "o", input_shape=shape, precision="int8", calib=calib, skip=("sensitivity",)
    )
    with pytest.warns(CalibrationWarning, match="48 samples"):
        api.compile(config)


def test_nan_in_calibration_data_names_tensor_and_sample(tmp_path, zoo_models):
    path, _, shape = zoo_models["resnet20"]
    data = np.random.default_rng(0).standard_normal((8,) + shape[1:]).astype(np.float32)
    data[5, 0, 0, 0] = np.nan
    np.save(tmp_path / "bad.npy", data)
    config = api.make_config(
        str(path),
        "onnx-cpu",
        tmp_path / "o",
        input_shape=shape,
        precision="int8",
        calib=tmp_path / "bad.npy",
        calib_batch=1,
        skip=("sensitivity",),
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", CalibrationWarning)
        with pytest.raises(PassFailedError) as e:
            api.compile(config)
    assert isinstance(e.value.cause, DataError)
    assert "'input'" in e.value.message and "sample 5" in e.value.message
    assert not (tmp_path / "o").exists()


def test_image_folder_calibration_and_eval_report_accuracy(tmp_path):
    torch.manual_seed(0)
    model = tmp_path / "r.pt"
    torch.jit.save(torch.jit.trace(realistic(build_model("resnet20")), torch.zeros(1, 3, 32, 32)), str(model))
    r, _ = compile_int8(
        tmp_path, model, (1, 3, 32, 32), CALIB, calib_samples=64, eval=CALIB, eval_samples=100, skip=("sensitivity",)
    )
    acc = r.manifest["accuracy"]
    assert acc["samples"] == 100 and 0 <= acc["artifact_top1"] <= 1
    assert acc["drop_pt"] == pytest.approx(100 * (acc["float_top1"] - acc["artifact_top1"]))
    assert acc["drop_pt"] == pytest.approx(acc["images_lost"] - acc["images_gained"])  # 100 images: 1 pt each
    low, high = acc["drop_ci95_pt"]
    assert low <= acc["drop_pt"] <= high
    assert set(acc["speed"]) >= {"float_ms", "artifact_ms", "speedup", "needed_speedup", "met"}
    report = (r.output / "report.md").read_text()
    assert "## Accuracy" in report and f"| {acc['images_lost']} / {acc['images_gained']} |" in report


def test_a_drop_is_judged_on_the_images_float_and_int8_disagree_on():
    labels = np.zeros(5000, int)
    float_pred, int8_pred = labels.copy(), labels.copy()
    int8_pred[:30] = 1  # lost: float right, int8 wrong
    float_pred[30:50] = 1  # gained: float wrong, int8 right
    float_pred[50:60] = int8_pred[50:60] = 2  # both wrong: no information about the drop
    paired = paired_drop(labels, float_pred, int8_pred)
    assert (paired.lost, paired.gained, paired.samples) == (30, 20, 5000)
    assert paired.drop_pt == pytest.approx(0.2)
    low, high = paired.ci95_pt()
    assert low < 0 < high  # 30 against 20 is noise
    # exact given the 50 disagreements: at each bound the binomial tail beyond 30 holds 2.5 %
    p_low, p_high = (1 + low / 100 * 5000 / 50) / 2, (1 + high / 100 * 5000 / 50) / 2
    tail = lambda p, ks: sum(math.comb(50, k) * p**k * (1 - p) ** (50 - k) for k in ks)  # noqa: E731
    assert tail(p_low, range(30, 51)) == pytest.approx(0.025, rel=1e-6)
    assert tail(p_high, range(0, 31)) == pytest.approx(0.025, rel=1e-6)
    assert paired_drop(labels, float_pred * 0, int8_pred).ci95_pt()[0] > 0  # 40 lost, none gained: real
    few = PairedDrop(100, 5, 0)  # 5 lost, none gained: McNemar's exact p is 0.0625, not significant
    assert few.ci95_pt()[0] == pytest.approx(100 * (2 * 0.025 ** (1 / 5) - 1) * 5 / 100, rel=1e-6)
    assert few.ci95_pt()[0] < 0 < few.ci95_pt()[1]
    assert PairedDrop(5000, 0, 0).ci95_pt() == (0.0, 0.0)


def test_max_drop_needs_an_eval_set(tmp_path, zoo_models):
    path, calib, shape = zoo_models["resnet20"]
    with pytest.raises(ConfigError, match="--eval"):
        compile_int8(tmp_path, path, shape, calib, max_drop=0.5)


def test_unmeetable_budget_fails_with_the_trade_offs(tmp_path, monkeypatch, zoo_models):
    import edgekd.passes.accuracy_budget as ab

    path, calib, shape = zoo_models["resnet20"]
    scores = itertools.chain([0.9], itertools.repeat(0.5))  # float first, then every int8 variant far below it
    monkeypatch.setattr(ab, "top1", lambda run, data: next(scores))
    monkeypatch.setattr(
        ab, "greedy_keep_float", lambda order, evaluate, f, m: greedy_keep_float(order, evaluate, f, m, max_layers=3)
    )
    with pytest.raises(PassFailedError) as e:
        compile_int8(tmp_path, path, shape, calib, max_drop=0.5, eval=CALIB, eval_samples=20)
    assert isinstance(e.value.cause, AccuracyBudgetError)
    assert "40.00 pt" in e.value.message and "layers in float" in e.value.message
    assert not (tmp_path / "out").exists()


def test_greedy_returns_most_sensitive_layers_first():
    accuracy = {(): 0.80, ("a",): 0.84, ("a", "b"): 0.848, ("a", "b", "c"): 0.85}
    steps = greedy_keep_float(["a", "b", "c"], lambda kept: accuracy[kept], float_top1=0.85, max_drop_pt=0.5)
    assert [s.kept_float for s in steps] == [(), ("a",), ("a", "b")]
    assert steps[-1].drop_pt == pytest.approx(0.2)
    already = greedy_keep_float(["a"], lambda kept: 0.85, float_top1=0.85, max_drop_pt=0.0)
    assert len(already) == 1 and already[0].kept_float == ()


def test_sensitivity_samples_shrink_with_the_input_pixels():
    from edgekd.passes.sensitivity import MIN_SAMPLES, samples_for

    assert samples_for((1, 3, 32, 32), 32) == 32  # small inputs: every asked-for sample
    assert samples_for((1, 3, 256, 256), 32) == 32
    assert samples_for((1, 3, 640, 640), 32) == 5  # about 256×256 × 32 pixels in all
    assert samples_for((1, 3, 4000, 4000), 32) == MIN_SAMPLES
    assert samples_for((1, 3, 640, 640), 2) == 2  # never more than asked for
    assert samples_for((1, 16), 8) == 8  # not an image: unchanged


def test_calib_method_decides_whether_a_later_batch_sets_the_range(tmp_path, zoo_models):
    """min/max covers what only the second batch reaches; EMA keeps about the first batch's range."""
    path, _, shape = zoo_models["resnet20"]
    samples = np.random.default_rng(0).uniform(0.0, 0.5, (64, *shape[1:])).astype(np.float32)
    samples[40, 0, 0, 0] = 2.0  # in the second batch of 32
    np.save(tmp_path / "calib.npy", samples)
    widths = {}
    for method in ("minmax", "ema"):
        config = api.make_config(
            str(path),
            "onnx-cpu",
            tmp_path / method,
            input_shape=shape,
            precision="int8",
            calib=tmp_path / "calib.npy",
            calib_method=method,
            skip=("sensitivity",),
        )
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", CalibrationWarning)
            m = json.loads((api.compile(config).output / "manifest.json").read_text())
        assert m["calibration"]["method"] == method
        widths[method] = m["inputs"][0]["quantization"]["scale"] * 255
    assert widths["minmax"] == pytest.approx(2.0, rel=1e-3)
    assert widths["ema"] < 0.6


def near_tie_classifier(path, shape):
    """Ten logits that differ by far less than int8's rounding of one classifier row: int8 flips many top-1s."""
    torch.manual_seed(0)
    features = 8 * (shape[2] // 8) * (shape[3] // 8)
    net = torch.nn.Sequential(
        torch.nn.Conv2d(shape[1], 8, 3, padding=1),
        torch.nn.AvgPool2d(8),
        torch.nn.Flatten(),
        torch.nn.Linear(features, 10),
    ).eval()
    with torch.no_grad():
        net[3].weight.copy_(torch.randn(1, features) + 3e-3 * torch.randn(10, features))
        net[3].bias.zero_()
    torch.jit.save(torch.jit.trace(net, torch.zeros(shape)), str(path))
    return net


def test_max_drop_on_images_without_labels_holds_int8_to_the_float_models_own_top1(tmp_path, zoo_models):
    """An .npy (no classes): float's top-1 is the label, so the budget bounds the share of images int8 flips."""
    _, calib, shape = zoo_models["resnet20"]
    net = near_tie_classifier(tmp_path / "near-tie.pt", shape)
    result, _ = compile_int8(
        tmp_path, tmp_path / "near-tie.pt", shape, calib, max_drop=0.0, eval=calib, eval_samples=24
    )
    m = result.manifest
    budget, acc = m["quantization"]["accuracy_budget"], m["accuracy"]
    assert budget["metric"] == acc["metric"] == "agreement" and budget["float_top1"] == acc["float_top1"] == 1.0
    assert budget["steps"][0]["top1"] < 0.9 and budget["steps"][-1]["kept_float"] > 0  # int8 alone flips many
    x = np.load(calib)[:24]
    want = net(torch.from_numpy(x)).detach().numpy().argmax(1)
    session = ort.InferenceSession(str(result.output / "model.onnx"), providers=["CPUExecutionProvider"])
    got = np.concatenate([session.run(None, {session.get_inputs()[0].name: x[i : i + 1]})[0] for i in range(24)])
    assert acc["artifact_top1"] == budget["steps"][-1]["top1"] == float(np.mean(got.argmax(1) == want)) == 1.0
    assert "agrees with it on **100.00 %** of 24 images" in (result.output / "report.md").read_text()


def test_agreement_needs_class_scores_and_says_what_to_give_instead(zoo_models):
    from edgekd.data.preprocess import Preprocess
    from edgekd.quant.accuracy import load_eval_set

    _, calib, shape = zoo_models["resnet20"]
    segmenter = lambda x: [np.zeros((len(x), 2, 8, 8), np.float32)]  # noqa: E731
    with pytest.raises(ConfigError, match=r"first output is shaped \[1, 2, 8, 8\]") as e:
        load_eval_set(calib, Preprocess(), shape, None, 4, segmenter)
    assert "DIR/<class>" in e.value.hint
    pooled = lambda x: [np.arange(10, dtype=np.float32).reshape(1, 10, 1, 1).repeat(len(x), 0)]  # noqa: E731
    evalset = load_eval_set(calib, Preprocess(), shape, None, 4, pooled)
    assert evalset.metric == "agreement" and evalset.samples == 4 and all((y == 9).all() for _, y in evalset.batches)


def test_layers_the_budget_does_not_need_go_back_to_int8():
    from edgekd.quant.accuracy import requantize_unneeded

    accuracy = lambda kept: 0.85 if "b" in kept else 0.80  # noqa: E731  only b matters
    steps = greedy_keep_float(["a", "b", "c"], accuracy, float_top1=0.85, max_drop_pt=0.5)
    assert steps[-1].kept_float == ("a", "b")
    final = requantize_unneeded(steps, accuracy, float_top1=0.85, max_drop_pt=0.5)
    assert final[-1].kept_float == ("b",) and final[: len(steps)] == steps  # b could not go back; a could
    missed = greedy_keep_float(["a"], lambda kept: 0.5, float_top1=0.85, max_drop_pt=0.5)
    assert requantize_unneeded(missed, accuracy, 0.85, 0.5) == missed


def test_a_budget_weighted_layers_cannot_meet_goes_on_to_the_nodes_without_weights(tmp_path, monkeypatch, zoo_models):
    """int8 meets the budget only with one element-wise node in float (made up: the scores follow the plan
    evaluated); the search returns every weighted layer to float, then nodes without weights, then gives
    back all it did not need."""
    import edgekd.passes.accuracy_budget as ab

    path, calib, shape = zoo_models["resnet20"]
    seen = {"kept": None, "nodes": []}
    real_plan, real_readers = ab.target_plan, ab.unweighted_readers

    def target_plan(model, spec, placement, keep_float=frozenset()):
        seen["kept"] = keep_float
        return real_plan(model, spec, placement, keep_float)

    def unweighted_readers(plan):
        seen["nodes"] = real_readers(plan)
        return seen["nodes"]

    def top1(run, data):
        if seen["kept"] is None:
            return 1.0  # the float model, scored first
        return 1.0 if seen["nodes"] and seen["nodes"][-1] in seen["kept"] else 0.9

    monkeypatch.setattr(ab, "target_plan", target_plan)
    monkeypatch.setattr(ab, "unweighted_readers", unweighted_readers)
    monkeypatch.setattr(ab, "top1", top1)
    result, _ = compile_int8(tmp_path, path, shape, calib, max_drop=0.5, eval=calib, eval_samples=4)
    budget = result.manifest["quantization"]["accuracy_budget"]
    weighted = len(result.manifest["quantization"]["sensitivity"])
    assert seen["nodes"] and budget["steps"][weighted]["kept_float"] == weighted  # every weighted layer in float
    assert budget["steps"][-1]["top1"] == 1.0 and budget["steps"][-1]["kept_float"] == 1
    assert result.manifest["quantization"]["layers_in_float"] == [seen["nodes"][-1]]


def test_a_budget_on_a_full_int8_target_returns_no_layer_to_float_and_says_why(tmp_path, zoo_models):
    """rpi4 (LiteRT full int8) keeps no layer in float: the budget scores int8 as calibrated, and a miss is
    refused before emit, naming the target, not after a search for float layers emit would refuse."""
    _, calib, shape = zoo_models["resnet20"]
    near_tie_classifier(tmp_path / "near-tie.pt", shape)
    with pytest.raises(PassFailedError) as e:
        compile_quick(
            tmp_path / "near-tie.pt", "rpi4", tmp_path / "out", shape, calib, skip=(), max_drop=0.0, eval=calib
        )
    assert e.value.pass_name == "accuracy-budget" and isinstance(e.value.cause, AccuracyBudgetError)
    assert "rpi4 runs full int8, so no layer can return to float" in e.value.message
    assert len(e.value.cause.output.steps) == 1 and "onnx-cpu" in e.value.cause.hint
    assert not (tmp_path / "out").exists()
