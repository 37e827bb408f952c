"""A real Orthanc PACS as a child process of a test, and dcmtk ``storescu`` posing as a modality.

Why a real Orthanc: the round trip predictd exists for (modality → PACS → auto-forward → predictd → SR back to the
PACS) depends on PACS behaviour no mock reproduces: stable-study events, Lua auto-forward, transfer-syntax
negotiation of the PACS's own SCU, and the SR coming back into the same study without re-triggering a forward.

Usage::

    from tests.e2e.orthanc import OrthancServer, storescu

    with OrthancServer(tmp_path / "orthanc", predictd=("PREDICTD", predictd_port), stable_age=1) as pacs:
        storescu(pacs.dicom_port, pacs.aet, [CR_JLSL])          # a modality sends to the PACS
        ...                                                           # the Lua script forwards once stable
        srs = pacs.find_instances("SR")                               # Orthanc ids of SRs stored in the PACS
        tags = pacs.simplified_tags(srs[0])                           # {"Manufacturer": "predictd", ...}
        raw = pacs.instance_file(srs[0])                              # the stored DICOM file, as bytes

Waiting without sleeps: ``wait_study_id(study_uid)``, ``is_stable(study_id)``, ``is_forwarded(instance_id)`` (the
Lua script's ForwardedToPredictd marker) and ``forward_summaries(study_id)`` (one ``"sent N, skipped M"`` entry per
run of the script, ``"FAILED to send ..."`` when predictd refused or was down) are meant for ``wait_until``.

Attributes a caller needs: ``aet`` (Orthanc's AE title, "ORTHANC"), ``dicom_port`` and ``http_port`` (free ports on
127.0.0.1), ``root`` (everything Orthanc writes: config, storage, index, log), ``log_path``. Configure predictd's
send destination as AE ``pacs.aet`` at ``127.0.0.1:pacs.dicom_port``. Orthanc accepts C-STORE from any calling AE
(``DicomAlwaysAllowStore`` stays at its default) but checks the called AE title.

Orthanc 1.10 listens on every interface and cannot be told otherwise: the ports are chosen free, remote access is
off, and tests only talk to it on 127.0.0.1. Its own DICOM SCU (the forward) and SCP run with ``TCP_NODELAY=1``
because Debian's dcmtk otherwise stalls ~40 ms per C-STORE.
"""

from __future__ import annotations

import functools
import json
import os
import subprocess
import urllib.error
import urllib.request
from pathlib import Path
from types import TracebackType
from typing import Any

from tests.support import free_port, wait_until

FORWARD_SCRIPT = Path(__file__).resolve().parents[2] / "deploy" / "orthanc" / "forward.lua"
"""Lua auto-forward of stable studies to the PREDICTD modality; logs one ``predictd-forward: study <id>: ...`` line
per stable event."""

FORWARD_LOG_PREFIX = "predictd-forward: study "
FORWARDED_METADATA = "ForwardedToPredictd"
NODELAY_ENV = {**os.environ, "TCP_NODELAY": "1"}
"""Environment for every dcmtk-based process (storescu, storescp, Orthanc): Nagle off, see pacs-peers.md."""

_PLUGIN_PACKAGES = {"libOrthancGdcm.so": "orthanc-gdcm", "libOrthancDicomWeb.so": "orthanc-dicomweb"}

STORESCU_SYNTAX_FLAGS = {
    "1.2.840.10008.1.2.4.80": "-xt",  # JPEG-LS lossless
    "1.2.840.10008.1.2.4.81": "-xu",  # JPEG-LS near-lossless
    "1.2.840.10008.1.2.4.70": "-xs",  # JPEG lossless SV1
    "1.2.840.10008.1.2.4.90": "-xv",  # JPEG 2000 lossless
    "1.2.840.10008.1.2.4.91": "-xw",  # JPEG 2000
    "1.2.840.10008.1.2.5": "-xr",  # RLE
    "1.2.840.10008.1.2.4.50": "-xy",  # JPEG baseline
    "1.2.840.10008.1.2.4.51": "-xx",  # JPEG extended
}
"""storescu sends a compressed file as-is only when it proposes the file's own transfer syntax; without the flag it
tries to decompress and fails. JPEG-LS lossless is ``-xt``."""


