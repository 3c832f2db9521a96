"""``python -m proxy_nas_svc``: serve the proxy NAS service on its port."""

from bitmesh.rpc.service_main import main
from proxy_nas_svc.servicer import build

if __name__ == "__main__":
    main("proxy_nas", build)
