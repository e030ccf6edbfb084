"""Speed benchmarks: copd's training step, Phase II overhead and rollouts, side by side with TRL and a stock-transformers baseline."""
