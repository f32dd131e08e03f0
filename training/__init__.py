"""The trainer's parts, used by ``train.py``: checkpoints, the Muon optimizer, the step budget, the run log.

``train.py`` orchestrates; each module here owns one concern and knows nothing of the others' internals.
"""
