"""DICOM network clients with pynetdicom: C-ECHO, C-STORE (send) and C-FIND.

Each call opens one association, does its work and releases it. When the peer
refuses, the error is one line that says who refused whom and what to do
(``UserError``): an unknown calling AE title must be declared as a DICOM node
of the archive (``orthanc_dicom_nodes`` or the like in the inventory).

Files are sent as they are on disk (pynetdicom streams the encoded data set
of a Part 10 file in its own transfer syntax), so what arrives is byte-identical
to what was written, and the sender spends no CPU re-encoding.
"""

from __future__ import annotations

import logging
import socket
import ssl
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydicom.datadict import tag_for_keyword
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError
from pydicom.filereader import read_file_meta_info
from pynetdicom import AE, DEFAULT_TRANSFER_SYNTAXES, _config, evt
from pynetdicom.association import Association
from pynetdicom.pdu import A_ASSOCIATE_RJ

from pacs_libre.errors import UserError

VERIFICATION = "1.2.840.10008.1.1"
#: Study Root Query/Retrieve Information Model - FIND
STUDY_ROOT_FIND = "1.2.840.10008.5.1.4.1.2.2.1"
#: pynetdicom limits an association to 128 presentation contexts.
MAX_CONTEXTS = 128
#: What ``find`` asks for at each level, on top of the caller's own keys.
RETURN_KEYS: dict[str, tuple[str, ...]] = {
    "STUDY": (
        "PatientName",
        "PatientID",
        "PatientBirthDate",
        "PatientSex",
        "StudyInstanceUID",
        "AccessionNumber",
        "StudyDate",
        "StudyTime",
        "StudyDescription",
        "ModalitiesInStudy",
        "NumberOfStudyRelatedSeries",
        "NumberOfStudyRelatedInstances",
    ),
    "SERIES": (
        "StudyInstanceUID",
        "SeriesInstanceUID",
        "Modality",
        "SeriesNumber",
        "SeriesDescription",
        "NumberOfSeriesRelatedInstances",
    ),
    "IMAGE": (
        "StudyInstanceUID",
        "SeriesInstanceUID",
        "SOPInstanceUID",
        "SOPClassUID",
        "InstanceNumber",
    ),
}
#: How to declare a calling AE title; the message points the operator there.
DECLARE_HINT = (
    "declare it as a DICOM node of the archive (its AE title, host and port in the "
    "inventory's DICOM nodes) and converge, or use a declared one with --calling-aet"
)

# pynetdicom logs every PDU at INFO; our callers report results themselves.
logging.getLogger("pynetdicom").setLevel(logging.CRITICAL)
# Send files as their encoded bytes, in chunks: no decoding, no re-encoding.
_config.STORE_SEND_CHUNKED_DATASET = True


@dataclass(frozen=True)
class TLSOptions:
    """DICOM TLS (port 2762 by convention): the CA that signed the archive, and our pair."""

    ca_file: Path
    cert_file: Path | None = None
    key_file: Path | None = None
    server_hostname: str | None = None

    def context(self) -> ssl.SSLContext:
        ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=str(self.ca_file))
        if self.cert_file is not None:
            ctx.load_cert_chain(str(self.cert_file), str(self.key_file) if self.key_file else None)
        return ctx


TLS = TLSOptions | ssl.SSLContext | None


@dataclass
class InstanceResult:
    """The outcome of one C-STORE."""

    path: Path
    sop_instance_uid: str
    status: int | None
    error: str = ""
    size: int = 0

    @property
    def ok(self) -> bool:
        # 0x0000 success; 0xB000, 0xB006, 0xB007 are warnings: stored.
        return self.status is not None and (self.status == 0 or self.status >> 12 == 0xB)


