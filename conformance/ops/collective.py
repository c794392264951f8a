"""The communicator the all-reduce check uses: one InfiniCCL communicator over every device
of a type, made once per process (or the error making it raised, answered to every case).

A plain module, so that a stand-in (tests/test_allreduce_check.py's loopback plugin) can
replace `communicator` here without importing the check."""

from __future__ import annotations

from infinilm_models.runtime import Device, InfiniError, device_count
from infinilm_models.runtime.comm import InfiniCCLCommunicator

# device type -> the communicator over all its devices, or the error making one raised
_comms: dict[str, object] = {}


def communicator(kind: str) -> InfiniCCLCommunicator:
    if kind not in _comms:
        n = device_count(kind)
        try:
            _comms[kind] = InfiniCCLCommunicator([Device(kind, i) for i in range(n)])
        except InfiniError as e:
            _comms[kind] = e
    got = _comms[kind]
    if isinstance(got, InfiniError):
        raise got.with_traceback(None)  # the same answer for every check, traceback fresh
    return got
