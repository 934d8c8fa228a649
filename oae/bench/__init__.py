"""Benchmarks: every speed figure oae quotes comes from here, never from a timed test."""
