"""Operating the loop: starting or joining Ray (`init_ray`), reading freshrank's series from a
Prometheus endpoint (`scrape_series`), the status view over registry, landing zone and
Prometheus (`collect_status`, `render_status`), and the same as a page in the browser
(`start_status_page`, ``freshrank ui``)."""

from freshrank.ops.runtime import RayInfo, init_ray
from freshrank.ops.scrape import ScrapeError, Series, scrape_freshrank_metrics, scrape_series
from freshrank.ops.status import Status, collect_status, render_status
from freshrank.ops.ui import StatusPage, start_status_page

__all__ = [
    "RayInfo",
    "ScrapeError",
    "Series",
    "Status",
    "StatusPage",
    "collect_status",
    "init_ray",
    "render_status",
    "scrape_freshrank_metrics",
    "scrape_series",
    "start_status_page",
]
