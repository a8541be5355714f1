"""Reading POST /generate: a JSON body, or multipart form fields with file uploads.

JSON stays the way to send text-only jobs; multipart carries the same fields as form
fields plus the files named in ``protocol.UPLOAD_FIELDS``. Both are validated by the same
pydantic model, so a field means the same thing either way.
"""

from __future__ import annotations

from fastapi import Request
from fastapi.exceptions import RequestValidationError
from pydantic import ValidationError
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException

from jobs.errors import UnsupportedMediaType, ValidationFailed
from serve_app.generate.protocol import UPLOAD_FIELDS, GenerateRequest
from serve_app.media_inputs import Upload

#: Form parts accepted in one request (starlette's parser limits; far above what a job needs).
MAX_FORM_FILES = 16
MAX_FORM_FIELDS = 64
#: Largest text field of a multipart body, bytes (a prompt is at most 10,000 characters, 40 KB
#: of UTF-8); the whole body is bounded as it streams in (serve_app/body_limit.py).
MAX_FIELD_BYTES = 64 * 2**10


def validate_model(model, data):
    """``model.model_validate(data)``, with pydantic's errors raised as FastAPI's (answered 422)."""
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise RequestValidationError(exc.errors(include_url=False, include_context=False)) from None


async def read_fields_and_files(request: Request, file_fields) -> tuple[dict, list[Upload]]:
    """The body as a dict of fields and a list of uploads (bytes in memory).

    JSON bodies give fields only; forms (multipart or urlencoded) give text fields and the
    files sent under the names in ``file_fields``.

    Raises:
        UnsupportedMediaType: the body is neither JSON nor a form (multipart or urlencoded) (415).
        ValidationFailed: invalid JSON, a form starlette's parser refuses (more than
            ``MAX_FORM_FILES`` files or ``MAX_FORM_FIELDS`` fields, a text field over
            ``MAX_FIELD_BYTES``), a file under a name not in ``file_fields``, or one of those
            names sent as text.
    """
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if content_type in ("application/json", ""):
        try:
            return await request.json(), []
        except ValueError:
            raise ValidationFailed("the body is not valid JSON", field="body") from None
    if content_type not in ("multipart/form-data", "application/x-www-form-urlencoded"):
        raise UnsupportedMediaType(
            f"{request.url.path} takes application/json or multipart/form-data, not {content_type}", field="body"
        )
    fields: dict[str, str] = {}
    uploads: list[Upload] = []
    try:
        form = await request.form(max_files=MAX_FORM_FILES, max_fields=MAX_FORM_FIELDS, max_part_size=MAX_FIELD_BYTES)
    except HTTPException as exc:  # starlette's parser: too many parts, a part too large, a broken body
        raise ValidationFailed(
            f"the form could not be read: {exc.detail} (at most {MAX_FORM_FILES} files, {MAX_FORM_FIELDS} "
            f"fields, {MAX_FIELD_BYTES // 1024} KiB per text field)",
            field="body",
        ) from None
    try:
        for name, value in form.multi_items():
            if isinstance(value, UploadFile):
                if name not in file_fields:
                    raise ValidationFailed(
                        f"{name!r} is not a file field; files go in {', '.join(file_fields)}", field=name
                    )
                uploads.append(Upload(field=name, data=await value.read(), filename=value.filename))
            elif name in file_fields:
                raise ValidationFailed(f"{name} must be sent as a file (curl -F {name}=@path)", field=name)
            else:
                fields[name] = value
    finally:
        await form.close()  # the uploads' spooled temporary files
    return fields, uploads


async def read_generate_request(request: Request) -> tuple[GenerateRequest, list[Upload]]:
    """Parse POST /generate into the validated fields and the uploaded files.

    Raises:
        RequestValidationError: a field is missing or invalid (answered 422 like any body error).
        UnsupportedMediaType, ValidationFailed: as ``read_fields_and_files``.
    """
    fields, uploads = await read_fields_and_files(request, UPLOAD_FIELDS)
    return validate_model(GenerateRequest, fields), uploads


def _inline_defs(schema: dict) -> dict:
    """``schema`` with each ``{"$ref": "#/$defs/X"}`` replaced by X itself and ``$defs`` dropped:
    inside an OpenAPI document ``#/$defs`` would point at the document's root, where nothing is.
    (GenerateRequest's nested models are not recursive, so inlining ends.)"""
    defs = schema.get("$defs", {})

    def inline(node):
        if isinstance(node, dict):
            ref = node.get("$ref", "")
            if ref.startswith("#/$defs/"):
                return inline(defs[ref.removeprefix("#/$defs/")])
            return {k: inline(v) for k, v in node.items() if k != "$defs"}
        if isinstance(node, list):
            return [inline(v) for v in node]
        return node

    return inline(schema)


def generate_openapi() -> dict:
    """The requestBody of POST /generate for the OpenAPI document: JSON, or multipart with files."""
    schema = _inline_defs(GenerateRequest.model_json_schema())
    multipart = {
        "type": "object",
        "required": schema.get("required", []),
        "properties": {
            **schema["properties"],
            **{
                name: {"type": "string", "format": "binary", "description": text}
                for name, text in UPLOAD_FIELDS.items()
            },
        },
    }
    multipart["properties"]["reference_images"] = {
        "type": "array",
        "items": {"type": "string", "format": "binary"},
        "description": UPLOAD_FIELDS["reference_images"],
    }
    return {
        "requestBody": {
            "required": True,
            "content": {"application/json": {"schema": schema}, "multipart/form-data": {"schema": multipart}},
        }
    }
