"""INT8 variants of the exported graphs by onnxruntime's static quantisation.

QDQ format (QuantizeLinear / DequantizeLinear pairs around each quantised op, which
runtimes fuse into integer kernels), signed INT8 activations and weights, weights per
output channel and symmetric, activation ranges from MinMax calibration on observations
recorded on the val or train split (:mod:`roadsense.export.record`).
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import numpy.typing as npt
from onnxruntime.quantization import CalibrationDataReader, CalibrationMethod, QuantFormat, QuantType, quantize_static

CALIBRATION_BATCH = 256  # rows per calibration feed; the batch dimension is dynamic
SETTINGS = {
    "tool": "onnxruntime.quantization.quantize_static",
    "format": "QDQ",
    "activations": "int8, asymmetric, per tensor",
    "weights": "int8, symmetric, per output channel",
    "calibration_method": "MinMax",
}


class _Feeds(CalibrationDataReader):  # type: ignore[misc]  # onnxruntime ships no types: its base class is Any
    """The calibration inputs of one graph, in batches of :data:`CALIBRATION_BATCH` rows."""

    def __init__(self, inputs: dict[str, npt.NDArray[np.float32]]) -> None:
        rows = len(next(iter(inputs.values())))
        self._batches: Iterator[dict[str, npt.NDArray[np.float32]]] = iter(
            [{k: v[i:i + CALIBRATION_BATCH] for k, v in inputs.items()} for i in range(0, rows, CALIBRATION_BATCH)])

    def get_next(self) -> dict[str, npt.NDArray[np.float32]] | None:
        return next(self._batches, None)


class _NoPreprocessHint(logging.Filter):
    """Drops the quantiser's advice to pre-process first (shape inference and onnxruntime's graph
    fusions): the graphs already carry inferred shapes, and the fusions would put
    com.microsoft ops into the INT8 graphs, which other runtimes cannot read."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "pre-processing" not in record.getMessage()


def quantize(float_model: Path, int8_model: Path, inputs: dict[str, npt.NDArray[np.float32]]) -> None:
    """Write the INT8 variant of ``float_model`` to ``int8_model``.

    ``inputs``: the graph's input name -> float32 calibration rows (rows first, all the same length).
    """
    hint = _NoPreprocessHint()
    logging.getLogger().addFilter(hint)  # the quantiser logs on the root logger
    try:
        quantize_static(
            str(float_model), str(int8_model), _Feeds(inputs),
            quant_format=QuantFormat.QDQ,
            activation_type=QuantType.QInt8,
            weight_type=QuantType.QInt8,
            per_channel=True,
            calibrate_method=CalibrationMethod.MinMax,
        )
    finally:
        logging.getLogger().removeFilter(hint)
