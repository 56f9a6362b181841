"""Checks, without ARM hardware, that an int8 .tflite gives on aarch64 and in Arm NN what it
gives on x86.

    python tools/check_arm.py --model=FILE.tflite [--images=N] [--json=PATH]
                              [--val_annotations=JSON --val_images=DIR] [--debian_mirror=URI]

The val images are those of the run the file belongs to (`report.json` beside its `export/`
folder) unless --val_annotations/--val_images name a COCO set. The first N of them (default 32)
are letterboxed (detection) or cut into the crops of their ground-truth person boxes (pose)
exactly as tfqat evaluates, quantized with the file's input scale, and fed to every
configuration below. Each configuration runs all images in one process of
`check_arm_worker.py`, one image per invoke, one thread:

  x86_64    LiteRT (ai-edge-litert) of this machine, three kernel paths: its default delegates
            (XNNPACK), BUILTIN_WITHOUT_DEFAULT_DELEGATES (builtin optimized kernels) and
            BUILTIN_REF (reference kernels).
  aarch64   the same three paths with LiteRT 2.3.0, then with tflite-runtime 2.14 (numpy<2, what
            many Raspberry Pi images pin), each as QEMU_CPU=cortex-a72 (Raspberry Pi 4: NEON, no
            dot product) and cortex-a76 (Raspberry Pi 5, Android big cores: dot product), in an
            emulated Debian 12 arm64 root (`arm_emulation.py`: built once, cached under
            $TFQAT_CACHE_DIR/arm, about 30 s and 350 MB).
  Arm NN    Debian 12's pyarmnn (Arm NN 20.08): its TfLite parser and the CpuRef backend, the
            one backend of an x86 build. A layer it cannot parse or run is named.

Each configuration says which kernel path really ran, read back from the interpreter's nodes
(XNNPACK delegate partitions and the operators left to builtin kernels), and the CPU features
the process saw. Its raw int8 outputs are compared with x86 LiteRT on the same kernel path
(the path that really ran; Arm NN CpuRef with x86 BUILTIN_REF): max and mean difference in int8
steps per output. Kernel paths differ from each other by design (up to 13-17 steps on some
detector outputs), so the task metric judges them: pycocotools on the N images (detection:
mAP50_95, mAP50; pose: OKS AP, AP50 with the ground-truth person boxes, as tfqat's pose task),
through tfqat's numpy post-processors.

Pass criteria (the tool exits 1 if any fails):
  * every configuration runs the file, and LiteRT's default delegates run XNNPACK;
  * aarch64 XNNPACK == x86 XNNPACK and aarch64 reference kernels == x86 reference kernels bit
    for bit, for both CPU models (the reference kernels of tflite-runtime 2.14 included);
  * every configuration's metrics are within 1 % of x86 XNNPACK's on the same images, with an
    absolute floor of 0.005 (|m - m_x86| <= max(0.01 * m_x86, 0.005)): the floor keeps a model
    whose metrics are near 0 (a smoke model) from failing on noise.

Exit status: 0 all pass; 1 a criterion fails or a tool could not be built; 2 bad input (the
message names the file or flag); 3 a package registry could not be reached to build the tools.
`--json` writes every figure printed, and the package versions used.
"""

import json
import os
import re
import subprocess
import sys
import tempfile
import time

import arm_emulation
import numpy as np
from absl import app, flags
from ai_edge_litert.interpreter import Interpreter
from check_arm_val import InputError, default_cache_dir, load_val_set, score, val_inputs

FLAGS = flags.FLAGS
WORKER = os.path.join(os.path.dirname(os.path.abspath(__file__)), "check_arm_worker.py")
CPU_MODELS = ("cortex-a72", "cortex-a76")
KERNELS = ("default", "without_default_delegates", "reference")
RUNTIMES = {"litert": "ai_edge_litert", "tflite214": "tflite_runtime"}
RELATIVE_TOLERANCE, ABSOLUTE_FLOOR = 0.01, 0.005


