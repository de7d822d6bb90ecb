"""Where the residuals of skipped spans come from: the bank on disk, its fingerprints, the training
schedule it was made for, and block streaming for residuals computed on the fly.

Imports only `crops` (the schedule fixes each step's crop size).
"""

from .bank import BankError, BankReader, BankWriter
from .fingerprint import model_fingerprint
from .schedule import ScheduleEntry, TrainingSchedule

__all__ = ["BankError", "BankReader", "BankWriter", "ScheduleEntry", "TrainingSchedule", "model_fingerprint"]
