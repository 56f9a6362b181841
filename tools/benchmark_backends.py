"""What tools/benchmark.py times: every model file of a run's export/ on each runtime that runs
it, and the peers made in the same run; each as two calls, the model alone and one image end to
end.

  * `.tflite`: LiteRT (default XNNPACK delegate) at 1 thread and at `threads`;
  * `.onnx`: onnxruntime (CPU) at `threads`;
  * OpenVINO `.xml`: PERFORMANCE_HINT=LATENCY at `threads`, at the plugin's default precision;
  * peers: NNCF post-training INT8 of `openvino/model_float.xml` (same calibration images) and
    the float IR at INFERENCE_PRECISION_HINT=f32.

The model alone: one already letterboxed and quantized image in, the outputs as the file stores
them out. End to end: a decoded image at its own size (HxWx3 uint8) -> letterbox (or the person
crop) -> quantize -> the model -> dequantize -> the shared numpy decode and NMS
(`tfqat.runtime` predictors) at DEPLOYMENT_SCORE_THRESHOLD, boxes in image pixels.
"""

import glob
import os
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from tfqat.data import crop as crop_lib
from tfqat.data.letterbox import boxes_to_image, letterbox_image
from tfqat.evaluate.artifacts import exported_kind
from tfqat.export.artifacts import ANDROID_ARTIFACT, EXPORTED
from tfqat.runtime import DetectionPredictor, PosePredictor, load
from tfqat.runtime.backends import FORMATS
from tfqat.runtime.metadata import read_metadata
from tfqat.runtime.pixels import quantize_pixels

# What a deployed detector keeps; evaluation keeps everything above 0.001 for the mAP.
DEPLOYMENT_SCORE_THRESHOLD = 0.25
NNCF = "openvino_int8_nncf"
LITERT, ONNXRUNTIME = "LiteRT XNNPACK", "onnxruntime"
OPENVINO, OPENVINO_F32 = "OpenVINO LATENCY", "OpenVINO LATENCY f32"


@dataclass
class Backend:
    """One model on one runtime: `model()` and `end_to_end()` each run one image."""

    artifact: str  # report.json's name of the file, or the peer's name
    runtime: str
    threads: int
    model: Callable
    end_to_end: Callable
    runner: object  # float pixel batches -> outputs (a predict_fn); OpenVINO's has `compiled`
    openvino_model: object = None  # path or openvino.Model, for throughput (OpenVINO only)
    precision_hint: str | None = None
    peer: bool = False  # not a file of the run: its accuracy is measured here

    @property
    def label(self) -> str:
        return f"{self.artifact} | {self.runtime} | {self.threads}t"


def exported_models(export_dir: str) -> dict:
    """{artifact name: path} of every model file in export/ (.tflite, .onnx, openvino/*.xml),
    named as report.json names them (`tfqat.evaluate.artifacts.exported_kind`), in EXPORTED's
    order, then files it does not list."""
    paths = []
    for extension in FORMATS:
        paths += glob.glob(os.path.join(export_dir, f"*{extension}"))
        paths += glob.glob(os.path.join(export_dir, "openvino", f"*{extension}"))
    order = list(EXPORTED)

    def position(path):
        key = os.path.relpath(path, export_dir)
        return (order.index(key) if key in order else len(order), key)

    return {exported_kind(p, read_metadata(p))[0]: p for p in sorted(paths, key=position)}


def sample_image(task) -> tuple[np.ndarray, list | None]:
    """The first val image, decoded at its own size, and (pose) its first person box."""
    from tfqat.data.images import decode_image

    sample = task.val_set.samples[0]
    image = decode_image(sample.path, task.val_set.exif_transpose)
    boxes = [sample.boxes[0].tolist()] if task.name == "pose" and len(sample.boxes) else None
    return image, boxes


def model_input(predictor, image, boxes) -> np.ndarray:
    """The float pixels [1, H, W, 3] the model itself sees for this image (letterbox / crop)."""
    if isinstance(predictor, PosePredictor):
        x1, y1, x2, y2 = boxes[0] if boxes else (0, 0, image.shape[1], image.shape[0])
        padding = predictor.decode_parameters["box_padding"]
        matrix = crop_lib.crop_matrix((x1, y1, x2 - x1, y2 - y1), predictor.input_size, padding)
        return crop_lib.warp_crop(image, matrix, predictor.input_size)[None].astype(np.float32)
    return letterbox_image(image, *predictor.input_size)[0][None].astype(np.float32)


def model_call(runner, pixels) -> Callable:
    """One inference of an already quantized input: the runtime's own cost."""
    if hasattr(runner, "interpreter"):  # TFLiteRunner
        interpreter, detail = runner.interpreter, runner.input_detail
        quantized = quantize_pixels(pixels, detail["dtype"])
        outputs = [d["index"] for d in runner.output_details]

        def call():
            interpreter.set_tensor(detail["index"], quantized)
            interpreter.invoke()
            return [interpreter.get_tensor(i) for i in outputs]

        return call
    prepared = runner.quantize(pixels)
    return lambda: runner.infer(prepared)


def end_to_end_call(predictor, image, boxes) -> Callable:
    if isinstance(predictor, PosePredictor):
        return lambda: predictor.keypoints(image, boxes)
    return lambda: predictor.detect(image, score_threshold=DEPLOYMENT_SCORE_THRESHOLD)


