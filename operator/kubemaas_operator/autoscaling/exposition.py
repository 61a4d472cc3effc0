"""Reading the autoscaler's signal out of a model server's `/metrics` page.

Each `kubemaas serve` pod exposes, in the Prometheus text format, the gauge
`kubemaas_inflight_requests{model="NAME"}`: ModelInfer requests received and not yet answered,
queued ones included (see `kubemaas_server/metrics.py`, where the name is a contract). The server
creates the series for every model it loaded, at 0, so a missing series means the pod does not
serve that model, not that it is idle.

`in_flight_from_metrics` is pure: the operator fetches the text, this parses it. Anything that is
not a clean, single, finite, non-negative value raises `MetricsError`, whose message names the
problem (and the line, for malformed text); the operator then records the pod as
"scrape failed" instead of guessing a number.
"""

from __future__ import annotations

import math

from prometheus_client.parser import text_string_to_metric_families

INFLIGHT_METRIC = "kubemaas_inflight_requests"


class MetricsError(ValueError):
    """A `/metrics` page that does not yield one usable in-flight value for the model."""


def in_flight_from_metrics(text: str, model: str) -> float:
    """The in-flight gauge of `model` in a Prometheus text exposition."""
    try:
        families = list(text_string_to_metric_families(text))
    except Exception as error:  # the parser raises ValueError, IndexError, ... on bad input
        raise MetricsError(_malformed(text, error)) from error
    series = [
        sample
        for family in families
        for sample in family.samples
        if sample.name == INFLIGHT_METRIC and sample.labels.get("model") == model
    ]
    if not series:
        models = sorted(
            {
                sample.labels.get("model", "")
                for family in families
                for sample in family.samples
                if sample.name == INFLIGHT_METRIC
            }
        )
        if not models:
            raise MetricsError(f"no {INFLIGHT_METRIC} metric in the scrape (is this a kubemaas server?)")
        raise MetricsError(
            f"{INFLIGHT_METRIC} has no series for model {model!r} (this pod serves {', '.join(models)})"
        )
    if len(series) > 1:
        raise MetricsError(f"{INFLIGHT_METRIC} has {len(series)} series for model {model!r}, expected one")
    value = float(series[0].value)
    if not math.isfinite(value) or value < 0:
        raise MetricsError(f"{INFLIGHT_METRIC} for model {model!r} is {value}, not a count")
    return value


def _malformed(text: str, error: Exception) -> str:
    """Names the first line the parser refuses on its own; the whole-text error otherwise."""
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip() or line.startswith("#"):
            continue
        try:
            list(text_string_to_metric_families(line + "\n"))
        except Exception as line_error:
            return f"malformed metrics text at line {number} ({line[:80]!r}): {line_error}"
    return f"malformed metrics text: {error}"
