"""bitmesh: mixed-precision quantization as a mesh of gRPC services.

Importing this package imports nothing heavy (no torch, no grpc): the solver
image depends on that. Heavy pieces live in submodules imported on use.
"""

__version__ = "0.1.0"


def __getattr__(name: str) -> object:
    """Lazy `bitmesh.Client` so `import bitmesh` stays light."""
    if name == "Client":
        from bitmesh.client import Client

        return Client
    raise AttributeError(name)
