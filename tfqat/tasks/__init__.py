"""A task glues model, loss, data, prediction and metrics for the training loop (`detection`,
`pose`). May import data, models, losses and postprocess."""
