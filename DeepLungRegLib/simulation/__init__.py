"""Semi-synthetic inhale/exhale pairs, and breathing cycles (4D-CT), from one real CT."""

from .breathing import AMPLITUDE_RANGE_MM, AMPLITUDES, SimulatedPair, amplitude_parameters, read_pair, simulate_breathing, write_pair
from .cycle import SimulatedCycle, simulate_cycle, write_cycle

__all__ = ["AMPLITUDE_RANGE_MM", "AMPLITUDES", "SimulatedPair", "amplitude_parameters", "read_pair", "simulate_breathing", "write_pair",
           "SimulatedCycle", "simulate_cycle", "write_cycle"]
