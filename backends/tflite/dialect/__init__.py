"""The `tfl` dialect: ops that carry LiteRT's exact integer parameters. Importing registers them."""
from backends.tflite.dialect import (activation, compare, elementwise, linear, quantize, reduce, rsqrt, shape,  # noqa: F401
                                     softmax)
from backends.tflite.dialect.base import TflOp, append_tfl  # noqa: F401
