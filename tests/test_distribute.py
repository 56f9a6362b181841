"""Data-parallel training: two MultiWorkerMirroredStrategy workers on 127.0.0.1 (TF_CONFIG), and
MirroredStrategy over two logical CPU devices against one device.

Each worker is a `python -m tfqat.train` process on the smoke recipe; every wait is bounded.
"""

import json
import os
import re
import socket
import subprocess
import sys
import time

from conftest import PQAT_FLAGS, REPO, tensorboard_runs

# Bounds every wait on a worker: far above a smoke run on 2 loaded cores.
WORKER_TIMEOUT = 900
FINGERPRINT = re.compile(r"^\[(\w+)\] EMA weights sha256 ([0-9a-f]{64})$", re.M)


def free_ports(count: int) -> list[int]:
    """Ports free on 127.0.0.1 now (the OS picks them; they are closed again for the workers)."""
    sockets = [socket.socket() for _ in range(count)]
    for s in sockets:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in sockets]
    for s in sockets:
        s.close()
    return ports


def start_workers(tmp_path, model_dir, ports, *flags, tag="run"):
    """One `python -m tfqat.train --strategy=multi_worker` per port, TF_CONFIG naming them all.
    Each worker's output goes to tmp_path/<tag>-<index>.log; its temporary files go to
    tmp_path/tmp-<index>."""
    cluster = {"worker": [f"127.0.0.1:{port}" for port in ports]}
    workers = []
    for index in range(len(ports)):
        temporary = tmp_path / f"tmp-{index}"
        temporary.mkdir(exist_ok=True)
        env = dict(
            os.environ,
            TF_CONFIG=json.dumps({"cluster": cluster, "task": {"type": "worker", "index": index}}),
            TFQAT_CACHE_DIR=str(tmp_path / "cache"),
            TMPDIR=str(temporary),
            PYTHONUNBUFFERED="1",
        )
        command = [
            sys.executable,
            "-m",
            "tfqat.train",
            "--flagfile=configs/smoke_yolo.flags",
            f"--model_dir={model_dir}",
            "--strategy=multi_worker",
            *flags,
        ]
        log = open(tmp_path / f"{tag}-{index}.log", "w")
        workers.append(
            subprocess.Popen(command, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT)
        )
        log.close()
    return workers


def wait_all(workers, timeout=WORKER_TIMEOUT) -> list[int]:
    deadline = time.monotonic() + timeout
    try:
        return [w.wait(timeout=max(1.0, deadline - time.monotonic())) for w in workers]
    finally:
        for w in workers:
            if w.poll() is None:
                w.kill()
                w.wait()


def read_log(tmp_path, tag, index) -> str:
    return (tmp_path / f"{tag}-{index}.log").read_text()


def fingerprints(log: str) -> dict:
    return dict(FINGERPRINT.findall(log))


def make_dataset_once(tmp_path):
    """The smoke recipe's synthetic set, made before the workers start (they would race)."""
    from tfqat.data.synthetic import ensure_synthetic

    ensure_synthetic(
        "detection", str(tmp_path / "cache"), num_train=16, num_val=8, seed=0, image_size=64
    )


def assert_two_workers_trained_alike(tmp_path, model_dir, stages, tag="run"):
    """Both workers printed equal EMA fingerprints for every stage; the chief's run directory is
    complete; the other worker left no temporary checkpoint."""
    logs = [read_log(tmp_path, tag, i) for i in (0, 1)]
    chief, other = (fingerprints(log) for log in logs)
    assert sorted(chief) == sorted(stages), logs[0][-3000:]
    assert chief == other, f"weights differ between workers:\n{chief}\n{other}"
    report = json.loads((model_dir / "report.json").read_text())
    assert [s["name"] for s in report["stages"]] == stages
    assert all(row["metrics"] for row in report["artifacts"])
    assert (model_dir / "export" / "model_int8.tflite").is_file()
    assert {f"train/{s}" for s in stages} <= set(tensorboard_runs(model_dir))
    assert not os.listdir(tmp_path / "tmp-1"), "worker 1 left temporary files"
    return report


def test_two_workers_train_float_and_qat_to_identical_weights(tmp_path):
    make_dataset_once(tmp_path)
    model_dir = tmp_path / "run"
    codes = wait_all(start_workers(tmp_path, model_dir, free_ports(2)))
    assert codes == [0, 0], [read_log(tmp_path, "run", i)[-3000:] for i in (0, 1)]
    assert_two_workers_trained_alike(tmp_path, model_dir, ["float", "qat", "float_reference"])


def test_two_workers_train_prune_and_pqat_to_identical_weights(tmp_path):
    make_dataset_once(tmp_path)
    model_dir = tmp_path / "run"
    codes = wait_all(start_workers(tmp_path, model_dir, free_ports(2), *PQAT_FLAGS))
    assert codes == [0, 0], [read_log(tmp_path, "run", i)[-3000:] for i in (0, 1)]
    stages = ["float", "prune", "pqat", "float_reference_prune", "float_reference"]
    report = assert_two_workers_trained_alike(tmp_path, model_dir, stages)
    int8 = next(row for row in report["artifacts"] if row["name"] == "tflite_int8")
    assert int8["sparsity"] > 0.3
