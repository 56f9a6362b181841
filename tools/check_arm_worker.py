"""Runs a .tflite on quantized inputs and saves its raw outputs: the worker of check_arm.py.

    python check_arm_worker.py --model=M.tflite --inputs=IN.npy --outputs=OUT.npz
                               --runtime=ai_edge_litert|tflite_runtime|pyarmnn
                               [--kernels=default|without_default_delegates|reference]
                               [--num_threads=N] [--armnn_backends=DIR]

`check_arm.py` runs this same file everywhere: with this machine's Python (x86 LiteRT), inside
the emulated arm64 root (`qemu-aarch64`, LiteRT or tflite-runtime 2.14) and beside Debian's
pyarmnn (Arm NN's TfLite parser, CpuRef backend). So it imports only the standard library, numpy
and the runtime under test (no tfqat, no absl: the arm64 root has neither), and every
configuration feeds the same int8 inputs [N, H, W, C] one image at a time.

OUT.npz holds one array [N, ...] per output, `output_0`, `output_1`, ... in the order of the
file's subgraph outputs, and `__report__`: a JSON string with the output tensor names, the
runtime and numpy versions, the machine, the CPU features
the process sees (aarch64: from its auxiliary vector, what XNNPACK and ruy choose kernels by) and
`kernels_run`, the kernel path read back from the interpreter's nodes: "XNNPACK" (delegate
nodes took every operator), "XNNPACK + builtin ... for K ops" (`left_to_builtin` names them),
"builtin optimized" / "builtin reference" (no delegate node; which builtin kernels is the op
resolver's choice), or, for Arm NN, its backend. Exits 3 with the runtime's error on stderr
when it cannot load or run the file.
"""

import argparse
import json
import os
import platform
import struct
import sys
import time
from collections import Counter

import numpy as np

KERNEL_CHOICES = ("default", "without_default_delegates", "reference")
RUNTIMES = ("ai_edge_litert", "tflite_runtime", "pyarmnn")
# Linux auxiliary vector keys and the aarch64 HWCAP bits that select int8 kernels.
AT_HWCAP, AT_HWCAP2 = 16, 26
AARCH64_HWCAP = {"asimd": 1 << 1, "asimddp": 1 << 20, "sve": 1 << 22}
AARCH64_HWCAP2 = {"i8mm": 1 << 13, "bf16": 1 << 14}
X86_FLAGS = ("avx2", "avx512f", "avx512_vnni", "avx_vnni", "amx_int8")


