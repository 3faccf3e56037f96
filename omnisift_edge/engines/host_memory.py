"""Host memory that `export` needs, as `plan` prints it: the measured fit lives in model/host_memory.py
(the model layer, so the export stage can refuse a machine with too little memory before writing anything)."""

from __future__ import annotations

from omnisift_edge.model.host_memory import (GB, MEASURED, export_anon_bytes, export_peak_bytes, export_rss_bytes,
                                             summary, thinker_bytes)

__all__ = ["GB", "MEASURED", "export_anon_bytes", "export_peak_bytes", "export_rss_bytes", "summary", "thinker_bytes"]
