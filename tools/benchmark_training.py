"""`tools/benchmark.py --training`: images/s of a run's recipe in training, in one table: the
input pipeline alone (tools/benchmark_pipeline.py's measure) and the float, QAT and PQAT
training steps (tools/benchmark_qat_step.py's, interleaved)."""


def training_figures(model_dir: str, rounds: int = 5, steps: int = 10, batches: int = 60) -> dict:
    """{"description", "images_per_second": {"pipeline", "float", "qat", "pqat"}} of the run's
    task, batch size and optimizer."""
    from benchmark_pipeline import images_per_second
    from benchmark_qat_step import step_seconds
    from tqdm import tqdm

    from tfqat.recipe.run_dir import load_run, read_flags

    options = read_flags(model_dir)
    task = load_run(model_dir).task
    with tqdm(total=3, desc="training: cache fill, pipeline, steps") as bar:
        iterator = iter(task.train_dataset(0))
        # The first pass fills the decode cache; time the steady state, as training sees it.
        for _ in range(task.steps_per_epoch + 1):
            next(iterator)
        bar.update(1)
        pipeline = images_per_second(lambda: next(iterator), batches, options.batch_size)
        bar.update(1)
        seconds = step_seconds(task, options.lr, options.optimizer, True, rounds, steps)
        bar.update(1)
    size = "x".join(options.input_size)
    return {
        "description": (
            f"{options.task} {options.model_size} {options.activation} {size}, batch "
            f"{options.batch_size}: the input pipeline alone over {batches} batches after one "
            f"epoch; training steps (forward, loss, gradients, optimizer, EMA) median of "
            f"{rounds} interleaved rounds of {steps} steps."
        ),
        "images_per_second": {
            "pipeline": round(pipeline, 1),
            **{f"{name} step": round(options.batch_size / s, 1) for name, s in seconds.items()},
        },
    }
