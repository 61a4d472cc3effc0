"""The ModelService CRD: the one source of truth for its schema, defaults and validation.

Validation lives in the API server (OpenAPI schema + CEL rules), so `kubectl apply` of a bad
object fails with a readable message and no admission webhook is needed. `manifests/base/crds/` and
the Helm chart carry the YAML this module renders (`python -m kubemaas_operator.crd` rewrites
it; a test fails when it is stale).
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import yaml

GROUP = "kubemaas.io"
VERSION = "v1alpha1"
API_VERSION = f"{GROUP}/{VERSION}"

Schema = dict[str, Any]

URI_SCHEMES = ("pvc://", "trainingjob://", "file://")


def _obj(properties: dict[str, Schema], **extra: Any) -> Schema:
    return {"type": "object", "properties": properties, **extra}


def _int(minimum: int | None = None, maximum: int | None = None, **extra: Any) -> Schema:
    schema: Schema = {"type": "integer", **extra}
    if minimum is not None:
        schema["minimum"] = minimum
    if maximum is not None:
        schema["maximum"] = maximum
    return schema


def _str(**extra: Any) -> Schema:
    return {"type": "string", **extra}


_PRESERVE: Schema = {"type": "object", "x-kubernetes-preserve-unknown-fields": True}

# Kubernetes' own syntax for what the operator copies into children, so that a CR the API
# server accepts never yields a child it refuses (tests/integration/operator/test_fuzz_specs.py).
DNS_SUBDOMAIN = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$"
_NAME_PART = r"[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?"
_PREFIX = r"[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*/"
LABEL_KEY = f"^({_PREFIX})?{_NAME_PART}$"
LABEL_VALUE = r"^(([A-Za-z0-9][-A-Za-z0-9_.]{0,61})?[A-Za-z0-9])?$"
EXTENDED_RESOURCE = f"^{_PREFIX}{_NAME_PART}$"
IMAGE = r"^[!-~]+$"  # printable ASCII, no spaces: what a registry reference can hold
MODEL_NAME = r"^[A-Za-z0-9][A-Za-z0-9_.-]*$"  # a folder name, a metrics label, a URL path segment


QUANTITY = r"^(\+)?(([0-9]+(\.[0-9]*)?)|(\.[0-9]+))(([KMGTPE]i)|[numkMGTPE]|([eE](\+|-)?(([0-9]+(\.[0-9]*)?)|(\.[0-9]+))))?$"
_Q = "quantity(string(self.{0}[k]))"
_IS_Q = "isQuantity(string(self.{0}[k]))"


def _amounts(part: str) -> Schema:
    return {
        "type": "object",
        "maxProperties": 16,
        "additionalProperties": {
            "x-kubernetes-int-or-string": True,
            "anyOf": [{"type": "integer"}, {"type": "string"}],
            "pattern": QUANTITY,
            "maxLength": 64,
        },
        "description": f"Resource name -> quantity ({part}).",
        "x-kubernetes-validations": [
            {
                "rule": "self.all(k, k in ['cpu', 'memory', 'ephemeral-storage'] || k.startsWith('hugepages-')"
                f" || (k.size() <= 317 && k.matches(r'{EXTENDED_RESOURCE}') && !k.startsWith('kubernetes.io/')))",
                "message": f"{part} names cpu, memory, ephemeral-storage, hugepages-<size> or an extended resource domain/name",
            },
            {
                "rule": "self.all(k, !isQuantity(string(self[k])) || quantity(string(self[k])).compareTo(quantity('0')) >= 0)",
                "message": f"{part} must not be negative",
            },
            {
                "rule": "self.all(k, !k.contains('/') || !isQuantity(string(self[k]))"
                " || quantity(string(self[k])).isInteger())",
                "message": f"{part} of an extended resource (e.g. nvidia.com/gpu) must be whole numbers",
            },
        ],
    }


RESOURCES_SCHEMA: Schema = {
    **_obj({"limits": _amounts("limits"), "requests": _amounts("requests")}),
    "x-kubernetes-preserve-unknown-fields": True,
    "x-kubernetes-validations": [
        {
            "rule": "!has(self.requests) || !has(self.limits) || self.requests.all(k, !(k in self.limits)"
            f" || !{_IS_Q.format('requests')} || !{_IS_Q.format('limits')}"
            f" || {_Q.format('requests')}.compareTo({_Q.format('limits')}) <= 0)",
            "message": "requests must not exceed limits",
        },
        {
            "rule": "!has(self.requests) || self.requests.all(k, !k.contains('/')"
            " || (has(self.limits) && k in self.limits"
            f" && (!{_IS_Q.format('requests')} || !{_IS_Q.format('limits')}"
            f" || {_Q.format('requests')}.compareTo({_Q.format('limits')}) == 0)))",
            "message": "an extended resource (e.g. nvidia.com/gpu) cannot be overcommitted: set a limit equal to its request",
        },
    ],
}


def _label_map(description: str) -> Schema:
    return {
        "type": "object",
        "maxProperties": 64,
        "additionalProperties": _str(maxLength=63, pattern=LABEL_VALUE),
        "description": description,
        "x-kubernetes-validations": [
            {
                "rule": f"self.all(k, k.size() <= 317 && k.matches(r'{LABEL_KEY}'))",
                "message": "keys must be label keys: [prefix/]name, name 1-63 alphanumerics, '-', '_' or '.'",
            }
        ],
    }


GPU_SCHEMA: Schema = _obj(
    {
        "count": _int(description="GPUs per pod, the container limit of `resource`."),
        "product": _str(
            description="Node label nvidia.com/gpu.product to select, e.g. NVIDIA-H100-80GB-HBM3.",
            maxLength=63,
            pattern=LABEL_VALUE,
        ),
        "resource": _str(
            default="nvidia.com/gpu",
            description="Extended resource name of the GPU device plugin.",
            maxLength=253,
            pattern=EXTENDED_RESOURCE,
        ),
    },
    required=["count"],
    **{
        "x-kubernetes-validations": [
            {"rule": "self.count >= 1", "message": "gpu.count must be at least 1 when gpu is set"}
        ]
    },
)

SCHEDULING_SCHEMA: Schema = _obj(
    {
        "nodeSelector": _label_map("Node labels the pods require, added to the GPU product selector."),
        "tolerations": {"type": "array", "items": _PRESERVE},
        "affinity": _PRESERVE,
        "priorityClassName": _str(maxLength=253, pattern=DNS_SUBDOMAIN),
    },
    description="Merged on top of what the operator derives from gpu.",
)

URI_RULES = [
    {
        "rule": "self.startsWith('pvc://') || self.startsWith('trainingjob://') || self.startsWith('file://')",
        "message": "model.uri must start with pvc://, trainingjob:// or file://",
    },
    {
        "rule": "!self.split('/').exists(segment, segment == '..')",
        "message": "model.uri must not contain '..' path segments",
    },
    {
        "rule": "!self.startsWith('pvc://') || self.size() > 6 && !self.substring(6).startsWith('/')",
        "message": "pvc:// needs a claim name: pvc://CLAIM[/PATH]",
    },
]

MODEL_SERVICE_SPEC: Schema = _obj(
    {
        "model": _obj(
            {
                "uri": _str(
                    description="pvc://CLAIM[/PATH] | trainingjob://NAME | file:///PATH (dev clusters only)",
                    maxLength=2048,
                    **{"x-kubernetes-validations": URI_RULES},
                ),
                "name": _str(
                    description="Model name clients use; default metadata.name.",
                    maxLength=253,
                    pattern=MODEL_NAME,
                ),
            },
            required=["uri"],
        ),
        "image": _str(
            description="Server image; default from the operator's configuration.",
            maxLength=1024,
            pattern=IMAGE,
        ),
        "minReplicas": _int(0, 1000, default=1),
        "maxReplicas": _int(1, 1000, default=4),
        "autoscaling": _obj(
            {
                "metric": _str(enum=["concurrency", "cpu"], default="concurrency"),
                "target": _int(1, default=8, description="In-flight requests per replica, or CPU percent."),
                "scaleDownDelaySeconds": _int(0, 86400, default=60),
            },
            default={},
        ),
        "gpu": GPU_SCHEMA,
        "resources": RESOURCES_SCHEMA,
        "batching": _obj(
            {"maxBatchSize": _int(0, 4096, default=32), "maxQueueDelayMs": _int(0, 10000, default=2)},
            default={},
        ),
        "rollout": _obj(
            {
                "canaryPercent": {
                    **_int(default=0, description="Share of replicas on the new revision, 0-100."),
                    "x-kubernetes-validations": [
                        {
                            "rule": "self >= 0 && self <= 100",
                            "message": "rollout.canaryPercent must be between 0 and 100",
                        }
                    ],
                },
                "progressDeadlineSeconds": _int(1, default=600),
            },
            default={},
        ),
        "scheduling": SCHEDULING_SCHEMA,
        "tls": _obj(
            {
                "secretName": _str(
                    maxLength=253,
                    pattern=DNS_SUBDOMAIN,
                    description="A kubernetes.io/tls Secret in the same namespace: tls.crt and tls.key "
                    "(and ca.crt with clientAuth), e.g. from cert-manager.",
                ),
                "clientAuth": {
                    "type": "boolean",
                    "default": False,
                    "description": "Mutual TLS: clients must present a certificate signed by the Secret's ca.crt.",
                },
            },
            required=["secretName"],
            description="Serve gRPC over TLS; the metrics and health port stays plain HTTP for probes.",
        ),
    },
    required=["model"],
    **{
        "x-kubernetes-validations": [
            {
                "rule": "self.minReplicas <= self.maxReplicas",
                "message": "minReplicas must not exceed maxReplicas",
            }
        ]
    },
)

CONDITION_SCHEMA: Schema = _obj(
    {
        "type": _str(),
        "status": _str(enum=["True", "False", "Unknown"]),
        "reason": _str(),
        "message": _str(),
        "lastTransitionTime": _str(format="date-time"),
        "observedGeneration": _int(),
    },
    required=["type", "status"],
)

MODEL_SERVICE_STATUS: Schema = _obj(
    {
        "observedGeneration": _int(),
        "phase": _str(enum=["Pending", "Progressing", "Ready", "Degraded", "Failed"]),
        "replicas": _int(),
        "readyReplicas": _int(),
        "desiredReplicas": _int(),
        "lastScaleTime": _str(format="date-time"),
        "scaleReason": _str(),
        "autoscaler": _obj(
            {
                "mode": _str(enum=["stable", "panic", "hold"]),
                "excluded": {"type": "array", "items": _str()},
            },
            description=(
                "The concurrency autoscaler's latest round: how it decided and the pods it left out; "
                "updated whenever either changes, with or without a scale."
            ),
        ),
        "endpoint": _str(),
        "modelPath": _str(),
        "revision": _str(),
        "rollout": _obj(
            {"replaceRevision": _str(), "reason": _str(), "message": _str()},
            description="Set when a rollout replaces pods instead of surging, and why.",
        ),
        "stable": {
            **_obj({"revision": _str()}, description="The last revision that was Ready, and its spec."),
            "x-kubernetes-preserve-unknown-fields": True,
        },
        "progressing": _obj({"revision": _str(), "since": _str()}, description="A rollout under way."),
        "canary": _obj(
            {"revision": _str(), "percent": _int(), "replicas": _int()},
            description="The new revision running as a canary beside the stable one.",
        ),
        "rolledBack": _obj(
            {"revision": _str(), "to": _str(), "reason": _str(), "message": _str()},
            description="The revision rolled back automatically, and why.",
        ),
        "conditions": {
            "type": "array",
            "items": CONDITION_SCHEMA,
            "x-kubernetes-list-type": "map",
            "x-kubernetes-list-map-keys": ["type"],
        },
    },
    **{"x-kubernetes-preserve-unknown-fields": True},
)


# Descriptions for fields whose builders above carry none; `kubectl explain` and
# docs/api-reference.md show them. Keyed by dotted path from the root of the object.
CONDITION_DOCS = {
    "conditions": "Standard conditions; `kubectl wait --for=condition=TYPE` works on them.",
    "conditions[].type": "Condition type.",
    "conditions[].status": "True, False or Unknown.",
    "conditions[].reason": "One CamelCase word a program can match on.",
    "conditions[].message": "Why, for a person: the scheduler's message, the crash, the missing model.",
    "conditions[].lastTransitionTime": "When status last changed.",
    "conditions[].observedGeneration": "The metadata.generation this condition was computed for.",
}

SCHEDULING_DOCS = {
    "scheduling.tolerations": "Tolerations added to the GPU taint's (corev1 Toleration objects).",
    "scheduling.affinity": "corev1 Affinity, passed through.",
    "scheduling.priorityClassName": "PriorityClass of the pods.",
}

MODEL_SERVICE_DOCS = {
    "spec": "What to serve and how; the operator turns it into a Deployment, a Service and a PodDisruptionBudget.",
    "spec.model": "Where the model repository folder is and what clients call it.",
    "spec.minReplicas": "Fewest server pods; 0 allows scaling to zero.",
    "spec.maxReplicas": "Most server pods the autoscaler may ask for.",
    "spec.autoscaling": "How replicas follow load between minReplicas and maxReplicas.",
    "spec.autoscaling.metric": "concurrency: in-flight requests per replica from the servers' metrics; cpu: an autoscaling/v2 HorizontalPodAutoscaler.",
    "spec.autoscaling.scaleDownDelaySeconds": "Load must stay low this long before replicas are removed.",
    "spec.gpu": "GPUs per pod: a resource limit, the GPU taint's toleration and a product node selector.",
    "spec.resources": "corev1 ResourceRequirements of the server container, passed through.",
    "spec.batching": "Dynamic batching of concurrent requests into one forward pass, over each model's model.yaml.",
    "spec.batching.maxBatchSize": "Most rows merged into one forward pass (capped by the model's own max_batch_size; 0: no merging). Never refuses a request the model accepts.",
    "spec.batching.maxQueueDelayMs": "Longest a request waits for others to batch with; never added when the model is idle.",
    "spec.rollout": "How a spec change reaches the pods.",
    "spec.rollout.progressDeadlineSeconds": "A revision not Ready after this long is rolled back to the stable one.",
    **{f"spec.{k}": v for k, v in SCHEDULING_DOCS.items()},
    "status": "Written by the operator only.",
    "status.observedGeneration": "The metadata.generation the status describes.",
    "status.phase": "Summary of the conditions, for `kubectl get`.",
    "status.replicas": "Server pods that exist.",
    "status.readyReplicas": "Server pods that pass their gRPC readiness check.",
    "status.desiredReplicas": "Replicas the operator asks for: the concurrency autoscaler's count, or the HPA's with metric cpu.",
    "status.lastScaleTime": "When the concurrency autoscaler last changed desiredReplicas.",
    "status.scaleReason": "Why, in the autoscaler's words (also posted as an Event on the ModelService).",
    "status.autoscaler.mode": "stable, panic or hold (nothing could be measured).",
    "status.autoscaler.excluded": "Pods that round left out and why (not ready, scrape failed).",
    "status.endpoint": "host:port of the gRPC Service inside the cluster.",
    "status.modelPath": "Where the servers find the model inside their pods.",
    "status.revision": "Hash of the pod template the spec produces.",
    "status.rollout.replaceRevision": "The revision being rolled out by replacing pods.",
    "status.rollout.reason": "Why pods are replaced: ReplacingForLackOfGPUs.",
    "status.rollout.message": "The detail, for a person.",
    "status.stable.revision": "The revision that was last Ready.",
    "status.progressing.revision": "The revision being rolled out.",
    "status.progressing.since": "When that rollout began (its deadline counts from here).",
    "status.canary.revision": "The canary's revision.",
    "status.canary.percent": "Its share of the replicas.",
    "status.canary.replicas": "Its pods.",
    "status.rolledBack.revision": "The revision taken away.",
    "status.rolledBack.to": "The revision restored.",
    "status.rolledBack.reason": "The pod problem (CrashLoopBackOff, ...), ProgressDeadlineExceeded or CanaryRolledBack.",
    "status.rolledBack.message": "The detail, for a person.",
    **{f"status.{k}": v for k, v in CONDITION_DOCS.items()},
}

TRAINING_JOB_DOCS = {
    "spec": "The training program and its group; the operator runs it as an Indexed Job under torchrun.",
    "spec.gpu": "GPUs per worker pod: a resource limit, the GPU taint's toleration and a product node selector.",
    "spec.resources": "corev1 ResourceRequirements of each worker container, passed through.",
    "spec.output": "Where rank 0 exports the model; a ModelService can then serve trainingjob://NAME.",
    **{f"spec.{k}": v for k, v in SCHEDULING_DOCS.items()},
    "status": "Written by the operator only.",
    "status.observedGeneration": "The metadata.generation the status describes.",
    "status.phase": "Summary of the conditions, for `kubectl get`.",
    "status.restarts": "Whole-group restarts so far.",
    "status.workers": "Worker pods of the current attempt.",
    "status.workers.active": "Running or pending.",
    "status.workers.succeeded": "Finished with exit 0.",
    "status.workers.failed": "Failed.",
    "status.startTime": "When the first attempt was admitted.",
    "status.completionTime": "When the job succeeded or failed for good.",
    "status.message": "Why the job is where it is, for a person.",
    "status.output": "What the job produced.",
    "status.output.uri": "The exported model folder, as a ModelService model.uri (pvc://CLAIM/PATH).",
    **{f"status.{k}": v for k, v in CONDITION_DOCS.items()},
}


def _described(schema: Schema, docs: dict[str, str], path: str) -> Schema:
    """A copy of `schema` with `docs` filled in where a field has no description of its own."""
    out = dict(schema)
    if path in docs and "description" not in out:
        out["description"] = docs[path]
    if "properties" in out:
        out["properties"] = {
            key: _described(child, docs, f"{path}.{key}") for key, child in out["properties"].items()
        }
    if isinstance(out.get("items"), dict):
        out["items"] = _described(out["items"], docs, f"{path}[]")
    return out


def model_service_crd() -> dict[str, Any]:
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": f"modelservices.{GROUP}"},
        "spec": {
            "group": GROUP,
            "scope": "Namespaced",
            "names": {
                "kind": "ModelService",
                "listKind": "ModelServiceList",
                "plural": "modelservices",
                "singular": "modelservice",
                "shortNames": ["ms"],
                "categories": ["kubemaas", "all"],
            },
            "versions": [
                {
                    "name": VERSION,
                    "served": True,
                    "storage": True,
                    "subresources": {"status": {}},
                    "additionalPrinterColumns": [
                        {"name": "Phase", "type": "string", "jsonPath": ".status.phase"},
                        {"name": "Ready", "type": "integer", "jsonPath": ".status.readyReplicas"},
                        {"name": "Replicas", "type": "integer", "jsonPath": ".status.replicas"},
                        {"name": "Model", "type": "string", "jsonPath": ".spec.model.uri"},
                        {"name": "GPUs", "type": "integer", "jsonPath": ".spec.gpu.count"},
                        {"name": "Endpoint", "type": "string", "jsonPath": ".status.endpoint"},
                        {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"},
                    ],
                    "schema": {
                        "openAPIV3Schema": _obj(
                            {
                                "apiVersion": _str(),
                                "kind": _str(),
                                "metadata": {"type": "object"},
                                "spec": _described(MODEL_SERVICE_SPEC, MODEL_SERVICE_DOCS, "spec"),
                                "status": _described(MODEL_SERVICE_STATUS, MODEL_SERVICE_DOCS, "status"),
                            },
                            required=["spec"],
                            description="A model served over gRPC (Open Inference Protocol) by autoscaled server pods.",
                        )
                    },
                }
            ],
        },
    }


def _rule(rule: str, message: str) -> dict[str, Any]:
    return {"x-kubernetes-validations": [{"rule": rule, "message": message}]}


TRAINING_JOB_SPEC: Schema = _obj(
    {
        "image": _str(
            description="Trainer image (runs `kubemaas train`); default from the operator.",
            maxLength=1024,
            pattern=IMAGE,
        ),
        "command": {
            "type": "array",
            "items": _str(),
            "minItems": 1,
            "description": "The training program, run under torchrun by `kubemaas train -- <command>`.",
        },
        "workers": {
            **_int(default=1, maximum=10000, description="Pods in the group (torch.distributed nodes)."),
            **_rule("self >= 1", "workers must be at least 1"),
        },
        "procsPerWorker": {
            **_int(
                maximum=1024,
                description="Processes per pod (torchrun --nproc-per-node); default gpu.count or 1.",
            ),
            **_rule("self >= 1", "procsPerWorker must be at least 1"),
        },
        "gpu": GPU_SCHEMA,
        "resources": RESOURCES_SCHEMA,
        "maxRestarts": {
            **_int(default=3, description="Whole-group restarts after a worker fails."),
            **_rule("self >= 0", "maxRestarts must not be negative"),
        },
        "output": _obj(
            {
                "pvc": _str(
                    description="Claim the workers write the model and checkpoints to.",
                    maxLength=253,
                    pattern=DNS_SUBDOMAIN,
                ),
                "path": _str(
                    description="Folder inside the claim; default metadata.name.",
                    maxLength=1024,
                    **_rule(
                        "!self.split('/').exists(segment, segment == '..')",
                        "output.path must not contain '..' path segments",
                    ),
                ),
            },
            required=["pvc"],
        ),
        "scheduling": SCHEDULING_SCHEMA,
        "activeDeadlineSeconds": _int(1, description="Wall-clock limit of one attempt."),
        "ttlSecondsAfterFinished": _int(
            0, description="Delete the finished Job (not the TrainingJob) after."
        ),
        "queue": _str(
            description="Kueue LocalQueue; admission is then the queue's, not the operator's.",
            maxLength=63,
            pattern=LABEL_VALUE,
        ),
    },
    required=["command"],
)

TRAINING_JOB_STATUS: Schema = _obj(
    {
        "observedGeneration": _int(),
        "phase": _str(enum=["Pending", "Running", "Restarting", "Succeeded", "Failed"]),
        "restarts": _int(),
        "job": _str(description="The current attempt's Job."),
        "workers": _obj({"active": _int(), "succeeded": _int(), "failed": _int()}),
        "startTime": _str(format="date-time"),
        "completionTime": _str(format="date-time"),
        "message": _str(),
        "output": _obj({"uri": _str()}),
        "conditions": {
            "type": "array",
            "items": CONDITION_SCHEMA,
            "x-kubernetes-list-type": "map",
            "x-kubernetes-list-map-keys": ["type"],
        },
    },
    **{"x-kubernetes-preserve-unknown-fields": True},
)


def training_job_crd() -> dict[str, Any]:
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": f"trainingjobs.{GROUP}"},
        "spec": {
            "group": GROUP,
            "scope": "Namespaced",
            "names": {
                "kind": "TrainingJob",
                "listKind": "TrainingJobList",
                "plural": "trainingjobs",
                "singular": "trainingjob",
                "shortNames": ["tj"],
                "categories": ["kubemaas", "all"],
            },
            "versions": [
                {
                    "name": VERSION,
                    "served": True,
                    "storage": True,
                    "subresources": {"status": {}},
                    "additionalPrinterColumns": [
                        {"name": "Phase", "type": "string", "jsonPath": ".status.phase"},
                        {"name": "Workers", "type": "integer", "jsonPath": ".spec.workers"},
                        {"name": "Restarts", "type": "integer", "jsonPath": ".status.restarts"},
                        {"name": "Output", "type": "string", "jsonPath": ".status.output.uri", "priority": 1},
                        {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"},
                    ],
                    "schema": {
                        "openAPIV3Schema": _obj(
                            {
                                "apiVersion": _str(),
                                "kind": _str(),
                                "metadata": {"type": "object"},
                                "spec": _described(TRAINING_JOB_SPEC, TRAINING_JOB_DOCS, "spec"),
                                "status": _described(TRAINING_JOB_STATUS, TRAINING_JOB_DOCS, "status"),
                            },
                            required=["spec"],
                            description="Distributed PyTorch training run as a gang-placed group of torchrun workers.",
                        )
                    },
                }
            ],
        },
    }


CRDS = {"modelservice.yaml": model_service_crd, "trainingjob.yaml": training_job_crd}


def render(name: str) -> str:
    header = "# Generated by `python -m kubemaas_operator.crd` from kubemaas_operator/crd.py; do not edit.\n"
    return header + yaml.safe_dump(CRDS[name](), sort_keys=False, width=120)


def write_all(directory: Path) -> list[Path]:
    directory.mkdir(parents=True, exist_ok=True)
    written = []
    for name in CRDS:
        path = directory / name
        path.write_text(render(name))
        written.append(path)
    return written


def main(argv: list[str] | None = None) -> int:
    """Rewrite every generated copy: manifests/base/crds, the chart's crds/ and the API reference."""
    from kubemaas_operator.api_docs import render_reference

    args = sys.argv[1:] if argv is None else argv
    root = Path(__file__).resolve().parents[2]
    targets = [Path(a) for a in args] or [
        root / "manifests" / "base" / "crds",
        root / "charts" / "kubemaas" / "crds",
    ]
    for target in targets:
        for path in write_all(target):
            print(path)
    if not args:
        reference = root / "docs" / "api-reference.md"
        reference.write_text(render_reference())
        print(reference)
    return 0


if __name__ == "__main__":
    sys.exit(main())
