"""Faults in training: `kill -9` at a random moment of a stage, then a rerun of the same command,
ends with the optimizer steps of an uninterrupted run in every stage and a complete report."""

import json
import os
import random
import re
import select
import signal
import subprocess
import time

import pytest
from conftest import PQAT_FLAGS, REPO, run_recipe, train_command

# The smoke recipe's stages (configs/smoke_yolo.flags): epochs, and the stage that follows.
EPOCHS = {"float": 2, "qat": 1, "prune": 2}
NEXT_STAGE = {"float": ("qat", "prune"), "qat": ("float_reference",), "prune": ("pqat",)}
# The line that ends the float stage, after which qat or prune prints its own.
FLOAT_END = b"[float] epoch 2/2 val"
# Progress lines a stage always prints, twice an epoch: the end of its last step (the Keras
# progress bar skips updates less than 0.05 s apart, never the last: "2/2 [===") and its
# validation, after which the epoch's checkpoint is saved.
PROGRESS = rb"(\d+)/\1 \[|\] epoch \d+/\d+ val"


class KillMoment:
    """A random moment of `stage`: its start (its TensorBoard run appears) or one of its
    progress lines, then a random pause of up to half a second; or the save of one of its
    checkpoints, as soon as TensorFlow's temporary folder (or the checkpoint) appears."""

    def __init__(self, stage: str, rng: random.Random):
        self.stage = stage
        epochs = EPOCHS[stage]
        moments = [("progress line", n) for n in range(2 * epochs + 1)]
        moments += [("save of checkpoint", k) for k in range(1, epochs + 1)]
        self.kind, self.number = rng.choice(moments)
        self.pause = rng.uniform(0.0, 0.5) if self.kind == "progress line" else 0.0

    def __repr__(self):
        return f"{self.stage}: {self.kind} {self.number}, then {self.pause:.2f} s"

    def reached(self, model_dir, output: bytes) -> bool:
        if not os.path.isdir(model_dir / "train" / self.stage):
            return False
        if self.kind == "save of checkpoint":
            folder = model_dir / "checkpoints" / self.stage
            saving = folder / f"ckpt-{self.number}_temp"
            return saving.exists() or (folder / f"ckpt-{self.number}.index").exists()
        own = output if self.stage == "float" else output.split(FLOAT_END, 1)[-1]
        return len(re.findall(PROGRESS, own)) >= self.number


def kill_at(moment: KillMoment, command, env, model_dir) -> bytes:
    """Runs `command` until `moment`, then SIGKILL; returns its output."""
    process = subprocess.Popen(
        command, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT
    )
    os.set_blocking(process.stdout.fileno(), False)
    output = b""
    try:
        while process.poll() is None:
            if select.select([process.stdout], [], [], 0.01)[0]:
                output += process.stdout.read() or b""
            if moment.reached(model_dir, output):
                time.sleep(moment.pause)
                process.send_signal(signal.SIGKILL)
                process.wait()
                return output
        raise AssertionError(f"the run ended before {moment}:\n{output[-3000:].decode()}")
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


@pytest.mark.slow
@pytest.mark.parametrize(
    "stage,reference,flags",
    [
        ("float", "smoke_yolo_run", ()),
        ("qat", "smoke_yolo_run", ()),
        ("prune", "smoke_pqat_run", PQAT_FLAGS),
    ],
)
def test_kill_9_in_a_stage_then_rerun_trains_the_steps_of_an_unbroken_run(
    stage, reference, flags, request, tmp_path
):
    unbroken = json.loads((request.getfixturevalue(reference) / "report.json").read_text())
    model_dir, cache = tmp_path / "run", tmp_path / "cache"
    moment = KillMoment(stage, random.Random())
    command = train_command("smoke_yolo.flags", model_dir, *flags)
    env = dict(os.environ, TFQAT_CACHE_DIR=str(cache), PYTHONUNBUFFERED="1")
    print(f"kill -9 at {moment}")
    kill_at(moment, command, env, model_dir)
    # Killed inside the stage: the next one had not begun, and there is no report yet.
    assert not any((model_dir / "train" / s).exists() for s in NEXT_STAGE[stage]), moment
    assert not (model_dir / "report.json").exists(), moment

    report = run_recipe("smoke_yolo.flags", model_dir, cache, *flags)

    steps = [(s["name"], s["steps"]) for s in report["stages"]]
    assert steps == [(s["name"], s["steps"]) for s in unbroken["stages"]], moment
    assert sorted(a["name"] for a in report["artifacts"]) == sorted(
        a["name"] for a in unbroken["artifacts"]
    )
    assert all(a["metrics"] for a in report["artifacts"])
    assert not list(model_dir.glob("checkpoints/*/ckpt-*_temp")), "an interrupted save's remains"
    assert set(report["parity"]) == set(unbroken["parity"])
