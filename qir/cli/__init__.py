"""The commands: qir-compile, qir-opt, qir-eval."""
