"""Training engine: the pre-training loop, reproducible sampling, optimisation, checkpoints, logs."""
