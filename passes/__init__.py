"""Built-in passes, one capability per file; registered through the `qir.passes` entry points."""
