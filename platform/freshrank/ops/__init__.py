"""Operating the loop: starting or joining Ray (`init_ray`), reading freshrank's series from a
Prometheus endpoint (`scrape_series`), and the status view over registry, landing zone and
Prometheus (`collect_status`, `render_status`)."""

from freshrank.ops.runtime import RayInfo, init_ray
from freshrank.ops.scrape import ScrapeError, Series, scrape_freshrank_metrics, scrape_series
from freshrank.ops.status import Status, collect_status, render_status

__all__ = [
    "RayInfo",
    "ScrapeError",
    "Series",
    "Status",
    "collect_status",
    "init_ray",
    "render_status",
    "scrape_freshrank_metrics",
    "scrape_series",
]
