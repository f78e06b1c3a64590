"""The convoy environment: SUMO + the ESP-NOW emulator behind the gymnasium API."""

from roadsense.env.convoy_env import ConvoyEnv

__all__ = ["ConvoyEnv"]
