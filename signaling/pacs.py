"""The hospital PACS over DICOMweb: QIDO-RS search and WADO-RS retrieve (and STOW-RS store, for
the annotations written back), with aiohttp.

Only the network is here; the queries, the answers and the multipart bodies are read by the pure
`imaging.dicomweb`. A retrieve is streamed: the body is read in chunks and each instance handed
on as soon as its part ends, so memory holds one instance (not the series) at a time.

Whatever the PACS says or fails to say becomes `PacsUnavailable` (HTTP 503) with our own
message: its error bodies may quote the patient data it was asked about, so they are never logged
or passed on.
"""

from __future__ import annotations

import asyncio
import json
import logging
import ssl
from collections.abc import AsyncGenerator
from typing import Any

import aiohttp

from core.errors import ConfigError, Unavailable
from imaging.dicomweb import (
    SERIES_FIELDS,
    MalformedMultipart,
    MultipartRelated,
    SearchRequest,
    SeriesMatch,
    StudyMatch,
    multipart_boundary,
)
from imaging.stow import StoreOutcome, stow_request
from signaling.settings import Settings

log = logging.getLogger("consilium.pacs")

SEARCH_LIMIT = 50
"""Studies (or series) one search returns at most."""
_CHUNK = 256 * 1024
_DICOM_JSON = "application/dicom+json"
_MULTIPART_DICOM = 'multipart/related; type="application/dicom"; transfer-syntax=*'


class PacsUnavailable(Unavailable):
    """The PACS could not be reached or did not answer as DICOMweb does (the room goes on)."""

    code = "pacs_unavailable"


class PacsNotConfigured(Unavailable):
    """This node has no `pacs_url`."""

    code = "pacs_not_configured"


def _read_secret(path: Any, what: str) -> str:
    try:
        with open(path, encoding="utf-8") as f:
            secret = f.read().strip()
    except OSError as exc:
        raise ConfigError(f"cannot read {what}: {exc.strerror}") from None
    if not secret:
        raise ConfigError(f"{what} is empty")
    return secret


