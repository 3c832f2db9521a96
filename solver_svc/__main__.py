"""``python -m solver_svc``: serve the solver (no torch) on its port."""

from bitmesh.rpc.service_main import main
from solver_svc.servicer import build

if __name__ == "__main__":
    main("solver", build)
