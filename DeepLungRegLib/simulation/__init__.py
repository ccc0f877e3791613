"""Semi-synthetic inhale/exhale pairs from one real CT."""

from .breathing import AMPLITUDES, SimulatedPair, read_pair, simulate_breathing, write_pair

__all__ = ["AMPLITUDES", "SimulatedPair", "read_pair", "simulate_breathing", "write_pair"]
