"""``python -m trainer_svc``: serve the trainer on its port.

The job modules (torch, torchvision) are imported before the service serves:
``StartJob`` validates every request against the loaded model, and the first
call would otherwise pay those imports (``trainer_svc.warm``);
``BITMESH_TRAINER_WARM_IMPORTS=0`` skips it, as in the workers (a mesh that
never trains, such as the CLI's own test, then starts in seconds less)."""

from bitmesh.rpc.service_main import main
from trainer_svc.config import TrainerSettings
from trainer_svc.servicer import build
from trainer_svc.warm import warm_imports

if __name__ == "__main__":
    if TrainerSettings().warm_imports:
        warm_imports()
    main("trainer", build)
