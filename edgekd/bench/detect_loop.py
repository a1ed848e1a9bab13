"""A detector end to end, as a camera pipeline runs it: frame → preprocess → model → decode/NMS, each stage
timed apart. The benchmark runner's ``--detect`` runs it; it is shipped beside the runner with the two
numpy-only modules it is handed (:mod:`edgekd.data.frames`, :mod:`edgekd.detect.nms`), so a board needs
nothing but the standard library, numpy and its runtime.

The settings file (``--detect``, written by the host from the artifact's manifest)::

    {"preprocessing": {"size": [H, W], "mean": [..], "std": [..], "scale": 0.0039, "channel_order": "RGB",
                       "resize": "letterbox"},
     "input": {"layout": "NCHW", "quantization": {"scale": s, "zero_point": z} or null},
     "outputs": {"layout": "pair", "boxes": 0, "scores": 1, "selected": null},
     "nms": {"conf": 0.25, "iou": 0.7, "max_det": 300, "max_candidates": 30000}}

``outputs.layout`` is ``pair`` (edgekd's decoded ``boxes [N, A, 4]`` + ``scores [N, A, C]``) or ``single``
(Ultralytics' ``[N, 4 + C, A]`` at index ``boxes``); ``selected`` is the index of a graph NMS's output, used
instead of the numpy NMS.
"""

import time

SYNTHETIC = (4, 480, 640)  # frames, height, width: what a VGA camera hands over
STAGES = ("preprocess", "model", "decode", "total")


class FramesError(ValueError):
    pass


def load_frames(path):
    """uint8 HWC RGB frames from a ``.npy`` (``[F, H, W, 3]`` or one ``[H, W, 3]``) or a ``.npz`` holding one
    ``[H, W, 3]`` array per frame (sizes may differ), taken in key order."""
    import numpy as np

    if path.endswith(".npz"):
        with np.load(path, allow_pickle=False) as saved:
            frames = [saved[k] for k in sorted(saved.files)]
    else:
        array = np.load(path, allow_pickle=False)
        frames = [array] if array.ndim == 3 else list(array)
    bad = [(f.dtype.name, f.shape) for f in frames if f.dtype != np.uint8 or f.ndim != 3 or f.shape[2] != 3]
    if not frames or bad:
        raise FramesError("frames must be uint8 [H, W, 3] RGB images; %s holds %s" % (path, bad[:3] or "none"))
    return frames


def synthetic_frames(seed=0):
    import numpy as np

    rng = np.random.RandomState(seed)
    count, h, w = SYNTHETIC
    return [rng.randint(0, 256, size=(h, w, 3)).astype(np.uint8) for _ in range(count)]


def describe_frames(frames, path):
    sizes = sorted({(int(f.shape[0]), int(f.shape[1])) for f in frames})
    return {
        "source": "given" if path else "synthetic",
        "count": len(frames),
        "sizes": [list(s) for s in sizes],
        "what": "uint8 RGB frames from %s" % path if path else "seeded uniform noise, uint8 RGB",
    }


