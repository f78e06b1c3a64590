"""PPO training: parallel SUMO envs, checkpoints, resume, metric lines."""
