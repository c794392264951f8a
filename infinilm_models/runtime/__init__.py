"""The only layer that talks to InfiniCore's C libraries (through ctypes).

library  – finding and loading libinfinirt/libinfiniop, the C prototypes, InfiniError
device   – devices by name, selection, synchronize, the per-device infiniop handle
memory   – DeviceBuffer (infinirtMalloc/Free) and memcpy
tensor   – Tensor: dtype/shape/strides/offset over a buffer, zero-copy views, numpy I/O
ops      – one wrapper per op, descriptors and workspaces cached per signature
build    – `python -m infinilm_models.runtime.build`: the old name of the build tool,
           `infinilm_models.build` (the runtime imports only its `prefix` module)
"""

from .device import Device, available_devices, device_count
from .dtypes import DType
from .library import InfiniError, LibraryNotFound, load
from .memory import DeviceBuffer
from .tensor import Tensor

__all__ = [
    "DType", "Device", "DeviceBuffer", "InfiniError", "LibraryNotFound", "Tensor",
    "available_devices", "device_count", "load",
]
