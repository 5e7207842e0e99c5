"""The core `q.` dialect: one module per family of ops. Importing this package registers them."""
from qir.ops import conv, elementwise, nn, reduce, shape  # noqa: F401
