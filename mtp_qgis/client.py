"""Small HTTP client for the backend API (docs/contract.md, section 2)."""
import hashlib
import hmac
import secrets
from urllib.parse import urlsplit

import requests

from .i18n import tr

# The backend's answer to GET /health?challenge=C is HMAC-SHA256(token, "<PROOF_PREFIX> C PORT") (backend/api.py).
PROOF_PREFIX = "mtp_qgis health"


class BackendError(Exception):
    """Anything that went wrong talking to the backend; the message is meant for the analyst."""


class BackendUnreachable(BackendError):
    pass


class BackendNotInstalled(BackendError):
    """No Python environment with the backend's packages exists yet (the dock offers to install one)."""


class BackendAuthError(BackendError):
    pass


class BackendIdentityError(BackendAuthError):
    """The server could not prove it knows the token: the token was not sent to it."""


class BackendRequestError(BackendError):
    def __init__(self, status_code, detail):
        super().__init__(tr("The backend refused the request (HTTP {status}): {detail}").format(
            status=status_code, detail=detail))
        self.status_code = status_code
        self.detail = detail


def _detail_of(response):
    """The server's `detail` as readable text (FastAPI validation errors come as a list)."""
    try:
        detail = response.json().get("detail", response.text)
    except ValueError:
        return response.text.strip() or response.reason
    if isinstance(detail, list):
        parts = []
        for item in detail:
            if isinstance(item, dict):
                where = ".".join(str(p) for p in item.get("loc", []))
                parts.append(f"{where}: {item.get('msg', item)}")
            else:
                parts.append(str(item))
        return "; ".join(parts)
    return str(detail)


class MtpClient:
    def __init__(self, url, token=None, token_source="the token file", timeout=15.0):
        self.url = url.rstrip("/")
        self.token = token
        self.token_source = token_source
        self.timeout = timeout

    def verify_identity(self):
        """Make sure the server at `url` knows the token (see _verify). Raises BackendIdentityError or
        BackendUnreachable."""
        self._request("GET", "/health", verify_only=True)

    def _verify(self, session):
        """The server proves it knows the token before the token is sent: after a backend dies, any local
        program may take its port. Asked before every authenticated request, on the same session (its kept-alive
        connection), so that a port taken over between two polls is caught too."""
        if not self.token:
            raise BackendIdentityError(f"There is no token ({self.token_source}) to check the backend at {self.url} with.")
        challenge = secrets.token_hex(16)
        answer = session.get(f"{self.url}/health", params={"challenge": challenge}, timeout=self.timeout)
        parts = urlsplit(self.url)
        port = parts.port or (443 if parts.scheme == "https" else 80)
        message = f"{PROOF_PREFIX} {challenge} {port}".encode()
        expected = hmac.new(self.token.encode(), message, hashlib.sha256).hexdigest()
        try:
            proof = answer.json().get("proof") if answer.status_code == 200 else None
        except (ValueError, AttributeError):
            proof = None
        if not isinstance(proof, str) or not hmac.compare_digest(proof, expected):
            raise BackendIdentityError(
                f"The program answering at {self.url} could not prove that it is the MTP backend holding your "
                f"token ({self.token_source}), so the token was not sent to it. It may be another program that "
                "took the port of a backend that stopped, a backend started with another token, or an older "
                "backend: stop it, or unset the configured backend URL so that the plugin starts its own.")

    def _request(self, method, path, json_body=None, authenticated=True, verify_only=False, timeout=None):
        headers = {}
        try:
            # One short-lived session per call: nothing stays open between polls, and
            # trust_env=False keeps a system proxy from intercepting 127.0.0.1.
            with requests.Session() as session:
                session.trust_env = False
                if (authenticated and self.token) or verify_only:
                    self._verify(session)
                    if verify_only:
                        return None
                    headers["Authorization"] = f"Bearer {self.token}"
                response = session.request(
                    method, self.url + path, json=json_body, headers=headers, timeout=timeout or self.timeout
                )
        except requests.exceptions.RequestException as exc:
            raise BackendUnreachable(
                tr("The MTP backend at {url} is not reachable ({error}). Check that it is running, or unset the "
                   "configured backend URL so the plugin starts one.").format(url=self.url,
                                                                              error=exc.__class__.__name__)
            ) from exc
        if response.status_code == 401:
            raise BackendAuthError(
                tr("The MTP backend at {url} rejected the access token (HTTP 401). The plugin reads the token from "
                   "{source}; it must match the backend's token ($MTP_QGIS_TOKEN or ~/.config/mtp_qgis/token on "
                   "the backend's machine).").format(url=self.url, source=self.token_source)
            )
        if response.status_code >= 400:
            raise BackendRequestError(response.status_code, _detail_of(response))
        try:
            return response.json()
        except ValueError as exc:
            raise BackendError(tr("The backend at {url} answered {path} with something that is not JSON.").format(
                url=self.url, path=path)) from exc

    def health(self):
        return self._request("GET", "/health", authenticated=False)

    def models(self):
        return self._request("GET", "/models")["models"]

    def model(self, model_id):
        models = self.models()
        for info in models:
            if info["id"] == model_id:
                return info
        known = ", ".join(sorted(m["id"] for m in models)) or tr("none")
        raise BackendRequestError(404, tr("unknown model '{model}'; the backend has: {known}").format(
            model=model_id, known=known))

    def submit(self, job_request):
        return self._request("POST", "/jobs", json_body=job_request)

    def job(self, job_id, wait=0.0, status=None):
        """The job; with `wait` seconds and the status last seen, the backend answers as soon as the status
        changes (the job ends), else after `wait` seconds with the job's progress then."""
        if wait and status:
            return self._request("GET", f"/jobs/{job_id}?wait={wait:g}&status={status}",
                                 timeout=self.timeout + wait)
        return self._request("GET", f"/jobs/{job_id}")

    def jobs(self):
        return self._request("GET", "/jobs")["jobs"]

    def cancel(self, job_id):
        return self._request("POST", f"/jobs/{job_id}/cancel")
