"""The shared Ray Train wiring: the local trainer leaves out the State-API placement-group cleaner."""
from __future__ import annotations

import os

from ray.train.torch import TorchTrainer

from ray_jobs.cluster import LOCAL_TRAIN_ENV, local_without_dashboard
from ray_jobs.train_common import PG_CLEANER_CALLBACK, LocalTorchTrainer, make_torch_trainer


def _noop(config):
    pass


def test_ray_still_has_the_overridden_internals():
    # a Ray upgrade that renames these would silently bring back the once-a-second warnings
    from ray.train.v2._internal.callbacks import placement_group_callback

    assert hasattr(placement_group_callback, PG_CLEANER_CALLBACK)
    assert callable(getattr(TorchTrainer, "_create_default_callbacks", None))


def test_local_trainer_drops_only_the_cleaner(ray_local, tmp_path):
    assert local_without_dashboard()
    for key in LOCAL_TRAIN_ENV:
        assert key in os.environ
    trainer = make_torch_trainer(_noop, {}, name="t", storage=tmp_path, num_workers=1, use_gpu=False,
                                 cpus_per_worker=0.5)
    assert isinstance(trainer, LocalTorchTrainer)
    names = [type(cb).__name__ for cb in trainer._create_default_callbacks()]
    full = [type(cb).__name__ for cb in TorchTrainer._create_default_callbacks(trainer)]
    assert PG_CLEANER_CALLBACK in full
    assert PG_CLEANER_CALLBACK not in names
    assert sorted(names + [PG_CLEANER_CALLBACK]) == sorted(full)


def test_local_ray_workers_inherit_the_local_env(ray_local):
    # the switches only work if the raylet's worker processes see them (as they would a user's
    # OMP_WAIT_POLICY, which libgomp reads when torch loads there)
    @ray_local.remote(num_cpus=0.1)
    def worker_env():
        return {key: os.environ.get(key) for key in LOCAL_TRAIN_ENV}

    assert ray_local.get(worker_env.remote()) == {key: os.environ[key] for key in LOCAL_TRAIN_ENV}


def test_resume_onto_a_changed_dataset_is_refused(tmp_path, monkeypatch):
    import contextlib
    import json
    from types import SimpleNamespace

    import pytest
    import ray.train

    from ray_jobs.train_common import TrainerParts, resume_state

    saved = {"step": 7, "dataset_fingerprint": "aaa"}
    checkpoint = SimpleNamespace(as_directory=lambda: contextlib.nullcontext(str(tmp_path)))
    monkeypatch.setattr(ray.train, "get_checkpoint", lambda: checkpoint)
    wc = SimpleNamespace(cfg=SimpleNamespace(run=SimpleNamespace(name="r")), rank=0, world=1)

    def parts(fingerprint):
        return TrainerParts(total_steps=10, steps_per_epoch=5, epoch_batches=None, step=None, batch_images=None,
                            save=None, load=lambda d: json.loads(json.dumps(saved)), nonfinite_total=lambda: 0,
                            dataset_fingerprint=fingerprint)

    assert resume_state(wc, parts("aaa"))["step"] == 7
    assert resume_state(wc, parts(None))["step"] == 7  # a trainer without a dataset (distill)
    with pytest.raises(ValueError, match="'r' was checkpointed at step 7 on another version of its training set"):
        resume_state(wc, parts("bbb"))
