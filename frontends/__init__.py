"""Frontends: model formats -> qir IR, sharing one graph builder per model family."""
