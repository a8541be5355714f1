"""Ray's side of the job metrics (jobs/metrics.py): each series as a ``ray.serve.metrics`` object,
so it flows through Ray's metrics export on every node (and the Ray dashboard's Grafana), tagged
by Serve with the application, deployment and replica that recorded it."""

from __future__ import annotations

from typing import Any

from ray.serve import metrics as serve_metrics

from jobs.metrics import PREFIX, SERIES


class RaySink:
    """A ``MetricsSink`` over ``ray.serve.metrics``. Build it inside a Serve replica (the router, a
    generator): Serve's own tags come from the replica context. Each series is created on first use."""

    def __init__(self) -> None:
        self._metrics: dict[str, Any] = {}

    def _metric(self, series: str):
        metric = self._metrics.get(series)
        if metric is None:
            s = SERIES[series]
            name, keys = PREFIX + series, s.labels
            if s.kind == "counter":
                metric = serve_metrics.Counter(name, description=s.help, tag_keys=keys)
            elif s.kind == "gauge":
                metric = serve_metrics.Gauge(name, description=s.help, tag_keys=keys)
            else:
                metric = serve_metrics.Histogram(name, description=s.help, boundaries=list(s.buckets), tag_keys=keys)
            self._metrics[series] = metric
        return metric

    def inc(self, series: str, labels: dict[str, str], value: float = 1.0) -> None:
        self._metric(series).inc(value, tags=labels)

    def observe(self, series: str, labels: dict[str, str], value: float) -> None:
        self._metric(series).observe(value, tags=labels)

    def set(self, series: str, labels: dict[str, str], value: float) -> None:
        self._metric(series).set(value, tags=labels)
