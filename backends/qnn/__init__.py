"""The QNN wing: quantized q-IR -> QDQ ONNX for Qualcomm's HTP, run through onnxruntime-qnn."""
from backends.qnn import dialect  # noqa: F401  (registers qnn.convert)
from backends.qnn.backend import QNNBackend  # noqa: F401
