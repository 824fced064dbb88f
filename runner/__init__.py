"""The daemon core: scheduler, executors, log capture, recovery."""
