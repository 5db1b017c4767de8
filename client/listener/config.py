"""Typed configuration of `fracfl listen` (conf/listen.yaml): who we are on the network, who may talk to us, where
results go, where the queue lives and which model runs."""

from __future__ import annotations

from dataclasses import dataclass, field

from common.config import TFLITE_VARIANTS, EvalConfig
from common.errors import ConfigError


@dataclass
class PeerConfig:
    """A node allowed to send to us: its calling AE title and/or its IP address (null matches any)."""

    ae_title: str | None = None
    host: str | None = None


@dataclass
class DestinationConfig:
    """The PACS (or any Storage SCP) that receives the result objects."""

    ae_title: str = "ORTHANC"
    host: str = "127.0.0.1"
    port: int = 4242


@dataclass
class ListenConfig:
    ae_title: str = "FRACFL"
    host: str = "0.0.0.0"  # address to bind; 127.0.0.1 for local tests
    port: int = 11112
    allowed_peers: list[PeerConfig] = field(default_factory=list)  # empty: accept any peer (not for production)
    require_called_ae: bool = True  # reject associations addressed to another AE title
    destination: DestinationConfig | None = field(default_factory=DestinationConfig)  # null: keep results only on disk
    queue_dir: str = "var/listener"
    model: str = ""  # weights file or registry version folder (the old key `weights` is still read, with a warning)
    models_dir: str | None = None  # the site's model store instead of `model`: its current version, hot-reloaded
    clinical: bool = False  # only approved versions (signed with approval_key's site key); needs models_dir
    approval_key: str | None = None  # the site's key (its private PEM, or the public PEM) that signs approvals
    backend: str = "torch"  # torch | tflite (an edge build exported into the version folder)
    variant: str = "fp32"  # tflite build: one of common.config.TFLITE_VARIANTS
    threads: int = 2  # CPU threads for inference
    workers: int = 1  # inference threads pulling from the queue
    max_attempts: int = 3  # processing attempts before an item goes to failed/
    retry_delay: float = 5.0  # seconds before the first retry; doubles per attempt (processing and sending)
    max_retry_delay: float = 300.0
    send_timeout: float = 30.0  # network timeout of one association to the destination
    status_every: float = 60.0  # seconds between status lines (and status.json rewrites)
    keep_done: bool = False  # keep received images in done/ after processing (they hold patient data)
    heatmap: bool = True  # Grad-CAM heatmap in the Secondary Capture (a backward pass: roughly doubles inference)
    keep_dir: str | None = None  # the pipeline keeps de-identified copies here (training, feedback); null: none
    feedback_db: str | None = (
        None  # the site's feedback store (`fracfl review`): each kept image's findings; needs keep_dir
    )
    eval: EvalConfig = field(default_factory=EvalConfig)

    def check(self) -> None:
        """Refuse values that would only fail later, naming the key."""
        for key, value in (
            ("ae_title", self.ae_title),
            ("destination.ae_title", self.destination and self.destination.ae_title),
        ):
            if value is not None and not (0 < len(value.strip()) <= 16 and value.isascii() and "\\" not in value):
                raise ConfigError(
                    f"config key {key}: {value!r} is not a DICOM AE title (1-16 ASCII characters, no backslash)"
                )
        if not 0 <= self.port < 65536:  # 0: any free port (tests)
            raise ConfigError(f"config key port: {self.port} is not a TCP port")
        if self.destination is not None and not 0 < self.destination.port < 65536:
            raise ConfigError(f"config key destination.port: {self.destination.port} is not a TCP port")
        if self.variant not in TFLITE_VARIANTS:
            raise ConfigError(f"config key variant: {self.variant!r}; choose from {', '.join(TFLITE_VARIANTS)}")
        if self.workers < 1 or self.max_attempts < 1:
            raise ConfigError("config keys workers and max_attempts must be at least 1")
        if self.feedback_db and not self.keep_dir:
            raise ConfigError(
                "config key feedback_db: set keep_dir too; the feedback store references only the "
                "de-identified copies kept there"
            )
        if self.clinical and not (self.models_dir and self.approval_key):
            raise ConfigError(
                "config key clinical: set models_dir and approval_key too; clinical use takes only versions "
                "approved and signed in the site's model store"
            )
        for i, peer in enumerate(self.allowed_peers):
            if peer.ae_title is None and peer.host is None:
                raise ConfigError(f"config key allowed_peers[{i}]: give an ae_title, a host, or both")
