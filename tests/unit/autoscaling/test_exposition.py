from __future__ import annotations

import pytest
from prometheus_client import generate_latest

from kubemaas_operator.autoscaling import INFLIGHT_METRIC, MetricsError, in_flight_from_metrics
from kubemaas_server.metrics import ServerMetrics


def test_reads_the_gauge_the_model_server_actually_exposes() -> None:
    metrics = ServerMetrics()
    metrics.for_model("mlp").inflight.inc(3)
    metrics.for_model("resnet").inflight.inc(1)
    metrics.for_model("idle")
    text = generate_latest(metrics.registry).decode()
    assert INFLIGHT_METRIC in text
    assert in_flight_from_metrics(text, "mlp") == 3.0
    assert in_flight_from_metrics(text, "resnet") == 1.0
    assert in_flight_from_metrics(text, "idle") == 0.0  # a loaded model's series exists at 0


def test_a_model_the_pod_does_not_serve_is_an_error_naming_what_it_serves() -> None:
    text = f'{INFLIGHT_METRIC}{{model="a"}} 1\n{INFLIGHT_METRIC}{{model="b"}} 2\n'
    with pytest.raises(MetricsError, match=r"no series for model 'mlp' \(this pod serves a, b\)"):
        in_flight_from_metrics(text, "mlp")


def test_a_page_without_the_metric_is_not_a_kubemaas_server() -> None:
    with pytest.raises(MetricsError, match="no kubemaas_inflight_requests metric in the scrape"):
        in_flight_from_metrics("process_cpu_seconds_total 12\n", "mlp")
    with pytest.raises(MetricsError, match="no kubemaas_inflight_requests metric"):
        in_flight_from_metrics("", "mlp")


def test_malformed_text_names_the_line() -> None:
    text = f'# TYPE {INFLIGHT_METRIC} gauge\n{INFLIGHT_METRIC}{{model="mlp"}} 1\nbroken{{model="x}} 3\n'
    with pytest.raises(MetricsError, match="malformed metrics text at line 3"):
        in_flight_from_metrics(text, "mlp")
    with pytest.raises(MetricsError, match="malformed metrics text"):
        in_flight_from_metrics("<html><body>502 Bad Gateway</body></html>", "mlp")


@pytest.mark.parametrize("value", ["NaN", "+Inf", "-1"])
def test_a_value_that_is_not_a_count_is_refused(value: str) -> None:
    with pytest.raises(MetricsError, match="not a count"):
        in_flight_from_metrics(f'{INFLIGHT_METRIC}{{model="mlp"}} {value}\n', "mlp")


def test_duplicate_series_are_refused() -> None:
    text = f'{INFLIGHT_METRIC}{{model="mlp",pod="a"}} 1\n{INFLIGHT_METRIC}{{model="mlp",pod="b"}} 2\n'
    with pytest.raises(MetricsError, match="2 series for model 'mlp'"):
        in_flight_from_metrics(text, "mlp")
