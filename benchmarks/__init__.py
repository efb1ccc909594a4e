"""eightbit's benchmark harness: speed *and* accuracy of eightbit beside its peers, on this machine.

Run ``python -m benchmarks [--quick] [--cases linear,optim,blockwise,fp8,compile,models,load,decode] [--json out.json]`` from
the repository root (``eightbit bench`` does the same). Every case runs all of its implementations in one
process, interleaved round-robin per repeat after a warm-up, and reports median/p10/p90 time, throughput,
relative error against a float64 reference and the distance from the physical floor. A peer library or an
eightbit implementation that is missing shows up as ``unavailable`` and never stops the run.
"""

CASES = ("linear", "optim", "blockwise", "fp8", "compile", "models", "load", "decode")
"""Case names in run order; each is the module ``benchmarks.case_<name>`` exposing ``run(ctx)``."""

SCHEMA_VERSION = 1
