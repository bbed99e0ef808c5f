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
from typing import Any

import requests

from .frame_check import png_problem

logger = logging.getLogger(__name__)

MAX_STATUS_IDS = 100  # job ids per GET /jobs?ids= (engine/api/limits.py)
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


class EngineClient:
    """One engine at ``base_url``; thread-safe for independent calls (one Session each)."""

    def __init__(self, base_url: str, token: str | None = None, timeout: float = 30.0) -> None:
        self.base_url = base_url.rstrip("/")
        self.token = token or None
        self.timeout = timeout
        self._no_batch_status = False  # set once the engine answered GET /jobs with 404/405

    # Transport ----------------------------------------------------------------

    def _request(self, method: str, path: str, *, ok: tuple[int, ...] = (200,), **kwargs: Any) -> requests.Response:
        headers = dict(kwargs.pop("headers", {}) or {})
        if self.token:
            headers["Authorization"] = f"Bearer {self.token}"
        url = self.base_url + path
        try:
            response = requests.request(method, url, headers=headers, timeout=self.timeout, **kwargs)
        except requests.ConnectionError as exc:
            raise EngineError(f"Viewfinder engine at {self.base_url} is not reachable: {START_HINT}",
                              code="unreachable") from exc
        except requests.Timeout as exc:
            raise EngineError(f"Viewfinder engine at {self.base_url} did not answer within {self.timeout:.0f} s; "
                              "it may be busy loading a model, try again", code="timeout") from exc
        if response.status_code in ok:
            return response
        raise self._error_from(response)

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

    def fetch_frame(self, job_id: str, frame: int, dest_path: str, attempts: int = 2) -> str:
        """Download a finished frame to ``dest_path`` atomically (temp file + rename).

        The file is checked to be a whole PNG before it takes the frame's name: a frame cut
        short in transit is fetched again, and one that stays broken raises EngineError
        (``damaged_frame``), so a take never counts a frame it cannot open.
        """
        folder = os.path.dirname(os.path.abspath(dest_path))
        os.makedirs(folder, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=folder, prefix=".tmp-", suffix=".png")
        os.close(fd)
        try:
            problem: str | None = None
            for _ in range(max(1, attempts)):
                response = self._request("GET", f"/jobs/{job_id}/frames/{frame}", stream=True)
                try:
                    with open(tmp, "wb") as f:
                        for chunk in response.iter_content(chunk_size=1 << 16):
                            f.write(chunk)
                except requests.RequestException as exc:
                    problem = f"the download broke off ({type(exc).__name__})"
                    continue
                problem = png_problem(tmp)
                if problem is None:
                    break
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
