"""RoadSense: train the V2V braking policy from SUMO scenarios to packaged, evaluated artifacts."""

import gymnasium

__version__ = "0.1.0"

ENV_ID = "RoadSense-Convoy-v0"

if ENV_ID not in gymnasium.registry:
    gymnasium.register(ENV_ID, entry_point="roadsense.env.convoy_env:ConvoyEnv")
