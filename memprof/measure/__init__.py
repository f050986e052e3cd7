"""Real measurements: loads in fresh subprocesses, counting the bytes live tensors hold."""
