"""Inference: export a registered model into a self-contained bundle and serve it over HTTP without MLflow."""
