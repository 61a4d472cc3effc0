from __future__ import annotations

from kubemaas_cluster.nodes import NodePlan, build_nodes


def test_default_plan_builds_two_cpu_and_two_gpu_nodes() -> None:
    names = [n["metadata"]["name"] for n in build_nodes(NodePlan())]
    assert names == ["kwok-cpu-0", "kwok-cpu-1", "kwok-gpu-0", "kwok-gpu-1"]


def test_gpu_nodes_advertise_gpus_product_label_and_taint_like_the_device_plugin() -> None:
    plan = NodePlan(cpu_nodes=0, gpu_nodes=1, gpus_per_node=4, gpu_product="NVIDIA-A100-SXM4-80GB")
    (node,) = build_nodes(plan)
    assert node["status"]["capacity"]["nvidia.com/gpu"] == "4"
    assert node["status"]["allocatable"]["nvidia.com/gpu"] == "4"
    assert node["metadata"]["labels"]["nvidia.com/gpu.product"] == "NVIDIA-A100-SXM4-80GB"
    assert node["spec"]["taints"] == [{"key": "nvidia.com/gpu", "value": "present", "effect": "NoSchedule"}]


def test_cpu_nodes_have_no_gpus_and_no_taints() -> None:
    (node,) = build_nodes(NodePlan(cpu_nodes=1, gpu_nodes=0))
    assert "nvidia.com/gpu" not in node["status"]["capacity"]
    assert "taints" not in node["spec"]


def test_every_node_is_marked_for_kwok() -> None:
    for node in build_nodes(NodePlan(cpu_nodes=3, gpu_nodes=3)):
        assert node["metadata"]["annotations"]["kwok.x-k8s.io/node"] == "fake"


def test_the_gpu_resource_name_is_configurable() -> None:
    (node,) = build_nodes(NodePlan(cpu_nodes=0, gpu_nodes=1, gpu_resource="amd.com/gpu"))
    assert node["status"]["capacity"]["amd.com/gpu"] == "8"
    assert "nvidia.com/gpu" not in node["status"]["capacity"]
