"""``brcd experiment``: BRCD against KD baselines and its own ablations over bit lengths and seeds, with a report."""
from .grid import Experiment, ExperimentOptions, find_teachers, parse_bits, parse_methods, run_experiment
from .report import write_report

__all__ = [
    "Experiment",
    "ExperimentOptions",
    "find_teachers",
    "parse_bits",
    "parse_methods",
    "run_experiment",
    "write_report",
]
