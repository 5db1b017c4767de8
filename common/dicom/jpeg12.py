"""pydicom decoding plug-in: 12-bit JPEG Extended (1.2.840.10008.1.2.4.51) through GDCM.

Older CR archives hold many 12-bit lossy JPEGs. pylibjpeg's libjpeg refuses those whose scan header is not the
strict 0..63 spectral range (common from older encoders: "scan start must be zero and scan stop must be 63"),
Pillow has no 12-bit JPEG, and pydicom's own GDCM plug-in refuses 12-bit JPEG Extended outright, although GDCM's
bundled IJG 12-bit library decodes it (checked against pydicom's JPEG-lossy.dcm reference values). This plug-in is
the GDCM path without that refusal; `register()` appends it after pydicom's plug-ins, so it runs only when they fail.

Installing python-gdcm also makes pydicom try its own GDCM plug-in *first* for every compressed syntax, and GDCM
aborts the whole process (a C++ abort, not an exception) on damaged JPEG 2000 data: one bad image would kill the
listener. `register()` therefore removes pydicom's GDCM plug-in everywhere; GDCM only runs here, for 12-bit JPEG
Extended, where truncated, garbled and header-only codestreams were checked to fail with an exception.
"""

from __future__ import annotations

from pydicom import uid
from pydicom.pixels import decoders
from pydicom.pixels.decoders import JPEGExtended12BitDecoder
from pydicom.pixels.decoders.base import Decoder, DecodeRunner

LABEL = "fracfl-gdcm-12bit"
DECODER_DEPENDENCIES = {uid.JPEGExtended12Bit: ("gdcm",)}

try:  # python-gdcm (a dependency); a missing wheel only loses this transfer syntax (reason unsupported_codec)
    import gdcm

    HAVE_GDCM = True
except ImportError:
    HAVE_GDCM = False
# GDCM's libjpeg prints "Unsupported JPEG data precision 12" (its 8-bit attempt) and, for the files this plug-in
# exists for, "Invalid SOS parameters for sequential JPEG" straight to stderr (not through gdcm.Trace, so it cannot
# be switched off from Python). Fixed text, no values; docs/dicom.md tells sites to expect it.


def is_available(uid_: str) -> bool:
    return HAVE_GDCM and uid_ in DECODER_DEPENDENCIES


def _decode_frame(src: bytes, runner: DecodeRunner) -> bytes:
    """One encoded frame to its stored values (little-endian bytes of BitsAllocated each)."""
    fragment = gdcm.Fragment()
    fragment.SetByteStringValue(src)
    fragments = gdcm.SequenceOfFragments.New()
    fragments.AddFragment(fragment)
    elem = gdcm.DataElement(gdcm.Tag(0x7FE0, 0x0010))
    elem.SetValue(fragments.__ref__())
    img = gdcm.Image()
    img.SetNumberOfDimensions(2)
    img.SetDimensions((runner.columns, runner.rows, 1))
    img.SetDataElement(elem)
    pi = gdcm.PhotometricInterpretation.GetPIType(str(runner.photometric_interpretation))
    img.SetPhotometricInterpretation(gdcm.PhotometricInterpretation(pi))
    img.SetTransferSyntax(gdcm.TransferSyntax(gdcm.TransferSyntax.GetTSType(str(runner.transfer_syntax))))
    bits = runner.bits_stored
    img.SetPixelFormat(
        gdcm.PixelFormat(runner.samples_per_pixel, runner.bits_allocated, bits, bits - 1, runner.pixel_representation)
    )
    frame = img.GetBuffer()
    if not frame:
        raise RuntimeError("GDCM could not decode the 12-bit JPEG Extended frame")
    data = frame.encode("utf-8", "surrogateescape")  # GDCM hands char* back as str
    expected = runner.rows * runner.columns * runner.samples_per_pixel * (runner.bits_allocated // 8)
    if len(data) != expected:
        raise RuntimeError(f"GDCM decoded {len(data)} bytes, expected {expected}")
    return data


def register() -> None:
    """Remove pydicom's GDCM plug-in from every decoder and add this one to JPEG Extended (after the others); once."""
    for decoder in vars(decoders).values():
        if isinstance(decoder, Decoder) and "gdcm" in {*decoder._available, *decoder._unavailable}:
            decoder.remove_plugin("gdcm")
    if LABEL not in JPEGExtended12BitDecoder._available and LABEL not in JPEGExtended12BitDecoder._unavailable:
        JPEGExtended12BitDecoder.add_plugin(LABEL, (__name__, "_decode_frame"))
