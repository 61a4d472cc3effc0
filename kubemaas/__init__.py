"""kubemaas: Kubernetes-native Model-as-a-Service (the CLI and what all parts share)."""

__version__ = "0.1.0"
