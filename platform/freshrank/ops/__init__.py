"""Operating the loop: starting or joining Ray (`init_ray`) and the status view over registry,
landing zone and Prometheus (`collect_status`, `render_status`)."""

from freshrank.ops.runtime import RayInfo, init_ray
from freshrank.ops.status import Status, collect_status, render_status

__all__ = ["RayInfo", "Status", "collect_status", "init_ray", "render_status"]
