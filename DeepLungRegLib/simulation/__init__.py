"""Semi-synthetic inhale/exhale pairs from one real CT."""

from .breathing import AMPLITUDE_RANGE_MM, AMPLITUDES, SimulatedPair, amplitude_parameters, read_pair, simulate_breathing, write_pair

__all__ = ["AMPLITUDE_RANGE_MM", "AMPLITUDES", "SimulatedPair", "amplitude_parameters", "read_pair", "simulate_breathing", "write_pair"]
