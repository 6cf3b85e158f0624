"""Entity-group transactions, encoded and decoded here instead of by ``TableClient.submit_transaction``.

The SDK builds the ``$batch`` request and parses its multipart response with
the standard library's ``email`` package, which compiles a regular expression
for every boundary: 2-3 ms of CPU per transaction, more than the rest of an
orchestration step. This module writes the same request (the format the SDK
sends, OData JSON with ``@odata.type`` annotations from the SDK's own entity
serializer) as plain text and reads the response with a few string splits. It
sends through the table client's own pipeline, so authentication, retries and
the storage headers are the SDK's.

Operations use the SDK's tuple form: ``("create" | "upsert" | "update" |
"delete", entity[, {"mode", "etag", "match_condition"}])``. A rejected
transaction raises ``TableTransactionError`` with the service's ``error_code``
and status, as the SDK does.

The format follows the Table service's documented batch layout (CRLF lines,
one changeset, ``Content-Transfer-Encoding: binary`` parts); it is exercised
against Azurite by the tests (no storage account is reachable from them).
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from typing import Any
from urllib.parse import quote

import orjson
from azure.core import MatchConditions
from azure.core.exceptions import HttpResponseError
from azure.core.rest import HttpRequest
from azure.data.tables import TableTransactionError, UpdateMode
from azure.data.tables._serialize import _add_entity_properties

_VERSION = "2019-02-02"  # the x-ms-version the SDK gives each operation of a transaction


def _key_url(base: str, entity: dict[str, Any]) -> str:
    pk = quote(entity["PartitionKey"].replace("'", "''"), safe="")
    rk = quote(entity["RowKey"].replace("'", "''"), safe="")
    return f"{base}(PartitionKey='{pk}',RowKey='{rk}')"


def _operation(base: str, op: Sequence[Any]) -> tuple[str, str, dict[str, str], bytes | None]:
    """(method, url, headers, body) of one operation."""
    kind, entity = op[0], op[1]
    options: dict[str, Any] = op[2] if len(op) > 2 else {}
    mode = options.get("mode", UpdateMode.MERGE)
    headers: dict[str, str] = {}
    if kind in ("update", "delete"):
        etag = options.get("etag")
        guarded = etag is not None and options.get("match_condition") == MatchConditions.IfNotModified
        headers["If-Match"] = etag if guarded else "*"
    if kind == "delete":
        return "DELETE", _key_url(base, entity), headers, None
    body = orjson.dumps(_add_entity_properties(entity))
    if kind == "create":
        headers["Prefer"] = "return-no-content"
        return "POST", base, headers, body
    if kind not in ("upsert", "update"):
        raise ValueError(f"unknown transaction operation {kind!r}")
    method = "PUT" if mode == UpdateMode.REPLACE else "PATCH"
    return method, _key_url(base, entity), headers, body


def _encode(base: str, ops: Sequence[Sequence[Any]], changeset: str) -> bytes:
    """The changeset part of the ``$batch`` body."""
    out: list[bytes] = []
    for index, op in enumerate(ops):
        method, url, headers, body = _operation(base, op)
        lines = [
            f"--{changeset}",
            "Content-Type: application/http",
            "Content-Transfer-Encoding: binary",
            f"Content-ID: {index}",
            "",
            f"{method} {url} HTTP/1.1",
        ]
        if body is not None:
            lines += ["Content-Type: application/json", f"Content-Length: {len(body)}"]
        lines += [
            f"x-ms-version: {_VERSION}",
            "DataServiceVersion: 3.0",
            "Accept: application/json;odata=nometadata",
        ]
        lines += [f"{name}: {value}" for name, value in headers.items()]
        out.append(("\r\n".join(lines) + "\r\n\r\n").encode())
        if body is not None:
            out.append(body)
        out.append(b"\r\n")
    out.append(f"--{changeset}--\r\n".encode())
    return b"".join(out)


def _parts(text: str, boundary: str) -> list[str]:
    """The parts of a multipart body between ``--boundary`` lines."""
    chunks = text.split(f"--{boundary}")
    return [c for c in chunks[1:] if not c.startswith("--")]


def _header(block: str, name: str) -> str | None:
    wanted = name.lower() + ":"
    for line in block.splitlines():
        if line.lower().startswith(wanted):
            return line.split(":", 1)[1].strip()
    return None


def _boundary(content_type: str) -> str:
    return content_type.split("boundary=", 1)[1].split(";", 1)[0].strip().strip('"')


def _decode(text: str, content_type: str) -> list[tuple[int, str | None, str]]:
    """(status, ETag, body) of each operation in a ``$batch`` response."""
    text = text.replace("\r\n", "\n")
    results: list[tuple[int, str | None, str]] = []
    for part in _parts(text, _boundary(content_type)):
        inner_type = _header(part.split("\n\n", 1)[0], "Content-Type") or ""
        if "boundary=" not in inner_type:
            continue
        for op in _parts(part, _boundary(inner_type)):
            sections = op.split("\n\n", 2)
            if len(sections) < 2:
                continue
            status_block = sections[1]
            status_line = status_block.split("\n", 1)[0]  # HTTP/1.1 204 No Content
            status = int(status_line.split(" ", 2)[1])
            body = sections[2].strip() if len(sections) > 2 else ""
            results.append((status, _header(status_block, "ETag"), body))
    return results


def _rejected(status: int, body: str, response: Any) -> TableTransactionError:
    code = None
    message = body
    try:
        error = orjson.loads(body)["odata.error"]
        code = error.get("code")
        message = error.get("message", {}).get("value", body)
    except (orjson.JSONDecodeError, KeyError, TypeError, AttributeError):
        pass
    exc = TableTransactionError(message=f"{code}: {message}" if code else message, response=response)
    exc.status_code = status
    exc.error_code = code  # type: ignore[assignment]
    return exc


async def submit_transaction(table: Any, ops: Sequence[Sequence[Any]]) -> list[dict[str, Any]]:
    """Commit ``ops`` (one partition, at most 100) atomically; each operation's ``{"etag": ...}``."""
    base = f"{table.scheme}://{table._primary_hostname}"
    batch = f"batch_{uuid.uuid4()}"
    changeset = f"changeset_{uuid.uuid4()}"
    body = b"".join(
        [
            f"--{batch}\r\nContent-Type: multipart/mixed; boundary={changeset}\r\n\r\n".encode(),
            _encode(f"{base}/{table.table_name}", ops, changeset),
            f"\r\n--{batch}--\r\n".encode(),
        ]
    )
    request = HttpRequest(
        "POST",
        f"{base}/$batch",
        headers={
            "x-ms-version": table.api_version,
            "DataServiceVersion": "3.0",
            "MaxDataServiceVersion": "3.0;NetFx",
            "Content-Type": f"multipart/mixed; boundary={batch}",
            "Accept": "application/json",
        },
        content=body,
    )
    # streamed, as the SDK does: the pipeline's content decoding knows no multipart
    response = await table._client._client.send_request(request, stream=True)
    text = (await response.read()).decode()
    if response.status_code != 202:
        raise _rejected(response.status_code, text, response)
    results = _decode(text, response.headers.get("Content-Type", ""))
    for status, _etag, body_text in results:
        if not 200 <= status < 300:
            raise _rejected(status, body_text, response)
    if len(results) != len(ops):
        raise HttpResponseError(
            f"transaction answered {len(results)} operations of {len(ops)}", response=response
        )
    return [{"etag": etag} if etag else {} for _status, etag, _body in results]