@functools.cache
def orthanc_plugins() -> list[str]:
    """Paths of the GDCM and DICOMweb plugins, from ``dpkg -L``: Debian's layout is the only one supported here.

    GDCM is needed to transcode JPEG-LS/J2K when a receiver does not accept the file's syntax; DICOMweb gives the
    tests /dicom-web. Missing packages are an error, not a silent smaller Orthanc.
    """
    listing = subprocess.run(
        ["dpkg", "-L", *sorted(set(_PLUGIN_PACKAGES.values()))], capture_output=True, text=True, check=True
    ).stdout.split()
    found: list[str] = []
    for name, package in _PLUGIN_PACKAGES.items():
        paths = [p for p in listing if Path(p).name == name and Path(p).is_file()]
        if not paths:
            raise FileNotFoundError(f"{name} not installed by {package} (dpkg -L {package})")
        found.append(paths[0])
    return found


def storescu(port: int, aec: str, files: list[Path], extra_args: list[str] | None = None) -> str:
    """C-STORE ``files`` to ``aec`` at 127.0.0.1:``port`` with dcmtk storescu, as a modality would; returns its output.

    The transfer syntax to propose is read from each file's meta header so compressed files go as-is (one flag per
    call, so send files of one compressed syntax together). Raises with storescu's full ``-v`` output on failure:
    a non-zero exit, or an ``E:`` line (a refused C-STORE does not always change the exit code).
    """
    import pydicom

    syntaxes = {str(pydicom.dcmread(f, stop_before_pixels=True).file_meta.TransferSyntaxUID) for f in files}
    flags = sorted({STORESCU_SYNTAX_FLAGS[s] for s in syntaxes if s in STORESCU_SYNTAX_FLAGS})
    if len(flags) > 1:
        raise ValueError(f"storescu proposes one compressed syntax per call; got {flags} for {files}")
    cmd = ["storescu", "-v", "-aec", aec, *flags, *(extra_args or []), "127.0.0.1", str(port), *map(str, files)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120, env=NODELAY_ENV)
    output = proc.stdout + proc.stderr
    if proc.returncode != 0 or "E: " in output:
        raise RuntimeError(f"storescu failed ({proc.returncode}): {' '.join(cmd)}\n{output}")
    return output


class OrthancError(RuntimeError):
    """A REST call to Orthanc failed; the message carries the status and Orthanc's JSON error body."""


