"""The Storage SCP: C-ECHO and C-STORE, access control at association time, durable receipt before success.

Every storage SOP class is accepted, not only DX/CR/MG radiographs: an object we cannot use is then quarantined
with a reason an operator can read in failed/, instead of being refused at negotiation, where a PACS or modality
usually just retries or shows an opaque error. All transfer syntaxes are accepted for the same reason; the
pipeline decodes what it can and quarantines the rest. (The 128-context limit applies per association to the
requestor's proposals; an acceptor may support any number.)
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from pynetdicom import AE, ALL_TRANSFER_SYNTAXES, AllStoragePresentationContexts, _config, evt
from pynetdicom.sop_class import Verification

from client.listener.access import peer_allowed
from client.listener.config import ListenConfig
from client.listener.queue import DurableQueue

log = logging.getLogger("fracfl.listener")

STATUS_SUCCESS = 0x0000
STATUS_OUT_OF_RESOURCES = 0xA700  # the sender keeps the object and retries later

REJECT_PERMANENT, SOURCE_SERVICE_USER, CALLING_AE_NOT_RECOGNISED = 0x01, 0x01, 0x03


def quiet_pynetdicom() -> None:
    """pynetdicom's standard event logging can print dataset contents at debug level: switch it off."""
    _config.LOG_HANDLER_LEVEL = "none"
    _config.LOG_REQUEST_IDENTIFIERS = False
    _config.LOG_RESPONSE_IDENTIFIERS = False
    logging.getLogger("pynetdicom").setLevel(logging.WARNING)


def build_ae(cfg: ListenConfig) -> AE:
    ae = AE(ae_title=cfg.ae_title)
    ae.require_called_aet = cfg.require_called_ae
    ae.add_supported_context(Verification, ALL_TRANSFER_SYNTAXES)
    for cx in AllStoragePresentationContexts:
        ae.add_supported_context(cx.abstract_syntax, ALL_TRANSFER_SYNTAXES)
    return ae


def handlers(cfg: ListenConfig, queue: DurableQueue, on_received: Callable[[], None]) -> list:
    """Event handlers of the SCP: access check on A-ASSOCIATE-RQ, C-STORE into the durable queue."""

    def requested(event: evt.Event) -> None:
        assoc = event.assoc
        ae_title, host = assoc.requestor.primitive.calling_ae_title, assoc.requestor.address  # set before negotiation
        if not peer_allowed(cfg.allowed_peers, ae_title, host):
            log.warning("refused association from AE %r at %s: not in allowed_peers", ae_title.strip(), host)
            assoc.acse.send_reject(REJECT_PERMANENT, SOURCE_SERVICE_USER, CALLING_AE_NOT_RECOGNISED)
            assoc.kill()

    def store(event: evt.Event) -> int:
        rq = event.request
        try:
            item = queue.put(
                event.encoded_dataset(),
                str(rq.AffectedSOPInstanceUID),
                str(rq.AffectedSOPClassUID),
                event.assoc.requestor.ae_title.strip(),
            )
        except OSError as e:  # disk full or unwritable: the sender must keep the object
            log.error("could not queue a received object (%s): answering 'out of resources'", type(e).__name__)
            return STATUS_OUT_OF_RESOURCES
        log.info("received %s ref %s from %s", item.id, item.meta["ref"], item.meta["calling_ae"])
        on_received()
        return STATUS_SUCCESS

    return [(evt.EVT_REQUESTED, requested), (evt.EVT_C_STORE, store)]