@dataclass
class SendReport:
    """The status of every instance of a ``send``."""

    results: list[InstanceResult] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def sent(self) -> int:
        return sum(1 for r in self.results if r.ok)

    @property
    def failed(self) -> list[InstanceResult]:
        return [r for r in self.results if not r.ok]

    @property
    def bytes_sent(self) -> int:
        return sum(r.size for r in self.results if r.ok)

    def as_dict(self) -> dict[str, Any]:
        return {
            "sent": self.sent,
            "failed": len(self.failed),
            "bytes": self.bytes_sent,
            "seconds": round(self.seconds, 3),
            "failures": [
                {
                    "path": str(r.path),
                    "sop_instance_uid": r.sop_instance_uid,
                    "status": None if r.status is None else f"0x{r.status:04X}",
                    "error": r.error,
                }
                for r in self.failed
            ],
        }


# ------------------------------------------------------------------- associations


_REJECT_REASONS = {
    (1, 1): "no reason given",
    (1, 2): "application context name not supported",
    (1, 3): "calling AE title not recognised",
    (1, 7): "called AE title not recognised",
    (2, 1): "no reason given",
    (2, 2): "protocol version not supported",
    (3, 1): "temporary congestion",
    (3, 2): "local limit exceeded",
}


def _where(host: str, port: int, called: str, calling: str) -> str:
    return f"the archive at {host}:{port} (called AE '{called}', calling AE '{calling}')"


@contextmanager
def associate(
    host: str,
    port: int,
    called_aet: str,
    calling_aet: str,
    contexts: Iterable[tuple[str, Sequence[str]]],
    *,
    tls: TLS = None,
    timeout: float = 30.0,
) -> Iterator[Association]:
    """An established association, released on exit; refusals become ``UserError``.

    ``contexts`` are (abstract syntax, [transfer syntaxes]) pairs.
    """
    _check_aet(called_aet, "called")
    _check_aet(calling_aet, "calling")
    ae = AE(ae_title=calling_aet)
    ae.acse_timeout = timeout
    ae.dimse_timeout = timeout
    ae.network_timeout = timeout
    ae.connection_timeout = timeout
    ae.maximum_pdu_size = 0  # accept whatever the peer sends
    count = 0
    for abstract, syntaxes in contexts:
        # No transfer syntax given: pynetdicom's defaults (explicit/implicit VR LE...).
        ae.add_requested_context(abstract, list(syntaxes) or DEFAULT_TRANSFER_SYNTAXES)
        count += 1
    if count > MAX_CONTEXTS:
        raise UserError(f"too many kinds of objects in one send ({count} > {MAX_CONTEXTS})")
    rejection: dict[str, int] = {}

    def on_acse(event: Any) -> None:
        primitive = getattr(event, "primitive", None)
        result = getattr(primitive, "result", None)
        if primitive is not None and result in (1, 2):
            rejection["source"] = int(primitive.result_source)
            rejection["reason"] = int(primitive.diagnostic)

    # A peer may send its A-ASSOCIATE-RJ and close the connection at once
    # (dcmqrscp does): the state machine can then see the close first and report
    # an abort. The rejection PDU itself was still received and decoded: keep it.
    def on_pdu(event: Any) -> None:
        pdu = getattr(event, "pdu", None)
        if isinstance(pdu, A_ASSOCIATE_RJ) and pdu.result in (1, 2):
            rejection.setdefault("source", int(pdu.source or 0))
            rejection.setdefault("reason", int(pdu.reason_diagnostic or 0))

    tls_args = None
    if tls is not None:
        context = tls.context() if isinstance(tls, TLSOptions) else tls
        hostname = tls.server_hostname if isinstance(tls, TLSOptions) else None
        tls_args = (context, hostname or host)
    assoc = ae.associate(
        host,
        port,
        ae_title=called_aet,
        tls_args=tls_args,
        evt_handlers=[(evt.EVT_ACSE_RECV, on_acse), (evt.EVT_PDU_RECV, on_pdu)],
    )
    where = _where(host, port, called_aet, calling_aet)
    if not assoc.is_established:
        if assoc.is_rejected or rejection:
            raise UserError(_refusal(where, calling_aet, rejection))
        if not _reachable(host, port, min(timeout, 5.0)):
            raise UserError(
                f"nothing answers at {host}:{port}: is the archive running? "
                "(`pacsctl lab status` shows the lab's DICOM endpoint)"
            )
        raise UserError(
            f"{where} aborted the association: it may not accept AE '{calling_aet}' "
            f"or any of the proposed SOP classes; {DECLARE_HINT}"
        )
    # Without TCP_NODELAY, Nagle's algorithm holds the last segment of each PDU
    # until the peer's delayed ACK: tens of milliseconds per instance.
    raw: Any = getattr(assoc.dul.socket, "socket", None)
    with suppress(AttributeError, OSError):
        raw.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    try:
        yield assoc
    finally:
        if assoc.is_established:
            assoc.release()


