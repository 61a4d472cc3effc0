"""What runs inside training pods: launcher, distributed setup, checkpoints, export.

- `kubemaas_trainer.launcher`: `kubemaas train -- <command>`, torchrun from the pod environment.
- `kubemaas_trainer.launch_settings`: the pod environment's variables and rules (no torch).
- `kubemaas_trainer.distributed`: process group, device and rank-aware logging for scripts.
- `kubemaas_trainer.checkpoint`: atomic checkpoints and resume.
- `kubemaas_trainer.export`: a trained module as a servable model-repository version.

Training scripts import the last three (`from kubemaas_trainer import checkpoint, distributed,
export`). Nothing is imported here, so the launcher starts without loading torch.
"""
