"""The main job: every paper's experiments on one model, in stages, ending in one report.

It sits above the experiments and the report: nothing below imports it.
"""

from babelheads.study.config import StudyConfig
from babelheads.study.profiles import PROFILES, Profile, profile_named
from babelheads.study.runner import StageResult, run_study, select_stages
from babelheads.study.stages import Stage, detection_grid, stages

__all__ = [
    "PROFILES",
    "Profile",
    "Stage",
    "StageResult",
    "StudyConfig",
    "detection_grid",
    "profile_named",
    "run_study",
    "select_stages",
    "stages",
]
