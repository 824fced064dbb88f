"""Executors: one module per backend, all implementing runner.executors.base.Executor."""
