"""The one instrument on attention: a registered attention function with per-head gates and a recorder."""

from babelheads.probe.attention import ATTENTION_NAME
from babelheads.probe.gates import HeadGates
from babelheads.probe.instrument import Instrument, ProbeSettings, StepRecords

__all__ = ["ATTENTION_NAME", "HeadGates", "Instrument", "ProbeSettings", "StepRecords"]
