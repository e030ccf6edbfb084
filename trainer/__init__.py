"""copd trainer: the pure PyTorch core of Co-Evolving Policy Distillation (no HTTP, SQL or Celery here)."""