def cpu_features() -> list[str]:
    """The CPU features this process sees: the kernels' choice depends on them."""
    if platform.machine() == "aarch64":
        with open("/proc/self/auxv", "rb") as f:
            data = f.read()
        entries = dict(struct.iter_unpack("<QQ", data[: len(data) // 16 * 16]))
        hwcap, hwcap2 = entries.get(AT_HWCAP, 0), entries.get(AT_HWCAP2, 0)
        return [name for name, bit in AARCH64_HWCAP.items() if hwcap & bit] + [
            name for name, bit in AARCH64_HWCAP2.items() if hwcap2 & bit
        ]
    with open("/proc/cpuinfo") as f:
        flags = next((line.split(":", 1)[1].split() for line in f if line.startswith("flags")), [])
    return [flag for flag in X86_FLAGS if flag in flags]


# === TFLite interpreters (LiteRT, tflite-runtime) ===


def make_interpreter(runtime: str, model: str, kernels: str, num_threads: int):
    if runtime == "ai_edge_litert":
        from ai_edge_litert import interpreter as module
    else:
        from tflite_runtime import interpreter as module
    resolver = {
        "default": module.OpResolverType.AUTO,
        "without_default_delegates": module.OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES,
        "reference": module.OpResolverType.BUILTIN_REF,
    }[kernels]
    interpreter = module.Interpreter(
        model_path=model, num_threads=num_threads, experimental_op_resolver_type=resolver
    )
    interpreter.allocate_tensors()
    return interpreter


def kernels_run(interpreter, kernels: str) -> dict:
    """The kernel path really taken, read back from the interpreter's nodes.

    A delegate appends one node per partition it took; the operators it replaced stay in the
    node list but leave the execution plan. The only delegate the default op resolver applies
    is XNNPACK, so its nodes are XNNPACK's. The operators left to the builtin kernels are those
    that produce, directly or through other such operators, a tensor that a delegate node or
    the model output needs and that no delegate node produces.
    """
    ops = interpreter._get_ops_details()  # the only view of the nodes Python has
    delegates = [op for op in ops if op["op_name"] == "DELEGATE"]
    producers = {t: op["index"] for op in ops if op not in delegates for t in op["outputs"]}
    delegated_outputs = {t for op in delegates for t in op["outputs"]}
    wanted = [t for op in delegates for t in op["inputs"]]
    wanted += [d["index"] for d in interpreter.get_output_details()]
    builtin = set()
    while wanted:
        tensor = wanted.pop()
        if tensor in delegated_outputs or tensor not in producers:
            continue
        if producers[tensor] not in builtin:
            builtin.add(producers[tensor])
            wanted.extend(ops[producers[tensor]]["inputs"])
    own = "builtin reference" if kernels == "reference" else "builtin optimized"
    left = dict(Counter(ops[i]["op_name"] for i in sorted(builtin))) if delegates else {}
    path = f"XNNPACK + {own} for {sum(left.values())} ops" if left else "XNNPACK"
    return {
        "kernels_run": path if delegates else own,
        "operators": len(ops) - len(delegates),
        "delegate_partitions": len(delegates),
        "left_to_builtin": left,
    }


def run_tflite(runtime: str, model: str, inputs: np.ndarray, kernels: str, num_threads: int):
    interpreter = make_interpreter(runtime, model, kernels, num_threads)
    (input_detail,) = interpreter.get_input_details()
    output_details = interpreter.get_output_details()
    path = kernels_run(interpreter, kernels)
    collected = [[] for _ in output_details]
    for image in inputs:
        interpreter.set_tensor(input_detail["index"], image[None].astype(input_detail["dtype"]))
        interpreter.invoke()
        for arrays, detail in zip(collected, output_details):
            arrays.append(interpreter.get_tensor(detail["index"])[0].copy())
    module = interpreter.__class__.__module__.split(".")[0]
    version = getattr(sys.modules[module], "__version__", "")
    info = {
        "runtime": f"{module} {version}".strip(),
        **path,
        "output_tensors": [d["name"] for d in output_details],
    }
    return [np.stack(arrays) for arrays in collected], info


# === Arm NN ===


def run_armnn(model: str, inputs: np.ndarray, backends_dir: str):
    """Arm NN's TfLite parser and its CpuRef backend (the only backend of an x86 build)."""
    import pyarmnn as ann

    parser = ann.ITfLiteParser()
    network = parser.CreateNetworkFromBinaryFile(model)
    (input_name,) = parser.GetSubgraphInputTensorNames(0)
    input_binding = parser.GetNetworkInputBindingInfo(0, input_name)
    output_names = parser.GetSubgraphOutputTensorNames(0)
    output_bindings = [parser.GetNetworkOutputBindingInfo(0, n) for n in output_names]
    options = ann.CreationOptions()
    if backends_dir:
        options.m_DynamicBackendsPath = backends_dir
    runtime = ann.IRuntime(options)
    optimized, messages = ann.Optimize(
        network, [ann.BackendId("CpuRef")], runtime.GetDeviceSpec(), ann.OptimizerOptions()
    )
    network_id, _ = runtime.LoadNetwork(optimized)
    collected = [[] for _ in output_names]
    for image in inputs:
        input_tensors = ann.make_input_tensors([input_binding], [image[None]])
        output_tensors = ann.make_output_tensors(output_bindings)
        runtime.EnqueueWorkload(network_id, input_tensors, output_tensors)
        for arrays, array in zip(collected, ann.workload_tensors_to_ndarray(output_tensors)):
            arrays.append(np.asarray(array)[0].copy())
    info = {
        "runtime": f"pyarmnn {ann.__version__}",
        "kernels_run": "Arm NN CpuRef",
        "optimizer_messages": [str(m) for m in messages],
        "output_tensors": output_names,
    }
    return [np.stack(arrays) for arrays in collected], info


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--model", required=True)
    parser.add_argument("--inputs", required=True)
    parser.add_argument("--outputs", required=True)
    parser.add_argument("--runtime", required=True, choices=RUNTIMES)
    parser.add_argument("--kernels", default="default", choices=KERNEL_CHOICES)
    parser.add_argument("--num_threads", type=int, default=1)
    parser.add_argument("--armnn_backends", default="")
    args = parser.parse_args(argv)
    inputs = np.load(args.inputs)
    start = time.perf_counter()
    try:
        if args.runtime == "pyarmnn":
            outputs, info = run_armnn(args.model, inputs, args.armnn_backends)
        else:
            outputs, info = run_tflite(
                args.runtime, args.model, inputs, args.kernels, args.num_threads
            )
    except Exception as e:  # noqa: BLE001 - any runtime error goes back to check_arm.py
        print(f"{type(e).__name__}: {e}", file=sys.stderr)
        return 3
    info.update(
        machine=platform.machine(),
        cpu_features=cpu_features(),
        numpy=np.__version__,
        images=len(inputs),
        seconds=round(time.perf_counter() - start, 2),
        cpu_model=os.environ.get("QEMU_CPU", "host"),
    )
    arrays = {f"output_{i}": array for i, array in enumerate(outputs)}
    np.savez(args.outputs, __report__=np.array(json.dumps(info)), **arrays)
    return 0


if __name__ == "__main__":
    sys.exit(main())
