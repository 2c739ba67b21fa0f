"""`POST /jobs/clean`'s multipart body, read once as it arrives.

The `file` part's bytes go from the request straight to storage (`src.jobs.uploads.Upload`:
size limit and sha256 as they stream); the other parts are small text fields, kept in
memory up to MAX_TEXT_BYTES each. The parser is python-multipart's streaming one, the
one Starlette's `request.form()` runs, with Starlette's rules and messages (at most one
file part and ten text parts, a `name` on every part, "Invalid multipart data." for a
body it cannot parse) but without its spooling: it wrote each file to a temporary file,
which the submission then copied into storage.
"""

from __future__ import annotations

import codecs
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from python_multipart.exceptions import FormParserError
from python_multipart.multipart import MultipartParser, MultipartState, parse_options_header

from src.api.schemas import FilePart
from src.jobs.uploads import Upload

if TYPE_CHECKING:
    from python_multipart.multipart import MultipartCallbacks

FILE = "file"
MAX_FILES = 1
MAX_FIELDS = 10
# options, output_format and callback_url are a few hundred bytes at most.
MAX_TEXT_BYTES = 1 << 16
ONE_FILE = "(only `file` is a file part: options, output_format and callback_url are text)"


class FormError(Exception):
    """A multipart body that cannot be read as the form (a 400)."""


class TextTooLong(Exception):
    """A text part longer than MAX_TEXT_BYTES (a 422 naming the field)."""

    def __init__(self, name: str) -> None:
        hint = " (`file` must be a file part: send it with a filename)" if name == FILE else ""
        super().__init__(f"longer than {MAX_TEXT_BYTES // 1024} KB{hint}")
        self.name = name


@dataclass
class _Part:
    name: str = ""
    filename: str | None = None
    disposition: bytes = b""
    text: bytearray = field(default_factory=bytearray)
    upload: Upload | None = None  # the `file` part, when its type is one we take


@dataclass
class Form:
    """The parts in their order: text fields as text, file parts as `FilePart`s; `upload`
    holds the `file` part's bytes (stored, or on their way), if it had an accepted type."""

    items: list[tuple[str, str | FilePart]]
    upload: Upload | None


class FormReader:
    """Feeds the request body to the parser and acts on what it finds, part by part.

    `open_upload(filename)` is called when the `file` file part begins: the Upload its
    bytes go to, or None to drop them (a type refused once the whole form is read).
    """

    def __init__(self, content_type: str, open_upload: Callable[[str], Upload | None]) -> None:
        self.content_type = content_type
        self.open_upload = open_upload
        self.items: list[tuple[str, str | FilePart]] = []
        self.upload: Upload | None = None
        self.files = self.fields = 0
        self.began = False
        self.part = _Part()
        self.header_name = self.header_value = b""
        self.charset = "utf-8"
        self.pending: list[bytes] = []  # file bytes of the last chunk, for `Upload.write`

    def _decode(self, raw: bytes | bytearray) -> str:
        try:
            return raw.decode(self.charset)
        except (UnicodeDecodeError, LookupError):
            return raw.decode("latin-1")

    # ---- the parser's callbacks (synchronous: file bytes are written after each chunk)
    def on_part_begin(self) -> None:
        self.began = True
        self.part = _Part()

    def on_header_field(self, data: bytes, start: int, end: int) -> None:
        self.header_name += data[start:end]

    def on_header_value(self, data: bytes, start: int, end: int) -> None:
        self.header_value += data[start:end]

    def on_header_end(self) -> None:
        if self.header_name.lower() == b"content-disposition":
            self.part.disposition = self.header_value
        self.header_name = self.header_value = b""

    def on_headers_finished(self) -> None:
        _, options = parse_options_header(self.part.disposition)
        if b"name" not in options:
            raise FormError('The Content-Disposition header field "name" must be provided.')
        self.part.name = self._decode(options[b"name"])
        if b"filename" not in options:
            self.fields += 1
            if self.fields > MAX_FIELDS:
                raise FormError(f"Too many fields. Maximum number of fields is {MAX_FIELDS}.")
            return
        self.files += 1
        if self.files > MAX_FILES:
            raise FormError(f"Too many files. Maximum number of files is {MAX_FILES}. {ONE_FILE}")
        self.part.filename = self._decode(options[b"filename"])
        if self.part.name == FILE:
            self.part.upload = self.upload = self.open_upload(self.part.filename)

    def on_part_data(self, data: bytes, start: int, end: int) -> None:
        part = self.part
        if part.filename is not None:
            if part.upload is not None:
                self.pending.append(data[start:end])
            return  # the bytes of any other file part go nowhere
        if len(part.text) + end - start > MAX_TEXT_BYTES:
            raise TextTooLong(part.name)
        part.text += data[start:end]

    def on_part_end(self) -> None:
        part = self.part
        if part.filename is None:
            self.items.append((part.name, self._decode(part.text)))
        else:
            self.items.append((part.name, FilePart(filename=part.filename)))

    # ---- the body
    def _parser(self) -> MultipartParser:
        _, params = parse_options_header(self.content_type)
        charset = params.get(b"charset", b"utf-8")
        try:
            self.charset = codecs.lookup(charset.decode("latin-1")).name
        except LookupError:
            self.charset = "latin-1"
        if b"boundary" not in params:
            raise FormError("Missing boundary in multipart.")
        callbacks: MultipartCallbacks = {
            "on_part_begin": self.on_part_begin,
            "on_part_data": self.on_part_data,
            "on_part_end": self.on_part_end,
            "on_header_field": self.on_header_field,
            "on_header_value": self.on_header_value,
            "on_header_end": self.on_header_end,
            "on_headers_finished": self.on_headers_finished,
        }
        return MultipartParser(params[b"boundary"], callbacks)

    async def read(self, body: AsyncIterator[bytes]) -> Form:
        """The whole form; raises FormError, TextTooLong, or what `Upload.write` raises."""
        try:
            parser = self._parser()
            async for chunk in body:
                parser.write(chunk)
                for data in self.pending:
                    assert self.upload is not None
                    await self.upload.write(data)
                self.pending.clear()
            parser.finalize()
        except FormParserError:
            raise FormError("Invalid multipart data.") from None
        if self.began and parser.state != MultipartState.END:
            raise FormError("Invalid multipart data: the body ends before its closing boundary.")
        return Form(self.items, self.upload)
