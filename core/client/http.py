"""HTTP client for the Viewfinder engine (engine/API.md).

Runs in Blender's Python: stdlib and ``requests`` only, never bpy, torch or ``engine``.
Every failure is an ``EngineError`` whose message a Blender user can act on. Methods
block on the network, so call them from a worker thread, not from the UI thread.
"""

from __future__ import annotations

import hashlib
import logging
import os
import tempfile
import time
from typing import Any

import requests

from .downloads import (
    DownloadRefused,
    frame_byte_limit,
    png_frame_problem,
    png_head_problem,
    read_capped,
    stream_to_file,
)
from .frame_check import png_problem
from .watchdog import Watch, WatchedAdapter

logger = logging.getLogger(__name__)

MAX_STATUS_IDS = 100  # job ids per GET /jobs?ids= (engine/api/limits.py)
# Every answer is bounded (core/client/downloads.py): a JSON answer in bytes (100 statuses of 10,000-frame
# jobs fit many times over), any answer in total time, a frame by the size the job asked for.
MAX_JSON_ANSWER_BYTES = 32 * 1024 * 1024
MAX_FRAME_BYTES = 512 * 1024 * 1024  # a frame of unknown size (4096² 16-bit RGBA is 134 MB)
ANSWER_DEADLINE_S = 120.0
FRAME_READ_TIMEOUT_S = 10.0  # no byte of a frame for this long: the download has stalled
START_HINT = "start it with `python -m engine serve` from the extension folder or check Preferences ▸ Engine"