def configurations() -> list[dict]:
    """x86 LiteRT first (the references), then aarch64 LiteRT, tflite-runtime 2.14, Arm NN."""
    x86 = [{"machine": "x86_64", "cpu": "host", "site": "litert", "kernels": k} for k in KERNELS]
    arm = [
        {"machine": "aarch64", "cpu": cpu, "site": site, "kernels": k}
        for site in RUNTIMES
        for cpu in CPU_MODELS
        for k in KERNELS
    ]
    armnn = [{"machine": "x86_64", "cpu": "host", "site": "armnn", "kernels": "CpuRef"}]
    for config in x86 + arm + armnn:
        site = {"litert": "LiteRT", "tflite214": "tflite-runtime 2.14", "armnn": "Arm NN"}
        config["label"] = (
            f"{config['machine']} {config['cpu']} {site[config['site']]} "
            f"{config['kernels']}".replace(" host", "")
        )
    return x86 + arm + armnn


# === Running the configurations ===


def build_tools(cache_dir: str, mirror: str) -> dict:
    start = time.perf_counter()
    qemu = arm_emulation.build_qemu(cache_dir, mirror)
    tools = {
        "qemu": qemu,
        "root": arm_emulation.build_arm64_root(cache_dir, mirror, qemu),
        "armnn": arm_emulation.build_armnn(cache_dir, mirror),
    }
    tools["seconds"] = round(time.perf_counter() - start, 1)
    return tools


def worker_command(config: dict, tools: dict, model: str, inputs: str, outputs: str):
    """(command, environment) of one configuration's worker process."""
    argv = [
        WORKER,
        f"--model={os.path.abspath(model)}",
        f"--inputs={inputs}",
        f"--outputs={outputs}",
        "--num_threads=1",
    ]
    if config["site"] == "armnn":
        env, backends = arm_emulation.armnn_environment(tools["armnn"])
        inherited = os.environ.get("LD_LIBRARY_PATH")
        if inherited:
            env["LD_LIBRARY_PATH"] += os.pathsep + inherited
        return (
            [sys.executable, *argv, "--runtime=pyarmnn", f"--armnn_backends={backends}"],
            dict(os.environ, **env),
        )
    argv += [f"--runtime={RUNTIMES[config['site']]}", f"--kernels={config['kernels']}"]
    if config["machine"] == "x86_64":
        return [sys.executable, *argv], dict(os.environ)
    qemu = os.path.join(tools["qemu"], "qemu-aarch64")
    return arm_emulation.guest_command(tools["root"], qemu, config["cpu"], config["site"], argv)


def run_configuration(config: dict, tools: dict, model: str, inputs_path: str, scratch: str):
    """The worker's outputs [N, ...] in file order and its report; on failure, the error."""
    outputs_path = os.path.join(scratch, "outputs.npz")
    command, env = worker_command(config, tools, model, inputs_path, outputs_path)
    start = time.perf_counter()
    result = subprocess.run(command, check=False, env=env, capture_output=True, text=True)
    seconds = round(time.perf_counter() - start, 1)
    if result.returncode:
        lines = [line for line in result.stderr.strip().splitlines() if line.strip()]
        status = result.returncode
        crash = f"crashed (signal {-status})" if status < 0 else f"exit status {status}"
        return None, {
            "error": lines[-1] if status > 0 and lines else crash,
            "stderr": result.stderr[-4000:],
            "wall_seconds": seconds,
        }
    with np.load(outputs_path) as saved:
        info = json.loads(str(saved["__report__"]))
        outputs = [saved[f"output_{i}"] for i in range(len(info["output_tensors"]))]
    os.remove(outputs_path)
    return outputs, dict(info, wall_seconds=seconds)


def name_unsupported_layer(error: str, model: str) -> str:
    """Arm NN names an operator it cannot parse by its index ("operator #12"): add the tensors
    it writes, which carry the Keras layer's name."""
    found = re.search(r"operator\s*[:#]\s*(\d+)", error)
    if not found:
        return error
    interpreter = Interpreter(model_path=model)
    ops = interpreter._get_ops_details()  # the only view of the operators Python has
    index = int(found.group(1))
    if index >= len(ops):
        return error
    tensors = {d["index"]: d["name"] for d in interpreter.get_tensor_details()}
    written = ", ".join(tensors.get(t, str(t)) for t in ops[index]["outputs"])
    return f"{error} [operator {index}: {ops[index]['op_name']} writing {written}]"


