"""What a site's round trains on: its original train split, replayed at the configured share, plus its feedback
pool's train split, so the model learns from the radiologists' verdicts without forgetting what it knew.

The replayed originals are chosen by each image's content hash, so the same images are chosen every round and as
the split grows, and the training set's DP fingerprint stays stable; with DP-SGD the ledger then charges the union
of originals and pool ("spending never resets": a new pool version shares images with the last one). Original
images of patients the pool holds out are left out too: a held-out patient is never trained on. So is every
instance the PACS withdrew (a KOS rejection note in the feedback store), original or pool image, even one withdrawn
after the pool version was built: both are named by their pseudonymous SOP Instance UID (ingest and the listener
name them through the same site keys), which is how the store records a withdrawal.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from client.continual.pool import PoolVersion
from common.config import ReplayConfig
from common.data.spec import DatasetSpec, load_spec
from common.errors import ConfigError
from common.privacy.fingerprint import image_hashes
from common.privacy.patients import read_patients


@dataclass(frozen=True)
class TrainingParts:
    """The images of each source a round trains on, with the source's spec (for labels and class names)."""

    parts: list[tuple[DatasetSpec, list[Path]]]
    roots: list[Path]  # folders whose patients.csv name the images' patients

    @property
    def images(self) -> list[Path]:
        return [p for _, chosen in self.parts for p in chosen]


def replayed(images: list[Path], share: float) -> list[Path]:
    """The images whose content hash falls in the first `share` of the hash range (all of them at share 1)."""
    if not 0.0 <= share <= 1.0:
        raise ConfigError(f"replay original_share {share}: must be between 0 and 1")
    if share >= 1.0:
        return list(images)
    return [p for p, h in zip(images, image_hashes(images), strict=True) if int(h[:16], 16) / 2**64 < share]


def training_parts(
    data: Path, pool: PoolVersion | None, mix: ReplayConfig, withdrawn: frozenset[str] = frozenset()
) -> TrainingParts:
    """The original train split of `data` (a data.yaml or folder) at the mix's share, and the pool's train split,
    both without the images named in `withdrawn` (pseudonymous SOP Instance UIDs, the images' file stems)."""
    root = data if data.is_dir() else data.parent
    spec = load_spec(data)
    originals = [p for p in replayed(spec.images("train"), mix.original_share) if p.stem not in withdrawn]
    if pool is None or not mix.use_pool:
        return TrainingParts([(spec, originals)], [root])
    pool_spec = load_spec(pool.data_yaml)
    pool_patients = read_patients(pool.root)
    held = {pool_patients[p.stem] for p in pool_spec.images(pool.holdout_split) if p.stem in pool_patients}
    mine = read_patients(root)
    originals = [p for p in originals if mine.get(p.stem) not in held]
    reviewed = [p for p in pool_spec.images("train") if p.stem not in withdrawn]
    return TrainingParts([(spec, originals), (pool_spec, reviewed)], [root, pool.root])
