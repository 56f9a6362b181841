"""4. Training: the loop (`loop`: schedule, EMA, checkpoints, NaN guard), the stage sequence
(`stages`: float -> prune -> qat/pqat -> float_reference), `checkpoints` and `distribute`
(tf.distribute strategies, the chief, models copied out of a strategy); the CLI is
`python -m tfqat.train`. May import data, models, losses, tasks, optimize.
"""
