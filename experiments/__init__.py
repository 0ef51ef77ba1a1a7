"""Experiment scripts over the dgcnn_jax library (run as ``python -m experiments.NAME``)."""