def predictor_backend(artifact, runtime, threads, predictor, image, boxes, **openvino):
    pixels = model_input(predictor, image, boxes)
    return Backend(
        artifact,
        runtime,
        threads,
        model_call(predictor.backend, pixels),
        end_to_end_call(predictor, image, boxes),
        predictor.backend,
        **openvino,
    )


def android_backend(path, threads, image) -> Backend:
    """The Android file: decode and NMS are in its graph (its own score threshold)."""
    from tfqat.runtime.android import AndroidDetector

    detector = AndroidDetector(path, num_threads=threads)
    canvas = letterbox_image(image, *detector.input_size)[0][None].astype(np.float32)

    def end_to_end():
        letterboxed, letterbox = letterbox_image(image, *detector.input_size)
        ((boxes, scores, labels),) = detector.detect(letterboxed[None])
        return boxes_to_image(boxes, letterbox), scores, labels

    model = model_call(detector.runner, canvas)
    return Backend(ANDROID_ARTIFACT, LITERT, threads, model, end_to_end, detector.runner)


def file_backends(name, path, threads, image, boxes) -> list[Backend]:
    """Every runtime of one exported file: LiteRT at 1 and `threads` threads, onnxruntime or
    OpenVINO at `threads`."""
    kind = FORMATS[os.path.splitext(path)[1]]
    if kind != "tflite":
        runtime = ONNXRUNTIME if kind == "onnx" else OPENVINO
        predictor = load(path, num_threads=threads)
        extra = {"openvino_model": path} if kind == "openvino" else {}
        return [predictor_backend(name, runtime, threads, predictor, image, boxes, **extra)]
    backends = []
    for count in sorted({1, threads}):
        if name == ANDROID_ARTIFACT:
            backends.append(android_backend(path, count, image))
        else:
            predictor = load(path, num_threads=count)
            backends.append(predictor_backend(name, LITERT, count, predictor, image, boxes))
    return backends


def peer_backends(float_xml, nncf_model, threads, image, boxes) -> list[Backend]:
    """NNCF's INT8 of the float IR, and the float IR at f32 (OpenVINO, LATENCY hint)."""
    from tfqat.runtime.onnx_openvino import OpenVINORunner

    metadata = read_metadata(float_xml)
    predictor_class = {"detection": DetectionPredictor, "pose": PosePredictor}[metadata["task"]]
    backends = []
    for artifact, model, hint in [("openvino_float", float_xml, "f32"), (NNCF, nncf_model, None)]:
        runner = OpenVINORunner(
            model, threads, precision_hint=hint, output_order=list(metadata["output_names"])
        )
        predictor = predictor_class(runner, metadata)
        runtime = OPENVINO_F32 if hint else OPENVINO
        backends.append(
            predictor_backend(
                artifact,
                runtime,
                threads,
                predictor,
                image,
                boxes,
                openvino_model=model,
                precision_hint=hint,
                peer=True,
            )
        )
    return backends


def nncf_model(float_xml, calibration):
    """NNCF post-training INT8 of the float IR, on the run's calibration images."""
    import nncf
    import openvino as ov

    model = ov.Core().read_model(float_xml)
    dataset = nncf.Dataset([image[None] for image in calibration])
    return nncf.quantize(model, dataset, subset_size=len(calibration))


def saved_ir(model, folder) -> str:
    """Saves an openvino.Model as `folder`/model.xml (+ .bin, f32 weights kept); its path."""
    import openvino as ov

    path = os.path.join(folder, "model.xml")
    ov.save_model(model, path, compress_to_fp16=False)
    return path


def openvino_throughput(model, pixels, threads, seconds, precision_hint=None) -> float:
    """Images/s of OpenVINO with PERFORMANCE_HINT=THROUGHPUT: as many requests in flight as the
    plugin asks for (AsyncInferQueue), the same image over and over, for `seconds`."""
    import openvino as ov

    config = {"PERFORMANCE_HINT": "THROUGHPUT", "INFERENCE_NUM_THREADS": int(threads)}
    if precision_hint:
        config["INFERENCE_PRECISION_HINT"] = precision_hint
    core = ov.Core()
    source = core.read_model(model) if isinstance(model, str) else model
    compiled = core.compile_model(source, "CPU", config)
    queue = ov.AsyncInferQueue(compiled, compiled.get_property("OPTIMAL_NUMBER_OF_INFER_REQUESTS"))
    element = compiled.inputs[0].get_element_type().get_type_name()
    dtype = {"i8": np.int8, "u8": np.uint8}.get(element, np.float32)
    inputs = {0: quantize_pixels(pixels, dtype)}
    for _ in range(len(queue)):  # warm-up: every request once
        queue.start_async(inputs)
    queue.wait_all()
    count, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        queue.start_async(inputs)
        count += 1
    queue.wait_all()
    return count / (time.perf_counter() - start)


def throughputs(backends, pixels, threads, seconds, rounds=3, seed=0, progress=None) -> dict:
    """{label: median images/s} of the OpenVINO backends, `rounds` turns in random order."""
    openvino = [b for b in backends if b.openvino_model is not None]
    rates = {b.label: [] for b in openvino}
    rng = np.random.default_rng(seed)
    for _ in range(rounds):
        for position in rng.permutation(len(openvino)):
            backend = openvino[position]
            rates[backend.label].append(
                openvino_throughput(
                    backend.openvino_model, pixels, threads, seconds, backend.precision_hint
                )
            )
            if progress:
                progress(1)
    return {label: round(float(np.median(r)), 1) for label, r in rates.items()}