# === Comparing ===


def same_shapes(raw, model_info: dict, count: int) -> bool:
    """Whether a run gave `count` results of every output, shaped as the metadata says."""
    expected = [[count, *o["shape"][1:]] for o in model_info["outputs"]]
    return [list(a.shape) for a in raw] == expected


def int8_steps(outputs, reference, names) -> dict:
    """{output name: {"max_steps", "mean_steps"}} between two runs' raw outputs."""
    steps = {}
    for name, a, b in zip(names, outputs, reference):
        difference = np.abs(a.astype(np.int64) - b.astype(np.int64))
        steps[name] = {
            "max_steps": int(difference.max()),
            "mean_steps": round(float(difference.mean()), 4),
        }
    return steps


def pick_reference(row: dict, x86_rows: list[dict]):
    """The x86 LiteRT row to compare with: the same kernel path as really ran (Arm NN CpuRef:
    x86 reference kernels), else the same requested kernels."""
    if row["site"] == "armnn":
        return next((r for r in x86_rows if r["kernels"] == "reference"), None)
    same_path = [r for r in x86_rows if r.get("kernels_run") == row.get("kernels_run")]
    same_request = [r for r in x86_rows if r["kernels"] == row["kernels"]]
    return next(iter(same_path or same_request), None)


def expects_bit_exact(row: dict, reference: dict) -> bool:
    """XNNPACK vs XNNPACK, and reference kernels vs reference kernels, on another machine."""
    path = row.get("kernels_run", "")
    same = path == reference.get("kernels_run") and row["site"] != "armnn"
    return same and row["machine"] != "x86_64" and ("XNNPACK" in path or path.endswith("reference"))


def allowed_difference(reference_metric: float) -> float:
    return max(RELATIVE_TOLERANCE * abs(reference_metric), ABSOLUTE_FLOOR)


def compare_rows(rows: list[dict], outputs: dict, names) -> None:
    """Adds the comparison with x86 and the metric differences to every row that ran."""
    x86_rows = [
        r for r in rows if r["machine"] == "x86_64" and r["site"] == "litert" and "error" not in r
    ]
    baseline = rows[0]  # x86 LiteRT default: XNNPACK
    for row in rows:
        if "error" in row or row is baseline:
            continue
        row["metric_differences"] = {
            k: round(v - baseline["metrics"][k], 6) for k, v in row["metrics"].items()
        }
        reference = baseline if row in x86_rows else pick_reference(row, x86_rows)
        if reference is None:  # its x86 counterpart failed to run (a criterion says so)
            continue
        row["compared_with"] = reference["label"]
        row["output_steps"] = int8_steps(outputs[row["label"]], outputs[reference["label"]], names)
        row["bit_exact"] = all(s["max_steps"] == 0 for s in row["output_steps"].values())
        row["expected_bit_exact"] = expects_bit_exact(row, reference)


def criteria(rows: list[dict]) -> list[dict]:
    """The pass criteria of the module docstring, one entry per configuration and check."""
    baseline = rows[0]["metrics"]
    checks = []
    for row in rows:
        label = row["label"]
        if "error" in row:
            checks.append(
                {"check": f"{label} runs the file", "passed": False, "detail": row["error"]}
            )
            continue
        if row["site"] == "litert" and row["kernels"] == "default":
            checks.append(
                {
                    "check": f"{label} runs XNNPACK",
                    "passed": "XNNPACK" in row["kernels_run"],
                    "detail": row["kernels_run"],
                }
            )
        if row.get("expected_bit_exact"):
            worst = max(s["max_steps"] for s in row["output_steps"].values())
            checks.append(
                {
                    "check": f"{label} == {row['compared_with']} bit for bit",
                    "passed": row["bit_exact"],
                    "detail": f"max {worst} int8 steps",
                }
            )
        for name, difference in row.get("metric_differences", {}).items():
            allowed = allowed_difference(baseline[name])
            checks.append(
                {
                    "check": f"{label} {name} within {allowed:.4f} of x86 XNNPACK",
                    "passed": abs(difference) <= allowed + 1e-9,
                    "detail": f"{row['metrics'][name]:.4f} vs {baseline[name]:.4f}",
                }
            )
    return checks