class Pipeline:
    """One detector: ``model`` (a runner runtime), ``spec`` (the settings file), and the shipped modules."""

    def __init__(self, model, spec, frames, nms):
        self.model, self.frames, self.nms = model, frames, nms
        self.pre, self.outputs, self.settings = spec["preprocessing"], spec["outputs"], spec["nms"]
        self.layout = spec["input"]["layout"]
        self.batch = model.input_shape[0] if model.input_shape else 1
        self.quantization = None
        if model.input_dtype in ("int8", "uint8"):
            given = getattr(model, "input_quantization", None) or spec["input"].get("quantization")
            if not given:
                raise FramesError("the model takes %s, and neither it nor --detect says its scale" % model.input_dtype)
            self.quantization = (float(given["scale"]), int(given["zero_point"]))

    def preprocess(self, group):
        """Frames → (the model's input batch, each frame's (scale, pad, source size))."""
        import numpy as np

        F, pre = self.frames, self.pre
        xs, fits = [], []
        for rgb in group:
            img, scale, pad = F.letterbox_frame(rgb, tuple(pre["size"]), pre["resize"])
            xs.append(F.normalize(img, pre["scale"], pre["mean"], pre["std"], pre["channel_order"], self.layout))
            fits.append((scale, pad, rgb.shape[:2]))
        x = np.stack(xs)
        if self.quantization:
            return F.quantize_input(x, self.quantization[0], self.quantization[1], self.model.input_dtype), fits
        return np.ascontiguousarray(x, dtype=self.model.input_dtype), fits

    def decode(self, outputs, fits):
        """The model's outputs → per frame (boxes xyxy in frame pixels, scores, classes), best first."""
        o, s, N = self.outputs, self.settings, self.nms
        if o["layout"] == "single":
            boxes, scores = N.from_single_output(outputs[o["boxes"]])
        else:
            boxes, scores = outputs[o["boxes"]], outputs[o["scores"]]
        detections = []
        for i, (scale, pad, source) in enumerate(fits):
            if o.get("selected") is not None:
                keep, cls, score = N.select_from_graph(outputs[o["selected"]], scores, i, s["conf"], s["max_det"])
            else:
                keep, cls, score = N.select_indices(
                    boxes[i], scores[i], s["conf"], s["iou"], s["max_det"], s["max_candidates"]
                )
            detections.append((self.frames.boxes_to_source(boxes[i][keep], scale, pad, source), score, cls))
        return detections

    def __call__(self, group):
        x, fits = self.preprocess(group)
        return self.decode(self.model(x), fits)


def frame_groups(frames, batch, count):
    """``count`` groups of ``batch`` frames, cycling through ``frames``."""
    for i in range(count):
        yield [frames[(i * batch + k) % len(frames)] for k in range(batch)]


def time_pipeline(pipeline, frames, iterations, warmup, deadline_s=None, step=None):
    """Per stage, latencies in ms of ``iterations`` runs after ``warmup``; the mean detections per frame. Stops
    early once ``deadline_s`` seconds are spent; ``step()`` after each timed run."""
    for group in frame_groups(frames, pipeline.batch, warmup):
        pipeline(group)
    stages = {name: [] for name in STAGES}
    kept = []
    deadline = time.perf_counter() + deadline_s if deadline_s else None
    for group in frame_groups(frames, pipeline.batch, iterations):
        t0 = time.perf_counter_ns()
        x, fits = pipeline.preprocess(group)
        t1 = time.perf_counter_ns()
        outputs = pipeline.model(x)
        t2 = time.perf_counter_ns()
        detections = pipeline.decode(outputs, fits)
        t3 = time.perf_counter_ns()
        for name, ns in zip(STAGES, (t1 - t0, t2 - t1, t3 - t2, t3 - t0)):
            stages[name].append(ns / 1e6)
        kept.extend(len(d[1]) for d in detections)
        if step:
            step()
        if deadline is not None and time.perf_counter() > deadline:
            break
    return stages, sum(kept) / float(len(kept))


def save_detections(pipeline, frames, path):
    """Every frame once, untimed: ``boxes{i}``, ``scores{i}``, ``classes{i}`` per frame, into an .npz."""
    import numpy as np

    arrays = {}
    groups = (len(frames) + pipeline.batch - 1) // pipeline.batch
    for g, group in enumerate(frame_groups(frames, pipeline.batch, groups)):
        for k, (boxes, scores, classes) in enumerate(pipeline(group)):
            i = g * pipeline.batch + k
            if i < len(frames):
                arrays.update({"boxes%d" % i: boxes, "scores%d" % i: scores, "classes%d" % i: classes})
    with open(path, "wb") as f:  # a file object: np.savez would append .npz to a bare name
        np.savez(f, **arrays)
