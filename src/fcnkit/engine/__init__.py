"""The training engine: the loop, evaluation, optimisers and schedules, weight EMA, distributed helpers."""
