"""Where the Telemetry example lived before webscale/examples/telemetry.py: an alias, nothing more.

Kept so that `from webscale.messages import ...` (dispatch.py, bench_client/asyncio_twin.py)
keeps working until those import from webscale.examples.telemetry; then delete this module.
"""

from __future__ import annotations

from .examples.telemetry import Reading, Telemetry, decode_telemetry

__all__ = ["Reading", "Telemetry", "decode_telemetry"]
