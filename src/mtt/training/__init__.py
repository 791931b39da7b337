"""The shared training loop, its hypers, losses, schedules and checkpoints."""
