"""copd control plane: the FastAPI service that owns runs, experts, knobs, metrics, checkpoints and events.

Never imports torch: it validates run specs with contract.spec only.
"""
