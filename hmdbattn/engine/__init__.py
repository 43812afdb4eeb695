"""Engine: training loop, evaluation and metrics, checkpoints."""