class OrthancServer:
    """Orthanc 1.10 started from a JSON config in ``root``; a context manager that stops it on exit.

    ``predictd=(ae_title, port)`` adds the PREDICTD modality and the Lua auto-forward script; without it Orthanc only
    stores. ``stable_age`` is the seconds of quiet before a study is stable (Orthanc's default of 60 is too slow for
    tests). REST helpers return parsed JSON and raise :class:`OrthancError` with Orthanc's error body.
    """

    def __init__(
        self,
        root: Path,
        *,
        predictd: tuple[str, int] | None = None,
        stable_age: int = 2,
        aet: str = "ORTHANC",
        startup_timeout: float = 60.0,
    ) -> None:
        self.root = root
        self.aet = aet
        self.predictd = predictd
        self.stable_age = stable_age
        self.startup_timeout = startup_timeout
        self.dicom_port = free_port()
        self.http_port = free_port()
        while self.http_port == self.dicom_port:
            self.http_port = free_port()
        self.base_url = f"http://127.0.0.1:{self.http_port}"
        self.config_path = root / "orthanc.json"
        self.log_path = root / "orthanc.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def config(self) -> dict[str, Any]:
        """The configuration written to ``orthanc.json``; see pacs-peers.md for why each key matters."""
        cfg: dict[str, Any] = {
            "Name": "predictd-e2e",
            "StorageDirectory": str(self.root / "storage"),
            "IndexDirectory": str(self.root / "index"),
            "DicomAet": self.aet,
            "DicomPort": self.dicom_port,
            "HttpPort": self.http_port,
            "RemoteAccessAllowed": False,
            "AuthenticationEnabled": False,
            "DicomCheckCalledAet": True,
            "StableAge": self.stable_age,
            "UserMetadata": {FORWARDED_METADATA: 1024},
            "Plugins": orthanc_plugins(),
            "ConcurrentJobs": 2,
            "SaveJobs": False,
            "DicomModalities": {},
            "LuaScripts": [],
        }
        if self.predictd is not None:
            ae_title, port = self.predictd
            cfg["DicomModalities"] = {"PREDICTD": {"AET": ae_title, "Host": "127.0.0.1", "Port": port}}
            cfg["LuaScripts"] = [str(FORWARD_SCRIPT)]
        return cfg

    # --- lifecycle -------------------------------------------------------------------------------------------------

    def __enter__(self) -> OrthancServer:
        self.root.mkdir(parents=True, exist_ok=True)
        self.config_path.write_text(json.dumps(self.config(), indent=2))
        with open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen(
                ["Orthanc", str(self.config_path)],
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=self.root,
                env=NODELAY_ENV,
            )
        try:
            wait_until(self._answers, timeout=self.startup_timeout, interval=0.2, what="Orthanc's REST API")
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    def stop(self) -> None:
        """SIGTERM (Orthanc shuts down cleanly, flushing its index), then SIGKILL if it hangs."""
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.terminate()
        try:
            self.proc.wait(20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(10)

    def _answers(self) -> bool:
        if self.proc is not None and self.proc.poll() is not None:
            raise RuntimeError(f"Orthanc exited with {self.proc.returncode}:\n{self.log_text()}")
        try:
            self.rest_get("/system")
        except (OSError, OrthancError):
            return False
        return True

    def log_text(self) -> str:
        """Orthanc's stdout+stderr so far (Lua ``print`` lines appear as ``Lua says: ...``)."""
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    # --- REST ------------------------------------------------------------------------------------------------------

    def _request(self, method: str, path: str, body: bytes | None = None) -> bytes:
        req = urllib.request.Request(self.base_url + path, data=body, method=method)
        if body is not None:
            req.add_header("Content-Type", "application/json")
        try:
            with urllib.request.urlopen(req, timeout=60) as resp:
                data: bytes = resp.read()
                return data
        except urllib.error.HTTPError as exc:
            detail = exc.read().decode(errors="replace")
            raise OrthancError(f"{method} {path} → HTTP {exc.code}: {detail}") from exc

    def rest_get(self, path: str) -> Any:
        """GET ``path`` (e.g. ``/studies?expand``) and parse the JSON answer."""
        return json.loads(self._request("GET", path))

    def rest_post(self, path: str, body: Any) -> Any:
        """POST ``body`` as JSON (a ``str`` is sent as-is) and parse the JSON answer (``None`` when empty)."""
        payload = body.encode() if isinstance(body, str) else json.dumps(body).encode()
        data = self._request("POST", path, payload)
        return json.loads(data) if data.strip() else None

    def rest_put(self, path: str, body: str) -> None:
        """PUT a plain string, e.g. a metadata value."""
        self._request("PUT", path, body.encode())

    def find_instances(self, modality: str) -> list[str]:
        """Orthanc ids of all stored instances of a series ``modality`` ("CR", "SR", ...)."""
        ids: list[str] = self.rest_post("/tools/find", {"Level": "Instance", "Query": {"Modality": modality}})
        return ids

    def simplified_tags(self, instance_id: str) -> dict[str, Any]:
        """The instance's tags as ``{"Keyword": value}``, sequences as lists of dicts."""
        tags: dict[str, Any] = self.rest_get(f"/instances/{instance_id}/simplified-tags")
        return tags

    def instance_file(self, instance_id: str) -> bytes:
        """The DICOM file exactly as Orthanc stored it (``pydicom.dcmread(io.BytesIO(...))``)."""
        return self._request("GET", f"/instances/{instance_id}/file")

    def study_id(self, study_uid: str) -> str | None:
        """Orthanc's id of the study with this StudyInstanceUID, or None while it is not stored."""
        hits: list[dict[str, Any]] = self.rest_post("/tools/lookup", study_uid) or []
        for hit in hits:
            if hit.get("Type") == "Study":
                return str(hit["ID"])
        return None

    def wait_study_id(self, study_uid: str, timeout: float = 30.0) -> str:
        """Orthanc's id of a study that is being stored or forwarded here; polls until it exists, then never None."""
        found = wait_until(lambda: self.study_id(study_uid), timeout=timeout, interval=0.1, what=f"study {study_uid}")
        assert found is not None  # wait_until only returns truthy values
        return found

    def is_stable(self, study_id: str) -> bool:
        """Whether StableAge seconds have passed since the study last received an instance."""
        return bool(self.rest_get(f"/studies/{study_id}")["IsStable"])

    def is_forwarded(self, instance_id: str) -> bool:
        """Whether the Lua script marked the instance as sent to predictd (ForwardedToPredictd metadata)."""
        names: list[str] = self.rest_get(f"/instances/{instance_id}/metadata")
        return FORWARDED_METADATA in names

    def forward_summaries(self, study_id: str) -> list[str]:
        """What each run of the Lua script did for this study, oldest first: ``"sent 1, skipped 0"``, ...

        One entry per stable event, printed after the synchronous send finished, so a test can wait for "the
        callback ran again" instead of sleeping.
        """
        marker = FORWARD_LOG_PREFIX + study_id + ": "
        return [line.split(marker, 1)[1].strip() for line in self.log_text().splitlines() if marker in line]
