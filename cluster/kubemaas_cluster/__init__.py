"""The local Kubernetes control plane built from pinned upstream sources."""
