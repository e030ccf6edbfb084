"""Runs that leave the box: tracker exports (W&B, MLflow, TensorBoard) and webhook alerts.

Torch-free, above contract/ and below server/ and trainer/: the API's background exporter and the local
runner (`copd train`) use the same code (docs/integrations.md).
"""
