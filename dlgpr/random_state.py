"""Random states in checkpoints, so a resumed run continues the uninterrupted one.

Lightning restores weights, optimiser, schedulers and loop counters from a checkpoint, but not
the random number generators: a run resumed with ``--ckpt_path`` reseeds at start-up and then
draws different dropout masks, augmentations and samples than the run it continues.
:class:`RandomStateCheckpoint` (added to every run by ``python -m dlgpr``) stores the states of
torch (CPU and every CUDA device), numpy and Python's ``random`` when a checkpoint is written,
one set per DDP rank, and sets them back when training starts again.

The data order needs no state of its own: the training streams and the dialogue-turn sampler
order each epoch as a pure function of (seed, epoch), and Lightning restores the epoch. But a
resumed fit builds its first training iterator before it has restored the epoch (a module's
``configure_optimizers`` asking for ``estimated_stepping_batches`` does it, before any loop
state is loaded), and Lightning keeps that iterator for the first epoch after a restart; a
stream that reads its epoch when the iterator is made (workers are started then) would replay
epoch 0. So the callback also builds the training iterator again once the epoch is right.

A checkpoint written at the end of an epoch (what ``ModelCheckpoint`` writes when validation
runs once per epoch) resumes exactly; one written within an epoch restarts that epoch's data
from its beginning (Lightning warns), so it cannot.
"""

from __future__ import annotations

import logging
import random
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from lightning.pytorch import Callback, LightningModule, Trainer

__all__ = ["RandomStateCheckpoint", "collect_random_states", "set_random_states"]

log = logging.getLogger("dlgpr.random_state")


def collect_random_states() -> dict[str, Any]:
    """This process' generator states: torch CPU, CUDA (one per device, if CUDA is up), numpy, Python.

    Only tensors and plain Python values, so a checkpoint still loads with ``weights_only=True``
    (LightningCLI reads ``--ckpt_path`` that way).
    """
    name, keys, pos, has_gauss, cached = np.random.get_state()
    numpy_state = {"name": str(name), "keys": torch.from_numpy(np.asarray(keys, dtype=np.int64)), "pos": int(pos),
                   "has_gauss": int(has_gauss), "cached_gaussian": float(cached)}
    states: dict[str, Any] = {"torch": torch.get_rng_state(), "numpy": numpy_state, "python": random.getstate()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        states["cuda"] = torch.cuda.get_rng_state_all()
    return states


def set_random_states(states: dict[str, Any]) -> None:
    torch.set_rng_state(states["torch"])
    n = states["numpy"]
    np.random.set_state((n["name"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["cached_gaussian"]))
    random.setstate(states["python"])
    if "cuda" in states and torch.cuda.is_available():
        cuda = states["cuda"]
        if len(cuda) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all(cuda)
        else:
            log.warning("the checkpoint holds %d CUDA generator states for %d devices: CUDA states not restored",
                        len(cuda), torch.cuda.device_count())


class RandomStateCheckpoint(Callback):
    """Saves every rank's random states in the checkpoint and restores them when a resumed fit starts training."""

    def __init__(self) -> None:
        super().__init__()
        self._pending: dict[str, Any] | None = None

    def state_dict(self) -> dict[str, Any]:
        states = collect_random_states()
        if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
            gathered: list[Any] = [None] * dist.get_world_size()
            dist.all_gather_object(gathered, states)  # every rank writes a checkpoint's state: a collective
            return {"per_rank": gathered}
        return {"per_rank": [states]}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self._pending = state_dict

    def on_train_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        # as late as possible: set-up between loading the checkpoint and the first batch (building
        # the loaders, moving the model) must not draw from the restored generators
        if self._pending is None:
            return
        per_rank = self._pending.get("per_rank") or []
        self._pending = None
        if not per_rank:
            return
        rank = trainer.global_rank
        if len(per_rank) != trainer.world_size:
            log.warning("the checkpoint holds random states of %d rank(s) for %d: every rank takes rank 0's, the run "
                        "does not continue exactly", len(per_rank), trainer.world_size)
            rank = 0
        set_random_states(per_rank[rank])
        # the iterator of the first epoch after the restart, made now that current_epoch is the
        # checkpoint's next epoch, from the restored generators (as the uninterrupted run makes it)
        fetcher = getattr(trainer.fit_loop, "_data_fetcher", None)
        if fetcher is not None:
            iter(fetcher)
