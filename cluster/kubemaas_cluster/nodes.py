"""Simulated nodes: pure builders for the Node objects KWOK keeps alive.

CPU nodes and GPU nodes look like what the NVIDIA device plugin and GPU feature discovery
would publish on a real cluster: `nvidia.com/gpu` capacity, the `nvidia.com/gpu.product`
label and the `nvidia.com/gpu=present:NoSchedule` taint that keeps CPU pods off GPU nodes.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

KWOK_NODE_ANNOTATION = "kwok.x-k8s.io/node"
NODE_POOL_LABEL = "kubemaas.io/node-pool"
GPU_PRODUCT_LABEL = "nvidia.com/gpu.product"
GPU_TAINT_KEY = "nvidia.com/gpu"


@dataclass(frozen=True)
class NodePlan:
    cpu_nodes: int = 2
    gpu_nodes: int = 2
    gpus_per_node: int = 8
    gpu_product: str = "NVIDIA-H100-80GB-HBM3"
    gpu_resource: str = "nvidia.com/gpu"
    cpu_per_node: str = "32"
    memory_per_node: str = "256Gi"
    pods_per_node: int = 110
    kubernetes_version: str = "v1.36.4"


def _node(
    name: str, plan: NodePlan, *, pool: str, extra_labels: dict[str, str], extra: dict[str, str]
) -> dict[str, Any]:
    resources = {
        "cpu": plan.cpu_per_node,
        "memory": plan.memory_per_node,
        "pods": str(plan.pods_per_node),
        **extra,
    }
    return {
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {
            "name": name,
            "annotations": {KWOK_NODE_ANNOTATION: "fake", "node.alpha.kubernetes.io/ttl": "0"},
            "labels": {
                "kubernetes.io/hostname": name,
                "kubernetes.io/os": "linux",
                "kubernetes.io/arch": "amd64",
                "kubernetes.io/role": "agent",
                "type": "kwok",
                NODE_POOL_LABEL: pool,
                **extra_labels,
            },
        },
        "spec": {},
        "status": {
            "allocatable": resources,
            "capacity": resources,
            "nodeInfo": {
                "architecture": "amd64",
                "operatingSystem": "linux",
                "kubeletVersion": plan.kubernetes_version,
                "kubeProxyVersion": plan.kubernetes_version,
            },
        },
    }


def build_nodes(plan: NodePlan) -> list[dict[str, Any]]:
    nodes = [
        _node(f"kwok-cpu-{i}", plan, pool="cpu", extra_labels={}, extra={}) for i in range(plan.cpu_nodes)
    ]
    for i in range(plan.gpu_nodes):
        node = _node(
            f"kwok-gpu-{i}",
            plan,
            pool="gpu",
            extra_labels={
                GPU_PRODUCT_LABEL: plan.gpu_product,
                "nvidia.com/gpu.count": str(plan.gpus_per_node),
            },
            extra={plan.gpu_resource: str(plan.gpus_per_node)},
        )
        node["spec"]["taints"] = [{"key": GPU_TAINT_KEY, "value": "present", "effect": "NoSchedule"}]
        nodes.append(node)
    return nodes