def _refusal(where: str, calling_aet: str, rejection: dict[str, int]) -> str:
    """One line for an A-ASSOCIATE-RJ: its reason, and what to do about it."""
    source, reason = rejection.get("source", 0), rejection.get("reason", 0)
    text = _REJECT_REASONS.get((source, reason), "no reason given")
    if (source, reason) == (1, 3):
        hint = f": calling AE title '{calling_aet}' is not declared — {DECLARE_HINT}"
    elif (source, reason) == (1, 7):
        hint = (
            f": check --aet (the archive's AE title); some archives answer this "
            f"when '{calling_aet}' is not declared there — {DECLARE_HINT}"
        )
    else:
        hint = f"; if '{calling_aet}' is not declared there, {DECLARE_HINT}"
    return f"{where} refused the association ({text}){hint}"


def _check_aet(aet: str, which: str) -> None:
    if not aet or len(aet) > 16 or not aet.isascii() or "\\" in aet:
        raise UserError(
            f"{which} AE title '{aet}' is not valid: 1 to 16 ASCII characters, no backslash"
        )


def _reachable(host: str, port: int, timeout: float) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


# ------------------------------------------------------------------------- echo


def echo(
    host: str,
    port: int,
    called_aet: str,
    calling_aet: str,
    *,
    tls: TLS = None,
    timeout: float = 30.0,
) -> float:
    """C-ECHO; return the round trip in seconds (association included)."""
    start = time.monotonic()
    with associate(
        host, port, called_aet, calling_aet, [(VERIFICATION, [])], tls=tls, timeout=timeout
    ) as assoc:
        status = assoc.send_c_echo()
        code = int(status.Status) if status and "Status" in status else None
    if code != 0:
        shown = "no response" if code is None else f"status 0x{code:04X}"
        raise UserError(f"{_where(host, port, called_aet, calling_aet)} answered C-ECHO: {shown}")
    return time.monotonic() - start


# ------------------------------------------------------------------------- send


@dataclass(frozen=True)
class FileInfo:
    path: Path
    sop_class: str
    sop_instance: str
    transfer_syntax: str
    size: int


def file_info(path: Path) -> FileInfo:
    try:
        meta = read_file_meta_info(path)
        return FileInfo(
            path=path,
            sop_class=str(meta.MediaStorageSOPClassUID),
            sop_instance=str(meta.MediaStorageSOPInstanceUID),
            transfer_syntax=str(meta.TransferSyntaxUID),
            size=path.stat().st_size,
        )
    except (InvalidDicomError, AttributeError, OSError) as exc:
        raise UserError(
            f"{path} is not a DICOM Part 10 file with a file meta header: {exc}"
        ) from exc


def expand_paths(paths: Iterable[Path]) -> list[Path]:
    """Files as given; folders are walked (every regular file, sorted), manifest.json skipped."""
    found: list[Path] = []
    for path in paths:
        if path.is_dir():
            found += sorted(p for p in path.rglob("*") if p.is_file() and p.name != "manifest.json")
        elif path.is_file():
            found.append(path)
        else:
            raise UserError(f"{path} does not exist")
    return found


def storage_contexts(infos: Iterable[FileInfo]) -> list[tuple[str, list[str]]]:
    """One presentation context per SOP class, offering each file's own transfer syntax."""
    wanted: dict[str, list[str]] = {}
    for info in infos:
        syntaxes = wanted.setdefault(info.sop_class, [])
        if info.transfer_syntax not in syntaxes:
            syntaxes.append(info.transfer_syntax)
    return list(wanted.items())


