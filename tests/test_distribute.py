"""Data-parallel training: two MultiWorkerMirroredStrategy workers on 127.0.0.1 (TF_CONFIG), and
MirroredStrategy over two logical CPU devices against one device.

Each worker is a `python -m tfqat.train` process on the smoke recipe; every wait is bounded.
"""

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time

import pytest
from conftest import PQAT_FLAGS, REPO, run_recipe, tensorboard_runs, train_command

# Bounds every wait on a worker: far above a smoke run on 2 loaded cores.
WORKER_TIMEOUT = 1800
# Relative difference of the first losses, mirrored over 2 logical CPUs vs one device (the
# README's numbers: tools/compare_mirrored.py). Frozen batch norm: float rounding only; per
# replica: each replica's batch statistics come from 4 images instead of 8.
FROZEN_BATCHNORM_TOLERANCE = 1e-5
PER_REPLICA_BATCHNORM_TOLERANCE = 0.25
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
        command = train_command("smoke_yolo.flags", model_dir, "--strategy=multi_worker", *flags)
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


@pytest.mark.slow
def test_a_killed_worker_stops_the_other_and_both_resume(tmp_path):
    make_dataset_once(tmp_path)
    model_dir = tmp_path / "run"
    flags = ("--stages=float", "--epochs=3")
    ports = free_ports(2)
    workers = start_workers(tmp_path, model_dir, ports, *flags, tag="killed")
    try:
        first_save = model_dir / "checkpoints" / "float" / "ckpt-1.index"
        deadline = time.monotonic() + WORKER_TIMEOUT
        while not first_save.exists() and workers[0].poll() is None:
            assert time.monotonic() < deadline, "no checkpoint in time"
            time.sleep(0.2)
        workers[1].send_signal(signal.SIGKILL)
        # The chief notices (TensorFlow's heartbeats) and stops, naming the worker.
        assert wait_all(workers[:1], timeout=300) == [1]
    finally:
        wait_all(workers, timeout=1)
    stopped = read_log(tmp_path, "killed", 0)
    assert f"worker 1 (127.0.0.1:{ports[1]}) stopped" in stopped, stopped[-3000:]
    assert (model_dir / "checkpoints" / "float" / "checkpoint").exists()

    codes = wait_all(start_workers(tmp_path, model_dir, free_ports(2), *flags, tag="resumed"))
    logs = [read_log(tmp_path, "resumed", i) for i in (0, 1)]
    assert codes == [0, 0], [log[-3000:] for log in logs]
    assert all("[float] resumed from" in log for log in logs)
    assert fingerprints(logs[0]) == fingerprints(logs[1])
    report = json.loads((model_dir / "report.json").read_text())
    assert report["stages"][0]["steps"] == 3 * 2  # 16 images, batch 8: uninterrupted steps


def test_mirrored_over_two_cpu_devices_follows_one_device(tmp_path):
    """The first steps' losses under MirroredStrategy (2 logical CPUs, 4 images each) and on one
    device (8 images) agree to float rounding with batch normalization frozen, and within
    PER_REPLICA_BATCHNORM_TOLERANCE when each replica normalizes its own 4 images."""
    out = tmp_path / "losses.json"
    command = [
        sys.executable,
        "tools/compare_mirrored.py",
        "--flagfile=configs/smoke_yolo.flags",
        "--steps=4",
        f"--json={out}",
    ]
    env = dict(os.environ, TFQAT_CACHE_DIR=str(tmp_path / "cache"))
    result = subprocess.run(
        command, cwd=REPO, env=env, capture_output=True, text=True, timeout=WORKER_TIMEOUT
    )
    assert result.returncode == 0, result.stderr[-3000:]
    losses = json.loads(out.read_text())
    assert max(losses["frozen"]["relative_difference"]) < FROZEN_BATCHNORM_TOLERANCE, losses
    assert max(losses["per_replica"]["relative_difference"]) < PER_REPLICA_BATCHNORM_TOLERANCE


def test_mirrored_smoke_recipe_runs_to_the_end(tmp_path):
    report = run_recipe(
        "smoke_yolo.flags",
        tmp_path / "run",
        tmp_path / "cache",
        "--strategy=mirrored",
        "--cpu_replicas=2",
        "--qat_distillation=1",  # the teacher is built and called in the strategy's scope too
    )
    assert [s["name"] for s in report["stages"]] == ["float", "qat", "float_reference"]
    assert all(row["metrics"] for row in report["artifacts"])
