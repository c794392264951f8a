"""Float64 references of the op checks that other modules share, as plain modules.

A check (`conformance/ops/test_op_<op>.py`), the batched variant of a check, the self-tests
(`conformance/selftest/`) and the probes (`tools/probes/`) import the reference from here,
never from another test file. One module per op: the reference and the inputs that make it
exact; for the KV-cache ops, whose self-tests replay the check's own cases without a GPU,
also the cases and their preparation (device arguments and the float64 expectation).
"""
