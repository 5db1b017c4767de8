"""A site's round in plain torch (client/task.py): the job it is given is shared between rounds and left as it was."""

from __future__ import annotations

import torch
from tests_support import NANO, toy_dataset

from client.task import train_site
from common.config import LocalTrainConfig
from common.nn.model import build_model
from common.protocol import SiteJob


def test_a_parsed_job_is_shared_and_training_leaves_it_unchanged(tmp_path):
    spec = NANO
    train = LocalTrainConfig(epochs=7, local_epochs=1, max_steps=1, batch_size=4, imgsz=64)
    text = SiteJob(model=spec.to_dict(), train=train, rounds=2).to_json()
    job = SiteJob.parse(text)
    assert SiteJob.parse(text) is job  # typed once per worker, not per message

    data = toy_dataset(tmp_path / "site", n=8)
    state = build_model(spec).state_dict()
    new, metrics, privacy = train_site("site_a", data, state, job, 1)
    assert metrics["steps"] == 1 and metrics["num-examples"] == 6 and privacy is None
    assert any(not torch.equal(new[k], state[k]) for k in state)  # it did train
    assert job.train.epochs == 7 and job.train.local_epochs == 1  # the shared job is as it was parsed
    assert SiteJob.parse(text).train == SiteJob.from_json(text).train
