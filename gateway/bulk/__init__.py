"""Bulk recompression of an existing archive, on a Dask cluster or on this machine's cores.

* :mod:`~gateway.bulk.plan`: the walk of ``IN`` and the output layouts;
* :mod:`~gateway.bulk.manifest`: the SQLite manifest in ``OUT`` that makes a run resumable;
* :mod:`~gateway.bulk.task`: the per-file task Dask workers run (read, recompress, verify, write atomically);
* :mod:`~gateway.bulk.driver`: the client: planning, bounded submission, progress, the dry run;
* :mod:`~gateway.bulk.sample`: the dry run's draws by size and the interval it states;
* :mod:`~gateway.bulk.report`: the closing report, per modality and per source syntax.
"""

from gateway.bulk.driver import BulkOptions, Estimate, estimate, run
from gateway.bulk.manifest import Manifest, ManifestMismatchError
from gateway.bulk.plan import LAYOUTS, MANIFEST_NAME, LayoutError
from gateway.bulk.report import Report
from gateway.bulk.task import compress_file

__all__ = ["BulkOptions", "Estimate", "Report", "Manifest", "ManifestMismatchError", "LayoutError", "LAYOUTS",
           "MANIFEST_NAME", "run", "estimate", "compress_file"]
