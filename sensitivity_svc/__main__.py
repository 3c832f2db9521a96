"""``python -m sensitivity_svc``: serve the sensitivity service on its port.

What the first analysis needs (torchvision's model builders, the image
loaders, the estimator) is imported in a background thread as the service
starts (``bitmesh.warm.warm_in_background``; at normal priority, since a
niced thread that holds the GIL while preempted stalls the whole server).
Why: those imports are lazy, so the first StartAnalysis or ListLayers of a
fresh service paid them inside the call: 5.5 s of a resnet18 StartAnalysis
that takes 0.06 s once warm (measured on the 2-core machine). Unlike the
trainer, which imports before it serves, the service answers health checks
at once and a call that arrives meanwhile waits on the import lock, no
longer than it did. ``BITMESH_SENSITIVITY_WARM_IMPORTS=0`` skips it.
"""

import os

from bitmesh.rpc.service_main import main
from bitmesh.warm import warm_in_background
from sensitivity_svc.servicer import build

#: What an analysis of a torchvision model on image data imports on its way.
ANALYSIS_MODULES: tuple[str, ...] = (
    "torchvision.models",
    "torchvision.datasets",
    "torchvision.transforms",
    "PIL.Image",
    "sensitivity_svc.jobs",
    "sensitivity_svc.analysis",
    "sensitivity_svc.hutchinson",
)

if __name__ == "__main__":
    if os.environ.get("BITMESH_SENSITIVITY_WARM_IMPORTS", "1") != "0":
        warm_in_background(ANALYSIS_MODULES, polite=False)
    main("sensitivity", build)
