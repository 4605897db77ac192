"""The `flops` command line: the one place that knows every step of the pipeline."""
