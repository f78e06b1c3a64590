"""Thin adapters that map outside contracts (SageMaker) onto the pipeline."""
