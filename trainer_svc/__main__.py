"""``python -m trainer_svc``: serve the trainer on its port."""

from bitmesh.rpc.service_main import main
from trainer_svc.servicer import build

if __name__ == "__main__":
    main("trainer", build)