class PacsClient:
    """One node's connection to the PACS (`pacs_url` and its credentials, read at start)."""

    def __init__(self, settings: Settings) -> None:
        if settings.pacs_url is None:
            raise PacsNotConfigured("no PACS is configured on this server")
        self.root = settings.pacs_url.rstrip("/")
        """The DICOMweb root every path is joined to."""
        self.timeout_s = settings.pacs_timeout_s
        """Longest silence from the PACS (connect, answer, next chunk)."""
        self.max_instance_bytes = settings.max_image_bytes
        """Largest instance accepted (as an upload)."""
        self._headers: dict[str, str] = {}
        if settings.pacs_token_file is not None:
            token = _read_secret(settings.pacs_token_file, "pacs_token_file")
            self._headers["Authorization"] = f"Bearer {token}"
        elif settings.pacs_username is not None:
            password = _read_secret(settings.pacs_password_file, "pacs_password_file")
            self._headers["Authorization"] = aiohttp.encode_basic_auth(
                settings.pacs_username, password
            )
        self._ssl: ssl.SSLContext | bool = True
        if settings.pacs_ca_file is not None:
            try:
                self._ssl = ssl.create_default_context(cafile=str(settings.pacs_ca_file))
            except (OSError, ssl.SSLError) as exc:
                raise ConfigError(f"cannot load pacs_ca_file: {exc}") from None
        self._session: aiohttp.ClientSession | None = None

    def _client(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(
                headers=self._headers,
                timeout=aiohttp.ClientTimeout(
                    total=None, connect=self.timeout_s, sock_read=self.timeout_s
                ),
                connector=aiohttp.TCPConnector(ssl=self._ssl, limit=8),
            )
        return self._session

    async def close(self) -> None:
        """Close the connections to the PACS (the node is stopping)."""
        if self._session is not None:
            await self._session.close()

    async def _json(self, path: str, params: list[tuple[str, str]]) -> list[dict[str, Any]]:
        """A QIDO-RS answer: a list of DICOM JSON objects (204 or empty: none)."""
        try:
            async with self._client().get(
                self.root + path, params=params, headers={"Accept": _DICOM_JSON}
            ) as response:
                self._check(response)
                if response.status == 204:
                    return []
                body = await response.read()
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            raise self._unreachable(exc) from None
        try:
            items = json.loads(body) if body.strip() else []
        except ValueError:
            raise PacsUnavailable("the PACS did not answer with DICOM JSON") from None
        if not isinstance(items, list):
            raise PacsUnavailable("the PACS did not answer with DICOM JSON")
        return [item for item in items if isinstance(item, dict)]

    @staticmethod
    def _check(response: aiohttp.ClientResponse) -> None:
        if response.status in (401, 403):
            raise PacsUnavailable("the PACS refused Consilium's credentials (ask IT)")
        if response.status == 404:
            raise PacsUnavailable("the PACS has no such study or series (or no DICOMweb there)")
        if response.status >= 300:
            raise PacsUnavailable(f"the PACS answered HTTP {response.status}")

    @staticmethod
    def _unreachable(exc: BaseException) -> PacsUnavailable:
        # The class only: an aiohttp message names the URL, which holds the query (patient id).
        log.warning("PACS unreachable: %s", type(exc).__name__)
        return PacsUnavailable("the PACS cannot be reached right now; try again shortly")

    async def search_studies(self, request: SearchRequest) -> list[StudyMatch]:
        """Studies matching `request` (QIDO-RS `GET /studies`), at most `SEARCH_LIMIT`."""
        items = await self._json("/studies", [*request.params(), ("limit", str(SEARCH_LIMIT))])
        found = (StudyMatch.from_json(item) for item in items[:SEARCH_LIMIT])
        return [match for match in found if match is not None]

    async def search_series(self, study_uid: str, series_uid: str = "") -> list[SeriesMatch]:
        """The series of a study (QIDO-RS `GET /studies/{uid}/series`), or the one named."""
        params = [("includefield", tag) for tag in SERIES_FIELDS]
        if series_uid:
            params.append(("SeriesInstanceUID", series_uid))
        params.append(("limit", str(SEARCH_LIMIT)))
        items = await self._json(f"/studies/{study_uid}/series", params)
        found = (SeriesMatch.from_json(item, study_uid) for item in items[:SEARCH_LIMIT])
        return [match for match in found if match is not None]

    async def retrieve(self, study_uid: str, series_uid: str = "") -> AsyncGenerator[bytes, None]:
        """Each instance of a series (or of a whole study) as a DICOM Part 10 file, in the
        order the PACS sends them (WADO-RS), one at a time as its part arrives."""
        path = f"/studies/{study_uid}" + (f"/series/{series_uid}" if series_uid else "")
        try:
            async with self._client().get(
                self.root + path, headers={"Accept": _MULTIPART_DICOM}
            ) as response:
                self._check(response)
                try:
                    parser = MultipartRelated(
                        multipart_boundary(response.headers.get("Content-Type", "")),
                        self.max_instance_bytes,
                    )
                except MalformedMultipart as exc:
                    raise PacsUnavailable(str(exc)) from None
                async for chunk in response.content.iter_chunked(_CHUNK):
                    for instance in self._feed(parser, chunk):
                        yield instance
                if not parser.finished:
                    raise PacsUnavailable("the PACS's answer ended in the middle of an instance")
        except (aiohttp.ClientError, TimeoutError, OSError, asyncio.IncompleteReadError) as exc:
            raise self._unreachable(exc) from None

    # -- write-back (STOW-RS): what `signaling.http.routes.pacs_store` needs -----------------

    async def instance_metadata(
        self, study_uid: str, series_uid: str, sop_instance_uid: str
    ) -> dict[str, Any]:
        """One instance's header as the PACS holds it (WADO-RS metadata, DICOM JSON)."""
        path = f"/studies/{study_uid}/series/{series_uid}/instances/{sop_instance_uid}/metadata"
        items = await self._json(path, [])
        if not items:
            raise PacsUnavailable("the PACS has no such instance (any more)")
        return items[0]

    async def store(self, instances: list[bytes]) -> StoreOutcome:
        """Store Part 10 instances in the PACS (STOW-RS `POST {root}/studies`); what it kept.
        Its answer's body is read as DICOM JSON only, never logged."""
        content_type, body = stow_request(instances)
        try:
            async with self._client().post(
                self.root + "/studies",
                data=body,
                headers={"Content-Type": content_type, "Accept": _DICOM_JSON},
            ) as response:
                # 409: every instance refused, 202: some; the body says which (PS3.18 10.5.3).
                if response.status not in (409, 202):
                    self._check(response)
                answer = await response.read()
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            raise self._unreachable(exc) from None
        try:
            return StoreOutcome.from_json(json.loads(answer) if answer.strip() else {})
        except ValueError:
            raise PacsUnavailable("the PACS did not answer the store with DICOM JSON") from None

    @staticmethod
    def _feed(parser: MultipartRelated, chunk: bytes) -> list[bytes]:
        try:
            return parser.feed(chunk)
        except MalformedMultipart as exc:
            raise PacsUnavailable(str(exc)) from None
