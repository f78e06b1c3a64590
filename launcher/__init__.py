"""roadsense-launch: takes the current code to a SageMaker training job (or the same job run locally)."""
