"""The concurrency autoscaler of ModelService, as pure functions (issue 4).

- `decision`: `decide(state, samples, spec, now) -> Decision`, the rules of one round;
- `windows`: `WindowState`, the immutable memory folded from round to round;
- `exposition`: the in-flight gauge out of a server's `/metrics` text;
- `canary`: splitting a replica count between stable and canary revisions;
- `traces` and `simulation`: load traces and a discrete-time simulation that scores the rules
  (`make bench-autoscaling` writes its table to docs/autoscaling.md).

Nothing here talks to Kubernetes; the operator scrapes pods, calls `decide` and applies the count.
"""

from kubemaas_operator.autoscaling.canary import split_replicas
from kubemaas_operator.autoscaling.decision import AutoscalingSpec, Decision, Mode, PodSample, decide
from kubemaas_operator.autoscaling.exposition import INFLIGHT_METRIC, MetricsError, in_flight_from_metrics
from kubemaas_operator.autoscaling.windows import WindowState

__all__ = [
    "INFLIGHT_METRIC",
    "AutoscalingSpec",
    "Decision",
    "MetricsError",
    "Mode",
    "PodSample",
    "WindowState",
    "decide",
    "in_flight_from_metrics",
    "split_replicas",
]