# === The check ===


def check(
    model: str, val_annotations, val_images, num_images: int, cache_dir: str, mirror: str
) -> dict:
    """Runs every configuration and returns the report (see the module docstring)."""
    start = time.perf_counter()
    model_info, dataset, paths = load_val_set(model, val_annotations, val_images)
    inputs = val_inputs(model_info, dataset, num_images)
    names = model_info["output_names"]
    tools = build_tools(cache_dir, mirror)
    rows, outputs = [], {}
    with tempfile.TemporaryDirectory(prefix="check_arm_") as scratch:
        inputs_path = os.path.join(scratch, "inputs.npy")
        np.save(inputs_path, inputs.quantized)
        for config in configurations():
            print(f"running {config['label']} ...", file=sys.stderr, flush=True)
            raw, info = run_configuration(config, tools, model, inputs_path, scratch)
            row = dict(config, **info)
            if raw is not None and not same_shapes(raw, model_info, len(inputs.quantized)):
                raw, row["error"] = (
                    None,
                    "output shapes "
                    + ", ".join(str(list(a.shape)) for a in raw)
                    + " are not the file's",
                )
            if raw is not None:
                outputs[row["label"]] = raw
                row["metrics"] = score(raw, model_info, dataset, inputs)
            elif config["site"] == "armnn":
                row["error"] = name_unsupported_layer(row["error"], model)
            rows.append(row)
    if "error" in rows[0]:
        raise arm_emulation.BuildError(f"x86 LiteRT cannot run {model}: {rows[0]['error']}")
    compare_rows(rows, outputs, names)
    checks = criteria(rows)
    return {
        "model": os.path.abspath(model),
        "task": model_info["task"],
        "input_size": model_info["input"]["size"],
        "output_names": names,
        **paths,
        "images": len(inputs.image_ids),
        "image_ids": inputs.image_ids,
        "model_inputs": len(inputs.quantized),
        "tolerance": {"relative": RELATIVE_TOLERANCE, "absolute_floor": ABSOLUTE_FLOOR},
        "tools": {
            "seconds_to_build_or_find": tools["seconds"],
            **{
                k: dict(arm_emulation.read_manifest(tools[k]), folder=tools[k])
                for k in ("qemu", "root", "armnn")
            },
        },
        "configurations": rows,
        "criteria": checks,
        "criteria_passed": sum(c["passed"] for c in checks),
        "criteria_failed": sum(not c["passed"] for c in checks),
        "passed": all(c["passed"] for c in checks),
        "seconds": round(time.perf_counter() - start, 1),
    }


# === Printing ===


def tools_line(tools: dict) -> str:
    root, armnn = tools["root"], tools["armnn"]
    sites = "; ".join(
        " + ".join(
            f"{name} {wheels[name]}"
            for name in ("ai_edge_litert", "tflite_runtime", "numpy")
            if name in wheels
        )
        for wheels in root["wheels"].values()
    )
    return (
        f"{tools['qemu']['qemu']}; arm64 root: Debian 12 python3.11 "
        f"{root['debian_packages']['python3.11']}, {sites}; Arm NN: python3-pyarmnn "
        f"{armnn['debian_packages']['python3-pyarmnn']} "
        f"(ready in {tools['seconds_to_build_or_find']} s)"
    )