def send(
    paths: Sequence[Path],
    host: str,
    port: int,
    called_aet: str,
    calling_aet: str,
    *,
    tls: TLS = None,
    timeout: float = 60.0,
    progress: Callable[[InstanceResult], None] | None = None,
) -> SendReport:
    """C-STORE every file (folders are walked) over one association.

    Returns the status of each instance; a refused association raises ``UserError``.
    """
    infos = [file_info(p) for p in expand_paths(paths)]
    if not infos:
        raise UserError("nothing to send: no files under the given paths")
    report = SendReport()
    start = time.monotonic()
    with associate(
        host,
        port,
        called_aet,
        calling_aet,
        storage_contexts(infos),
        tls=tls,
        timeout=timeout,
    ) as assoc:
        for info in infos:
            result = store_one(assoc, info.path, info.sop_instance, info.size)
            report.results.append(result)
            if progress is not None:
                progress(result)
    report.seconds = time.monotonic() - start
    return report


def store_one(assoc: Association, path: Path, sop_instance: str, size: int) -> InstanceResult:
    """One C-STORE of a file, as it is on disk, on an established association."""
    try:
        status = assoc.send_c_store(path)
    except RuntimeError:
        return InstanceResult(path, sop_instance, None, "not sent: the association had ended", size)
    except (ValueError, AttributeError, OSError) as exc:  # no accepted context, bad file
        return InstanceResult(path, sop_instance, None, str(exc).splitlines()[0], size)
    if not status or "Status" not in status:
        reason = "no response: the peer aborted the association or timed out"
        return InstanceResult(path, sop_instance, None, reason, size)
    code = int(status.Status)
    error = "" if code == 0 or code >> 12 == 0xB else str(status.get("ErrorComment", ""))
    return InstanceResult(path, sop_instance, code, error, size)


# ------------------------------------------------------------------------- find


def find(
    host: str,
    port: int,
    called_aet: str,
    calling_aet: str,
    *,
    level: str = "STUDY",
    tls: TLS = None,
    timeout: float = 30.0,
    **keys: Any,
) -> list[Dataset]:
    """C-FIND in the Study Root model; ``keys`` are DICOM keywords and match values.

    Examples: ``PatientName="DUPRÉ*"``, ``AccessionNumber="PL0001"``,
    ``StudyDate="20240101-20241231"``. The query says ``ISO_IR 192`` (UTF-8), so
    accented names match. Returns the matches (pending responses' identifiers).
    """
    level = level.upper()
    if level not in RETURN_KEYS:
        raise UserError(f"level '{level}' is not supported: use STUDY, SERIES or IMAGE")
    query = Dataset()
    query.SpecificCharacterSet = "ISO_IR 192"
    query.QueryRetrieveLevel = level
    for keyword in RETURN_KEYS[level]:
        setattr(query, keyword, "")
    for keyword, value in keys.items():
        if tag_for_keyword(keyword) is None:
            raise UserError(f"'{keyword}' is not a DICOM keyword")
        try:
            setattr(query, keyword, value)
        except (ValueError, TypeError) as exc:
            raise UserError(f"'{keyword}' = {value!r} is not a valid query key: {exc}") from exc
    matches: list[Dataset] = []
    with associate(
        host,
        port,
        called_aet,
        calling_aet,
        [(STUDY_ROOT_FIND, [])],
        tls=tls,
        timeout=timeout,
    ) as assoc:
        for status, identifier in assoc.send_c_find(query, STUDY_ROOT_FIND):
            if not status or "Status" not in status:
                raise UserError(
                    f"{_where(host, port, called_aet, calling_aet)} did not answer the C-FIND"
                )
            code = int(status.Status)
            if code in (0xFF00, 0xFF01):
                if identifier is not None:
                    matches.append(identifier)
            elif code != 0:
                comment = status.get("ErrorComment", "")
                raise UserError(
                    f"{_where(host, port, called_aet, calling_aet)} refused the C-FIND: "
                    f"status 0x{code:04X} {comment}".rstrip()
                )
    return matches
