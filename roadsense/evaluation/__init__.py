"""Evaluation on the deterministic (peer count x hazard rank) matrix, with baselines and a report."""
