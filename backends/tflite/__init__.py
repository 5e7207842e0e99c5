"""The TFLite / LiteRT wing: the `tfl` dialect, its integer reference rules, the .tflite emitter
and a runner."""
from backends.tflite import dialect  # noqa: F401  (registers the tfl ops)
