"""The TFLite / LiteRT wing: the `tfl` dialect, its integer reference rules, legalization from
quantized `q.` IR, the .tflite emitter and a runner."""
from backends.tflite import dialect  # noqa: F401  (registers the tfl ops)
from backends.tflite.backend import NNAPIBackend, TFLiteBackend  # noqa: F401
