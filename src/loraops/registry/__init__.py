"""MLflow tracking and model registry: runs, adapter versions, the champion alias, the MLflow server."""
