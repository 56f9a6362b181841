"""Instructions per inference of a .tflite file on LiteRT at 1 thread, counted by valgrind's
callgrind: a figure that does not depend on what else the machine runs.

    python tools/benchmark_callgrind.py MODEL.tflite INPUT.npy INVOKES     (the worker)

The worker loads the file in LiteRT (1 thread, default XNNPACK delegate), sets the input and
invokes it INVOKES times. Callgrind counts instructions only inside LiteRT's Python-facing
Invoke (`--toggle-collect`) and writes one profile per call (`--dump-after`); the count of the
last call is the steady state (the first one pays one-time set-up).

Valgrind is Debian's package, fetched once with `apt-get download` and unpacked with
`dpkg-deb -x` into the cache ($TFQAT_CACHE_DIR or ~/.cache/tfqat, valgrind/): no root, nothing
installed into the system. Valgrind runs x86 code only up to AVX2, so the count describes an
AVX2 CPU without VNNI, whatever CPU runs it.
"""

import glob
import os
import subprocess
import sys
import tempfile

import numpy as np

# The function LiteRT's Python `Interpreter.invoke()` enters (ai-edge-litert, tflite-runtime).
INVOKE_SYMBOL = "tflite::interpreter_wrapper::InterpreterWrapper::Invoke(int)"
INVOKES = 3


def valgrind_folder(cache_dir: str) -> str:
    """The cache folder holding Debian's valgrind unpacked (usr/bin, usr/libexec/valgrind)."""
    import arm_emulation

    def build(folder):
        with tempfile.TemporaryDirectory() as scratch:
            command = ["apt-get", "download", "valgrind"]
            result = subprocess.run(command, cwd=scratch, capture_output=True, text=True)
            debs = glob.glob(os.path.join(scratch, "valgrind_*.deb"))
            if result.returncode or not debs:
                raise arm_emulation.BuildError(
                    "apt-get download valgrind failed (run apt-get update first, or pass "
                    f"--nocallgrind):\n{(result.stdout + result.stderr)[-2000:]}"
                )
            arm_emulation.unpack_debs(debs, folder)

    return arm_emulation.cached_folder(cache_dir, "valgrind", ["valgrind"], build, "valgrind")


def valgrind_command(folder: str) -> tuple[list[str], dict]:
    """The valgrind binary of `folder` and the environment that finds its tools."""
    env = dict(os.environ, VALGRIND_LIB=os.path.join(folder, "usr", "libexec", "valgrind"))
    return [os.path.join(folder, "usr", "bin", "valgrind")], env


def valgrind_version(folder: str) -> str:
    valgrind, env = valgrind_command(folder)
    result = subprocess.run([*valgrind, "--version"], capture_output=True, text=True, env=env)
    return result.stdout.strip()


def instructions_per_invoke(valgrind_folder_path: str, model: str, pixels) -> int:
    """Instructions of one steady-state invoke of `model` on `pixels` (float [1, H, W, 3])."""
    valgrind, env = valgrind_command(valgrind_folder_path)
    with tempfile.TemporaryDirectory() as scratch:
        inputs = os.path.join(scratch, "input.npy")
        np.save(inputs, np.asarray(pixels, np.float32))
        out = os.path.join(scratch, "callgrind.out")
        command = [
            *valgrind,
            "--tool=callgrind",
            f"--callgrind-out-file={out}",
            "--collect-atstart=no",
            f"--toggle-collect={INVOKE_SYMBOL}",
            f"--dump-after={INVOKE_SYMBOL}",
            sys.executable,
            os.path.abspath(__file__),
            model,
            inputs,
            str(INVOKES),
        ]
        result = subprocess.run(command, capture_output=True, text=True, env=env)
        if result.returncode:
            raise RuntimeError(f"callgrind of {model} failed:\n{result.stderr[-3000:]}")
        counts = dumped_instructions(out)
    if len(counts) != INVOKES:
        raise RuntimeError(
            f"callgrind of {model}: {len(counts)} profiles for {INVOKES} invokes; is "
            f"{INVOKE_SYMBOL} still LiteRT's invoke?"
        )
    return counts[-1]


def dumped_instructions(out: str) -> list[int]:
    """The instruction count ("summary:" line) of each `<out>.<n>` profile, in call order."""
    counts = {}
    for path in glob.glob(f"{out}.*"):
        with open(path) as f:
            summary = next(line for line in f if line.startswith("summary:"))
        counts[int(path.rsplit(".", 1)[1])] = int(summary.split()[1])
    return [counts[n] for n in sorted(counts)]


def run_worker(model: str, inputs: str, invokes: int):
    from tfqat.runtime.pixels import quantize_pixels
    from tfqat.runtime.tflite import interpreter_module

    interpreter = interpreter_module().Interpreter(model_path=model, num_threads=1)
    interpreter.allocate_tensors()
    (detail,) = interpreter.get_input_details()
    interpreter.set_tensor(detail["index"], quantize_pixels(np.load(inputs), detail["dtype"]))
    for _ in range(invokes):
        interpreter.invoke()


if __name__ == "__main__":
    run_worker(sys.argv[1], sys.argv[2], int(sys.argv[3]))
