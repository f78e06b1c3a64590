"""RoadSense: train the V2V braking policy from SUMO scenarios to packaged, evaluated artifacts."""

__version__ = "0.1.0"
