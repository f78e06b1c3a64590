"""ESP-NOW V2V mesh emulator: what the ego car receives from its peers each step, and its parameters."""

from roadsense.v2v.emulator import MeshEmulator, Reception
from roadsense.v2v.params import EspNowParams, ParamsError, load_params, params_hash

__all__ = ["EspNowParams", "MeshEmulator", "ParamsError", "Reception", "load_params", "params_hash"]
