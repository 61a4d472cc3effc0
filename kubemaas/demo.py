"""`kubemaas demo`: the main job, end to end, on the local control plane.

Steps, each announced as it starts and timed when it ends:
  1. bring up the local control plane (real API server, scheduler, controllers; KWOK nodes);
  2. `helm install` the chart (CRDs, RBAC, operator Deployment) and run `kubemaas operator`
     with the chart's least-privilege ServiceAccount (KWOK's pods run no containers);
  3. train the example regressor with `kubemaas train`: torchrun, 2 processes, gloo;
  4. apply a ModelService for the export (a PersistentVolume over the export folder) and wait
     until the operator reports it Ready, showing each status change;
  5. serve the exported model with `kubemaas serve` and send real gRPC inference requests
     with tritonclient, checking the answers against the trained model (the simulated pods run
     no containers, so the demo runs the same server locally);
  6. show what the cluster holds.
Ctrl-C at any point stops what the demo started. By default the cluster goes down at the end;
`--keep-cluster` leaves it up and prints the KUBECONFIG line.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import warnings
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import yaml

from kubemaas_cluster.binaries import ensure_binaries
from kubemaas_cluster.controlplane import ClusterOptions, down, free_port, up
from kubemaas_cluster.kubeconfig import with_token_user, write_kubeconfig
from kubemaas_cluster.paths import default_state_dir, source_root

MODEL_NAME = "regressor"
NAMESPACE = "kubemaas-system"


class Step:
    """Prints `[n/N] title ...` and, on leaving, `done in X s`."""

    def __init__(self, total: int) -> None:
        self.total = total
        self.number = 0

    @contextlib.contextmanager
    def __call__(self, title: str) -> Iterator[None]:
        self.number += 1
        started = time.monotonic()
        print(f"\n[{self.number}/{self.total}] {title}", flush=True)
        yield
        print(f"      done in {time.monotonic() - started:.1f}s", flush=True)


def _say(message: str) -> None:
    print(f"      {message}", flush=True)


def _kubemaas() -> list[str]:
    return [sys.executable, "-m", "kubemaas"]


def train(work: Path) -> Path:
    models = work / "models"
    script = source_root() / "examples" / "train_regressor.py"
    argv = [
        *_kubemaas(),
        "train",
        "--workers=1",
        "--procs-per-worker=2",
        "--master-addr=127.0.0.1",
        f"--master-port={free_port()}",
        f"--output-dir={models}",
        f"--checkpoint-dir={work / 'checkpoints'}",
        "--",
        "python",
        str(script),
        "--epochs=4",
        f"--name={MODEL_NAME}",
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    assert proc.stdout is not None
    for line in proc.stdout:
        if "loss" in line or "export" in line:
            _say(line.strip()[-140:])
    if proc.wait() != 0:
        raise SystemExit(f"training failed with exit code {proc.returncode}")
    return models


@contextlib.contextmanager
def serving(models: Path) -> Iterator[int]:
    port = free_port()
    proc = subprocess.Popen(
        [*_kubemaas(), "serve", f"--model-repository={models}", f"--grpc-port={port}", "--metrics-port=-1"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        yield port
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()


def query(port: int, models: Path) -> None:
    import torch
    import tritonclient.grpc as triton

    from kubemaas_server.model_config import load_model_config

    config = load_model_config(models / MODEL_NAME)
    client = triton.InferenceServerClient(f"127.0.0.1:{port}")
    deadline = time.monotonic() + 60
    while True:
        with contextlib.suppress(Exception):
            if client.is_model_ready(MODEL_NAME):
                break
        if time.monotonic() > deadline:
            raise SystemExit("the model server did not become ready within 60 s")
        time.sleep(0.2)
    metadata = client.get_model_metadata(MODEL_NAME)
    _say(f"model {metadata.name} versions={list(metadata.versions)} platform={metadata.platform}")
    spec = config.inputs[0]
    features = spec.shape[-1]
    rows = np.random.default_rng(7).standard_normal((3, features)).astype(np.float32)
    tensor = triton.InferInput(spec.name, list(rows.shape), spec.datatype.value)
    tensor.set_data_from_numpy(rows)
    answer = client.infer(MODEL_NAME, [tensor], request_id="demo-1")
    output = answer.as_numpy(config.outputs[0].name)
    version = max(int(p.name) for p in (models / MODEL_NAME).iterdir() if p.name.isdigit())
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # torch 2.9+ nudges towards torch.export
        module = torch.jit.load(str(models / MODEL_NAME / str(version) / "model.pt"))  # type: ignore[no-untyped-call]
    reference = module(torch.from_numpy(rows))
    for row, value in zip(rows, output, strict=True):
        _say(f"x[:3]={np.array2string(row[:3], precision=3)}...  ->  y={np.array2string(value, precision=4)}")
    np.testing.assert_allclose(output, reference.detach().numpy(), rtol=1e-5, atol=1e-6)
    _say("answers over gRPC equal the trained model's own forward pass")


def install_operator(binaries: dict[str, Path], kubeconfig: Path, work: Path) -> subprocess.Popen[bytes]:
    """`helm install` the chart, then run the operator it describes as a local process.

    KWOK simulates the chart's operator pod (it runs no containers), so the demo runs the same
    `kubemaas operator` here, with only the chart's ServiceAccount token and its settings; it
    elects itself leader on the chart's Lease like a replica in the cluster would.
    """
    chart = source_root() / "charts" / "kubemaas"
    result = subprocess.run(
        [
            str(binaries["helm"]),
            "upgrade",
            "--install",
            "kubemaas",
            str(chart),
            "--kubeconfig",
            str(kubeconfig),
            "--namespace",
            NAMESPACE,
            "--create-namespace",
            "--wait",
            "--timeout",
            "2m",
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    if result.returncode != 0:
        raise SystemExit(f"helm install failed: {result.stderr.strip()}")
    _say(f"helm release kubemaas installed in {NAMESPACE} (CRDs, RBAC, operator Deployment)")
    token = kubectl(binaries, kubeconfig, "create", "token", "kubemaas-operator", "-n", NAMESPACE).strip()
    operator_config = work / "operator.kubeconfig"
    write_kubeconfig(
        operator_config, with_token_user(kubeconfig.read_text(), user="kubemaas-operator", token=token)
    )
    log = (work / "operator.log").open("ab")
    _say(f"operator log: {work / 'operator.log'}")
    return subprocess.Popen(
        [*_kubemaas(), "operator"],
        stdout=log,
        stderr=subprocess.STDOUT,
        env={
            **os.environ,
            "KUBECONFIG": str(operator_config),
            "POD_NAMESPACE": NAMESPACE,
            "KUBEMAAS_LEASE_NAME": "kubemaas-operator",
        },
    )


def deploy_model(binaries: dict[str, Path], kubeconfig: Path, models: Path) -> None:
    docs = [
        {
            "apiVersion": "v1",
            "kind": "PersistentVolume",
            "metadata": {"name": "demo-models"},
            "spec": {
                "capacity": {"storage": "1Gi"},
                "accessModes": ["ReadOnlyMany"],
                "hostPath": {"path": str(models)},
                "storageClassName": "",
                "claimRef": {"namespace": "default", "name": "models"},
            },
        },
        {
            "apiVersion": "v1",
            "kind": "PersistentVolumeClaim",
            "metadata": {"name": "models", "namespace": "default"},
            "spec": {
                "accessModes": ["ReadOnlyMany"],
                "resources": {"requests": {"storage": "1Gi"}},
                "storageClassName": "",
            },
        },
        {
            "apiVersion": "kubemaas.io/v1alpha1",
            "kind": "ModelService",
            "metadata": {"name": MODEL_NAME, "namespace": "default"},
            "spec": {"model": {"uri": f"pvc://models/{MODEL_NAME}"}, "minReplicas": 2, "maxReplicas": 4},
        },
    ]
    kubectl(binaries, kubeconfig, "apply", "-f", "-", stdin=yaml.safe_dump_all(docs))
    _say(f"applied ModelService {MODEL_NAME} (pvc://models/{MODEL_NAME}, 2 replicas); waiting for Ready")
    deadline = time.monotonic() + 120
    seen = ""
    while time.monotonic() < deadline:
        ms = json.loads(kubectl(binaries, kubeconfig, "get", "ms", MODEL_NAME, "-o", "json"))
        status = ms.get("status") or {}
        ready: dict[str, str] = next((c for c in status.get("conditions", []) if c["type"] == "Ready"), {})
        line = f"phase={status.get('phase', '-')} ready={status.get('readyReplicas', 0)}/{status.get('desiredReplicas', '-')} reason={ready.get('reason', '-')}"
        if line != seen:
            _say(line + (f"  ({ready.get('message')})" if ready.get("message") else ""))
            seen = line
        if ready.get("status") == "True":
            return
        time.sleep(0.5)
    raise SystemExit("the ModelService did not become Ready within 120 s; see the operator log")


def kubectl(
    binaries: dict[str, Path], kubeconfig: Path, *args: str, stdin: str | None = None, check: bool = True
) -> str:
    result = subprocess.run(
        [str(binaries["kubectl"]), "--kubeconfig", str(kubeconfig), *args],
        input=stdin,
        capture_output=True,
        text=True,
        check=False,
    )
    if check and result.returncode != 0:
        raise SystemExit(f"kubectl {' '.join(args)} failed: {result.stderr.strip()}")
    return result.stdout


def show(binaries: dict[str, Path], kubeconfig: Path) -> None:
    kubectl = [str(binaries["kubectl"]), "--kubeconfig", str(kubeconfig)]
    for what in (
        ["get", "nodes", "-L", "nvidia.com/gpu.product"],
        ["get", "ms,tj,deploy,svc,pdb", "-n", "default"],
        ["get", "deploy,lease", "-n", NAMESPACE],
        ["get", "pods", "-n", "default", "-o", "wide"],
    ):
        print(
            subprocess.run([*kubectl, *what], capture_output=True, text=True, check=False).stdout, flush=True
        )


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="kubemaas demo", description=__doc__)
    parser.add_argument("--keep-cluster", action="store_true", help="leave the cluster running at the end")
    parser.add_argument("--cluster-name", default="demo", help="name of the local cluster the demo uses")
    parser.add_argument("--workdir", type=Path, help="where models and checkpoints go (default: a temp dir)")
    args = parser.parse_args(argv)
    state_dir = default_state_dir(args.cluster_name)
    kubeconfig = state_dir / "kubeconfig"
    work = args.workdir or Path(tempfile.mkdtemp(prefix="kubemaas-demo-"))
    step = Step(total=6)
    cluster_started = False
    operator: subprocess.Popen[bytes] | None = None
    try:
        with step("local control plane: etcd, kube-apiserver, controller-manager, scheduler, KWOK nodes"):
            binaries = ensure_binaries(_say)
            up(ClusterOptions(state_dir=state_dir, kubeconfig=kubeconfig), binaries, _say)
            cluster_started = True
        with step("helm install the chart; run `kubemaas operator` under the chart's ServiceAccount"):
            operator = install_operator(binaries, kubeconfig, work)
        with step("train the example regressor: `kubemaas train` -> torchrun, 2 processes, gloo"):
            models = train(work)
            _say(f"exported to {models / MODEL_NAME}")
        with step("apply a ModelService for the export and wait for the operator to report Ready"):
            deploy_model(binaries, kubeconfig, models)
        with (
            step("serve it with `kubemaas serve` and query it over gRPC (tritonclient)"),
            serving(models) as port,
        ):
            query(port, models)
        with step("what the cluster holds"):
            show(binaries, kubeconfig)
        if args.keep_cluster:
            print(
                f"\nthe cluster stays up:\n  export KUBECONFIG={kubeconfig}\n  kubemaas cluster down --name {args.cluster_name}"
            )
        return 0
    except KeyboardInterrupt:
        print("\ninterrupted: cleaning up", flush=True)
        return 130
    finally:
        if operator is not None and not args.keep_cluster:
            operator.terminate()
            operator.wait(timeout=30)
        if cluster_started and not args.keep_cluster:
            down(state_dir)
        if args.workdir is None:
            shutil.rmtree(work, ignore_errors=True)
