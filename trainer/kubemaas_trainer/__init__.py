"""What runs inside training pods: launcher, distributed setup, checkpoints, export."""