def configuration_lines(row: dict, baseline: dict) -> list[str]:
    if "error" in row:
        return [f"{row['label']}: FAILED TO RUN: {row['error']}"]
    left = ", ".join(f"{op} x{n}" for op, n in row.get("left_to_builtin", {}).items())
    lines = [
        f"{row['label']}: ran {row['kernels_run']}"
        + (f" ({left})" if left else "")
        + f"; {row['runtime']}; cpu features {' '.join(row['cpu_features']) or '-'}; "
        f"{row['images']} inputs in {row['wall_seconds']} s ({row['seconds']} s running)"
    ]
    if "compared_with" in row:
        expected = "expected" if row["expected_bit_exact"] else "not expected"
        lines.append(
            f"  vs {row['compared_with']}: bit-exact {'yes' if row['bit_exact'] else 'no'}"
            f" ({expected}); int8 steps max/mean per output:"
        )
        lines.append(
            "    "
            + "  ".join(
                f"{name} {s['max_steps']}/{s['mean_steps']:.3f}"
                for name, s in row["output_steps"].items()
            )
        )
    metrics = "  ".join(f"{name} {value:.4f}" for name, value in row["metrics"].items())
    if "metric_differences" in row:
        differences = " ".join(f"{v:+.4f}" for v in row["metric_differences"].values())
        metrics += (
            f"  (x86 XNNPACK {' '.join(f'{v:.4f}' for v in baseline.values())}, "
            f"difference {differences})"
        )
    return lines + [f"  {metrics}"]


def print_report(report: dict):
    print(
        f"check_arm: {report['model']}: {report['task']} "
        f"{'x'.join(map(str, report['input_size']))}, outputs {' '.join(report['output_names'])}"
    )
    print(
        f"val: first {report['images']} images of {report['val_annotations']} "
        f"({report['model_inputs']} model inputs)"
    )
    print(f"tools: {tools_line(report['tools'])}")
    baseline = report["configurations"][0].get("metrics", {})
    for row in report["configurations"]:
        print("\n".join(configuration_lines(row, baseline)))
    tolerance = report["tolerance"]
    print(
        f"criteria (metrics: within {tolerance['relative']:.0%} of x86 XNNPACK's, at least "
        f"{tolerance['absolute_floor']}):"
    )
    for check_row in report["criteria"]:
        print(
            f"  {'PASS' if check_row['passed'] else 'FAIL'}  {check_row['check']}  "
            f"({check_row['detail']})"
        )
    passed, failed = report["criteria_passed"], report["criteria_failed"]
    verdict = (
        f"PASS, {passed} criteria hold"
        if report["passed"]
        else f"FAIL, {failed} criteria fail ({passed} hold)"
    )
    print(f"check_arm: {verdict}; {report['seconds']} s")


# === Entry point ===


def main(argv):
    if len(argv) > 1:
        print(f"check_arm: unexpected arguments {argv[1:]}", file=sys.stderr)
        return 2
    if FLAGS.json and not os.path.isdir(os.path.dirname(os.path.abspath(FLAGS.json))):
        print(f"check_arm: --json={FLAGS.json}: its folder does not exist", file=sys.stderr)
        return 2
    try:
        mirror = FLAGS.debian_mirror or arm_emulation.debian_mirror()
        report = check(
            FLAGS.model,
            FLAGS.val_annotations,
            FLAGS.val_images,
            FLAGS.images,
            default_cache_dir(),
            mirror,
        )
    except InputError as e:
        print(f"check_arm: {e}", file=sys.stderr)
        return 2
    except arm_emulation.RegistryUnreachable as e:
        print(f"check_arm: a package registry cannot be reached: {e}", file=sys.stderr)
        return 3
    except arm_emulation.BuildError as e:
        print(f"check_arm: {e}", file=sys.stderr)
        return 1
    print_report(report)
    if FLAGS.json:
        with open(FLAGS.json, "w") as f:
            json.dump(report, f, indent=1)
    return 0 if report["passed"] else 1


def define_flags():
    flags.DEFINE_string("model", None, "The fully-int8 .tflite to check.")
    flags.DEFINE_integer("images", 32, "How many val images to run.", lower_bound=1)
    flags.DEFINE_string("json", None, "Also write the report (every printed figure) here.")
    flags.DEFINE_string("val_annotations", None, "COCO JSON of the val set (default: the run's).")
    flags.DEFINE_string("val_images", None, "Image folder of --val_annotations.")
    flags.DEFINE_string(
        "debian_mirror", None, "Debian archive URI (default: this machine's apt source)."
    )
    flags.mark_flag_as_required("model")
    flags.register_multi_flags_validator(
        ["val_annotations", "val_images"],
        lambda v: bool(v["val_annotations"]) == bool(v["val_images"]),
        "--val_annotations and --val_images go together",
    )


if __name__ == "__main__":
    define_flags()
    app.run(main)
