"""Backends: IR -> artifacts a runtime executes (TFLite, QNN)."""
