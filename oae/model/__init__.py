"""Pure-Python models of oae's C code, kept small and obvious: test oracles and benchmark
baselines for the C hot path."""
