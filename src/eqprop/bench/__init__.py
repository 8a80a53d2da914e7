"""Benchmarks behind ``eqprop bench <target>``; the code that runs them lives here, the
scripts and committed result tables in ``benchmarks/``."""

from .solvers import SolverBenchConfig, bench_solvers, markdown_table

__all__ = ["SolverBenchConfig", "bench_solvers", "markdown_table"]
