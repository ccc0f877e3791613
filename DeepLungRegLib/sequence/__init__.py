"""4D-CT: registering every phase of a breathing cycle to a reference phase (``deeplungreg sequence``)."""

from .run import match_landmark_files, phase_folder, read_phase_landmarks, register_sequence, summary_lines

__all__ = ["match_landmark_files", "phase_folder", "read_phase_landmarks", "register_sequence", "summary_lines"]
