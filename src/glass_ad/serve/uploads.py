"""Request bodies → `Upload`s: a multipart form (one or more files) or the raw bytes of one image; a
malformed or unsupported body is the client's error (400, 415) with the reason."""

from __future__ import annotations

from pathlib import Path

from fastapi import HTTPException, Request
from starlette.concurrency import run_in_threadpool

from glass_ad.serve.images import Upload

__all__ = ["IMAGE_CONTENT_TYPES", "parse_multipart", "read_uploads"]

IMAGE_CONTENT_TYPES = ("application/octet-stream",)  # plus any image/*


class _TooManyFiles(ValueError):
    pass


def parse_multipart(body: bytes, content_type: str, scratch: Path, max_files: int) -> list[Upload]:
    from python_multipart.multipart import create_form_parser

    files: list[Upload] = []

    def on_file(part) -> None:
        if len(files) >= max_files:
            raise _TooManyFiles(f"more than {max_files} images in one request")
        handle = part.file_object
        handle.seek(0)
        raw_name = part.file_name
        name = raw_name.decode("utf-8", "replace") if isinstance(raw_name, bytes) else raw_name
        field_name = part.field_name.decode("utf-8", "replace") if isinstance(part.field_name, bytes) else part.field_name
        files.append(Upload(handle.read(), name or None, field_name))
        part.close()

    # Whole parts stay in memory (the body is already capped); nothing is spooled outside DATA/.
    config = {"MAX_MEMORY_FILE_SIZE": len(body) + 1, "UPLOAD_DIR": str(scratch)}
    parser = create_form_parser({"Content-Type": content_type.encode("latin-1")}, lambda _field: None, on_file, config)
    parser.write(body)
    parser.finalize()
    return files


async def read_uploads(request: Request, scratch: Path, *, field_name: str, max_files: int, filename: str | None) -> list[Upload]:
    content_type = request.headers.get("content-type", "")
    kind = content_type.split(";", 1)[0].strip().lower()
    body = await request.body()
    if kind == "multipart/form-data":
        try:
            files = await run_in_threadpool(parse_multipart, body, content_type, scratch, max_files)
        except _TooManyFiles as error:
            raise HTTPException(400, str(error)) from None
        except Exception as error:  # noqa: BLE001 - any parser complaint is the client's malformed body
            raise HTTPException(400, f"malformed multipart body: {error}") from None
        named = [f for f in files if f.part == field_name]
        if not named:
            raise HTTPException(400, f"the multipart body needs a file in the field '{field_name}'")
        return named
    if kind.startswith("image/") or kind in IMAGE_CONTENT_TYPES:
        if max_files > 1:
            raise HTTPException(415, "inspect-batch takes multipart/form-data with one 'files' part per image")
        return [Upload(body, filename)]
    raise HTTPException(
        415, f"unsupported content type {kind or '(none)'!r}: send multipart/form-data (field '{field_name}'), "
        "image/* or application/octet-stream",
    )  # fmt: skip
