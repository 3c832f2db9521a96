"""``python -m sensitivity_svc``: serve the sensitivity service on its port."""

from bitmesh.rpc.service_main import main
from sensitivity_svc.servicer import build

if __name__ == "__main__":
    main("sensitivity", build)
