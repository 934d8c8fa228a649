"""The epoch layer: bilateral convergence of a cluster from epoch e to e+1 without a
snapshot instant (docs/convergence.md), its FITO and classic baselines, and the
simulated network they are compared on."""
