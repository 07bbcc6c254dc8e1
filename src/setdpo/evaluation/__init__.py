"""Evaluation: ranking metrics with bootstrap intervals, generation, catalog ranking, baselines."""
