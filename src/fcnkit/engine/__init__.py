"""The training engine. ``train.py``: the loop (``train``, ``train_one_epoch``, ``should_stop``, checkpoints);
``run.py``: ``build_run`` (everything the loop needs, made from the config); ``state.py``: ``TrainState`` and RNG
states; ``clock.py``: the training clock and time budget; ``loader.py``: seeded augmentation and
``data.on_error``; ``optim.py``: parameter groups, optimisers, schedules; ``ema.py``; ``distributed.py``;
``evaluate.py``: a whole split's metrics; ``runlog.py``: ``metrics.jsonl``; ``pictures.py``.

Layer: above inference (evaluation runs its test-time options), below apps and cli."""
