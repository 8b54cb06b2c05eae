"""Benchmarks (`python -m bench.NAME`) and the evaluation harnesses behind `sightline vision eval`
and `sightline kb eval`, with the reference systems they are measured against. None of it is on
the worker's import path: its extra dependencies come with the `eval` extra, and the worker image
does not ship this package."""
