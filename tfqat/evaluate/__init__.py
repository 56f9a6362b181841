"""6. Evaluation: each model and file scored on the val set (pycocotools), backends compared in
int8 steps (`parity`), the run's report.json / report.md (`report`), and latency / CPU time
of backends measured in turns (`timing`).

May import every package but `recipe`.
"""
