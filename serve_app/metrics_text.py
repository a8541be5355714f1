"""``GET /metrics``: the service-level series in Prometheus' text format, from the router's
snapshot (``Router.metrics_snapshot``), rendered by prometheus_client. The same series, with the
per-job histograms, reach Prometheus through Ray's metrics export too (deployments/metrics.py)."""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

from jobs.metrics import PREFIX, SERIES

#: prometheus_client's content type of the text format, version 0.0.4.
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


class _Snapshot:
    """A prometheus_client collector over one snapshot."""

    def __init__(self, snapshot: dict) -> None:
        self.snapshot = snapshot

    def collect(self) -> Iterator[Metric]:
        def family(series: str, cls):
            s = SERIES[series]
            # prometheus_client adds _total to a counter's samples itself.
            return cls(PREFIX + series.removesuffix("_total"), s.help, labels=list(s.labels))

        submitted = family("jobs_submitted_total", CounterMetricFamily)
        for variant, count in sorted(self.snapshot["submitted"].items()):
            submitted.add_metric([variant], count)
        ended = family("jobs_ended_total", CounterMetricFamily)
        for variant, status, code, count in sorted(self.snapshot["ended"]):
            ended.add_metric([variant, status, code], count)
        queue, running = family("queue_depth", GaugeMetricFamily), family("running_jobs", GaugeMetricFamily)
        replicas = family("replicas", GaugeMetricFamily)
        for variant, g in sorted(self.snapshot["gauges"].items()):
            queue.add_metric([variant], g["queued"])
            running.add_metric([variant], g["running"])
            replicas.add_metric([variant, "target"], g["target"])
            replicas.add_metric([variant, "live"], g["live"])
        yield from (submitted, ended, queue, running, replicas)


def render(snapshot: dict) -> bytes:
    """The Prometheus text of ``snapshot`` (``{"submitted", "ended", "gauges"}``)."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Snapshot(snapshot))
    return generate_latest(registry)