class EngineError(Exception):
    """An engine failure: ``code`` is machine-readable, ``field`` names the request field."""

    def __init__(self, message: str, code: str = "engine_error", field: str | None = None,
                 status: int | None = None, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.code = code
        self.field = field
        self.status = status
        self.retry_after = retry_after  # seconds, from a 429's Retry-After: wait, then ask again

    @property
    def quota_full(self) -> bool:
        """The engine's job quota is reached (429): not a failure, a request to submit later."""
        return self.status == 429

    def __str__(self) -> str:
        return self.message


def retry_after_s(header: str | None, default: float = 1.0, longest: float = 60.0) -> float:
    """A Retry-After header in seconds (delta-seconds; an HTTP date or nonsense: ``default``),
    clamped to [0.1, ``longest``] so a hostile engine cannot park the client."""
    try:
        value = float(header) if header is not None else default
    except ValueError:
        value = default
    if value != value:  # NaN
        value = default
    return min(max(value, 0.1), longest)


def plain_http_warning(base_url: str, token: str | None) -> str | None:
    """A warning when the token would cross the network in clear text (http to another machine)."""
    from urllib.parse import urlsplit

    parts = urlsplit(base_url)
    host = (parts.hostname or "").lower()
    loopback = host in ("localhost", "::1") or host.startswith("127.")
    if token and parts.scheme == "http" and not loopback:
        return (f"The engine token is sent in clear text to {host} (http://): anyone on the network can read it. "
                "Use https:// (the engine's --tls-cert, or a TLS reverse proxy)")
    return None


def _tls_reason(exc: BaseException) -> str:
    text = str(exc)
    for known in ("CERTIFICATE_VERIFY_FAILED", "WRONG_VERSION_NUMBER", "hostname", "self-signed", "expired"):
        if known.lower() in text.lower():
            return known.replace("_", " ").lower()
    return "handshake failed"


class EngineClient:
    """One engine at ``base_url``; thread-safe for independent calls (one Session each)."""

    def __init__(self, base_url: str, token: str | None = None, timeout: float = 30.0) -> None:
        self.base_url = base_url.rstrip("/")
        self.token = token or None
        self.timeout = timeout
        self.warning = plain_http_warning(self.base_url, self.token)  # shown once by the run that connects
        if self.warning:
            logger.warning("%s", self.warning)
        self._no_batch_status = False  # set once the engine answered GET /jobs with 404/405

    # Transport ----------------------------------------------------------------

    def _request(self, method: str, path: str, *, ok: tuple[int, ...] = (200,), stream: bool = False,
                 timeout: Any = None, deadline: float | None = None, should_cancel: Any = None,
                 **kwargs: Any) -> requests.Response:
        """One request. Redirects are not followed (the body and token would go to another host);
        the answer is read here, within MAX_JSON_ANSWER_BYTES and ANSWER_DEADLINE_S, unless
        ``stream`` (then the caller reads it, bounded) and the status is one of ``ok``. Its head
        must arrive by ``deadline`` too (ANSWER_DEADLINE_S from now), and ``should_cancel()``
        ends the wait for it (core/client/watchdog.py): socket timeouts alone let a dripped
        head hold a request forever."""
        headers = dict(kwargs.pop("headers", {}) or {})
        if self.token:
            headers["Authorization"] = f"Bearer {self.token}"
        url = self.base_url + path
        if deadline is None:
            deadline = time.monotonic() + ANSWER_DEADLINE_S
        what = f"{method} {path.split('?')[0]}"
        try:
            with Watch(deadline, should_cancel) as watch:
                try:
                    response = self._send(method, url, headers=headers, timeout=timeout or self.timeout, **kwargs)
                    if not (stream and response.status_code in ok):
                        try:
                            response._content = read_capped(response, limit=MAX_JSON_ANSWER_BYTES,
                                                            deadline=deadline)
                        except DownloadRefused as exc:
                            response.close()
                            raise EngineError(f"The Viewfinder engine at {self.base_url} sent an answer to {what} "
                                              f"that was not read: {exc}", code="bad_answer") from None
                except Exception:
                    if watch.fired is None:
                        raise
                self._check_watch(watch, what)
        except requests.exceptions.SSLError as exc:
            raise EngineError(f"The TLS connection to the Viewfinder engine at {self.base_url} failed "
                              f"({_tls_reason(exc)}): check its certificate, or set REQUESTS_CA_BUNDLE to the "
                              "engine's certificate before starting Blender", code="tls_error") from exc
        except requests.ConnectionError as exc:
            raise EngineError(f"Viewfinder engine at {self.base_url} is not reachable: {START_HINT}",
                              code="unreachable") from exc
        except requests.Timeout as exc:
            raise EngineError(f"Viewfinder engine at {self.base_url} did not answer within {self.timeout:.0f} s; "
                              "it may be busy loading a model, try again", code="timeout") from exc
        if response.status_code in ok:
            return response
        if 300 <= response.status_code < 400:
            target = response.headers.get("Location", "")[:200]
            raise EngineError(f"The Viewfinder engine at {self.base_url} answered with a redirect to {target!r}, "
                              "which is not followed (it would take the token and the job elsewhere): set the "
                              "engine URL to the address the engine really serves", code="redirect",
                              status=response.status_code)
        raise self._error_from(response)

    @staticmethod
    def _send(method: str, url: str, **kwargs: Any) -> requests.Response:
        """``requests.request``, through connections the thread's Watch can shut down."""
        with requests.Session() as session:
            adapter = WatchedAdapter()
            session.mount("http://", adapter)
            session.mount("https://", adapter)
            return session.request(method, url, allow_redirects=False, stream=True, **kwargs)

    def _check_watch(self, watch: Watch, what: str) -> None:
        if watch.fired == "cancelled":
            raise EngineError(f"The answer to {what} from the Viewfinder engine at {self.base_url}: cancelled",
                              code="cancelled")
        if watch.fired is not None:
            raise EngineError(f"The Viewfinder engine at {self.base_url} did not send its answer to {what} in time "
                              f"({max(0.0, watch.deadline - watch.started):.3g} s); it was not read",
                              code="timeout")

    def _error_from(self, response: requests.Response) -> EngineError:
        status = response.status_code
        try:
            error = response.json().get("error") or {}
        except ValueError:
            error = {}
        message = error.get("message") or response.text[:300] or f"HTTP {status}"
        code = error.get("code") or f"http_{status}"
        if status == 401:
            message = (f"The Viewfinder engine at {self.base_url} refused the token: set the engine's token in "
                       "Preferences ▸ Engine or VIEWFINDER_ENGINE_TOKEN")
            code = "unauthorized"
        elif status >= 500 and code.startswith("http_"):
            message = f"The Viewfinder engine at {self.base_url} failed (HTTP {status}): {message}"
        retry_after = retry_after_s(response.headers.get("Retry-After")) if status == 429 else None
        return EngineError(message, code=code, field=error.get("field"), status=status, retry_after=retry_after)

    # API ------------------------------------------------------------------------

    def health(self) -> dict[str, Any]:
        return self._request("GET", "/health").json()

    def limits(self) -> dict[str, Any] | None:
        """The engine's published limits (``GET /limits``: ``job_quota``, ``jobs_active``, the
        request bounds); None from an engine that predates the route (404/405)."""
        try:
            answer = self._request("GET", "/limits").json()
        except EngineError as exc:
            if exc.status in (404, 405):
                return None
            raise
        return answer if isinstance(answer, dict) else None

    def has_blob(self, sha: str) -> bool:
        return self._request("HEAD", f"/blobs/{sha}", ok=(200, 404)).status_code == 200

    def upload_blob(self, data: bytes) -> str:
        """Upload ``data`` unless the engine has it already; returns its sha256."""
        sha = hashlib.sha256(data).hexdigest()
        if not self.has_blob(sha):
            self._request("PUT", f"/blobs/{sha}", ok=(200, 201), data=data,
                          headers={"Content-Type": "application/octet-stream"})
        return sha

    def submit(self, job: dict[str, Any]) -> str:
        """Queue a job (see API.md for the body); returns its id."""
        return str(self._request("POST", "/jobs", ok=(202,), json=job).json()["id"])

    def submit_full(self, job: dict[str, Any]) -> dict[str, Any]:
        """Like ``submit`` but returns the whole answer (id, status, cached_frames)."""
        return self._request("POST", "/jobs", ok=(202,), json=job).json()

    def status(self, job_id: str) -> dict[str, Any]:
        return self._request("GET", f"/jobs/{job_id}").json()

    def statuses(self, job_ids: list[str]) -> dict[str, dict[str, Any]] | None:
        """Several jobs' statuses in one request (``GET /jobs?ids=``); None from an engine that
        predates it (then poll each job with ``status``). A job the engine does not know is left
        out: its own ``status`` call says why."""
        if self._no_batch_status or not job_ids:
            return None
        found: dict[str, dict[str, Any]] = {}
        for start in range(0, len(job_ids), MAX_STATUS_IDS):
            chunk = job_ids[start:start + MAX_STATUS_IDS]
            try:
                answer = self._request("GET", "/jobs", params={"ids": ",".join(chunk)}).json()
            except EngineError as exc:
                if exc.status in (404, 405):  # an older engine: no such route
                    self._no_batch_status = True
                    return None
                raise
            found.update(answer.get("jobs") or {})
        return found

    def cancel(self, job_id: str) -> dict[str, Any]:
        return self._request("POST", f"/jobs/{job_id}/cancel").json()

    def whoami(self) -> dict[str, Any]:
        """Who the engine takes this client's token for; 401 (EngineError) when it does not know it."""
        return self._request("GET", "/whoami").json()

    def fetch_frame(self, job_id: str, frame: int, dest_path: str, attempts: int = 2,
                    size: tuple[int, int] | None = None, should_cancel: Any = None) -> str:
        """Download a finished frame to ``dest_path`` atomically (temp file + rename).

        The file is checked to be a whole PNG before it takes the frame's name: a frame cut
        short in transit is fetched again, and one that stays broken raises EngineError
        (``damaged_frame``), so a take never counts a frame it cannot open. With ``size`` (the
        job's width, height) the frame must be exactly that, checked from its first bytes and
        then whole (core/client/downloads.py) before Blender ever decodes it, and its download is
        capped to what such a PNG can take. Every download is capped in total time, and
        ``should_cancel()`` (Esc) ends it; neither is tried again.
        """
        folder = os.path.dirname(os.path.abspath(dest_path))
        os.makedirs(folder, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=folder, prefix=".tmp-", suffix=".png")
        os.close(fd)
        limit = frame_byte_limit(*size) if size else MAX_FRAME_BYTES
        check_head = (lambda head: png_head_problem(head, size)) if size else None
        deadline = time.monotonic() + max(ANSWER_DEADLINE_S, limit / (1 << 20))  # at least 1 MiB/s past 2 min
        try:
            problem: str | None = None
            for _ in range(max(1, attempts)):
                response = self._request("GET", f"/jobs/{job_id}/frames/{frame}", stream=True,
                                         timeout=(self.timeout, FRAME_READ_TIMEOUT_S), deadline=deadline,
                                         should_cancel=should_cancel)
                try:
                    with open(tmp, "wb") as f:
                        stream_to_file(response, f, limit=limit, deadline=deadline, should_cancel=should_cancel,
                                       what=f"frame {frame}", check_head=check_head)
                except DownloadRefused as exc:
                    # Too large, of the wrong size, too slow or cancelled: fetching it again would not help.
                    raise EngineError(f"Frame {frame} from the engine was refused: {exc}; it was not saved",
                                      code="frame_refused" if exc.reason != "cancelled" else "cancelled") from None
                except requests.RequestException as exc:
                    problem = f"the download broke off ({type(exc).__name__})"
                    continue
                finally:
                    response.close()
                problem = png_frame_problem(tmp, size) if size else png_problem(tmp)
                if problem is None:
                    break
                if size and ("pixels" in problem or "header" in problem):
                    break  # a frame of the wrong size is not damaged in transit: not fetched again
                logger.warning("Frame %d of job %s arrived damaged (%s); fetching it again", frame, job_id, problem)
            if problem is not None:
                raise EngineError(f"Frame {frame} from the engine could not be opened ({problem}); it was not "
                                  "saved. Generate again to fetch it again.", code="damaged_frame")
            os.replace(tmp, dest_path)
        except BaseException:
            if os.path.exists(tmp):
                os.unlink(tmp)
            raise
        return dest_path
