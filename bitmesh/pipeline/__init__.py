"""`bitmesh run`: the whole quantization pipeline over a running mesh.

Modules: :mod:`.request` (what to run), :mod:`.cache` (resumability),
:mod:`.stages` (one call sequence per stage), :mod:`.export` (ONNX, torch),
:mod:`.plots`, :mod:`.report` and :mod:`.run` (the driver). Nothing heavy is
imported here.
"""
