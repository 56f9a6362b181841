"""6. Evaluation: each model and file scored on the val set (pycocotools), backends compared in
int8 steps (`parity`), and the run's report.json / report.md (`report`).

May import every package but `recipe`.
"""
