"""Moved to `tfp_glow.runs.pause_points` (the run is a library concept); kept for old imports."""

from tfp_glow.runs.pause_points import ENV, EpochPausePoints, pause_point

__all__ = ['ENV', 'EpochPausePoints', 'pause_point']
