"""File sources: CSV and Parquet files read in bounded memory, one partition at a time.

:class:`CsvSource` turns messy CSV into typed Arrow tables plus a quarantine of
the rows it cannot use, each with its file, physical line and reason.
:class:`ParquetSource` reads Parquet files whole or one row group at a time.
Both take a local path, a ``pyarrow.fs`` URI (``s3://bucket/landing/*.csv``)
or a glob, and both name a partition by the file's path below the glob's
fixed directory::

    source = CsvSource("landing/*.csv", timezone="America/New_York", max_rows_per_partition=100_000)
    for key in source.partitions():          # "orders.csv#0-99999", "orders.csv#100000-199999", ...
        result = source.read(key)            # a Validation: valid, rejected and report

Partition keys are file names: ``%``, ``/``, ``\\`` and ``#`` in a file's
relative path are written as ``%25``, ``%2F``, ``%5C`` and ``%23``, so a key
never contains a path separator and ``#`` only starts a row range.
"""

from __future__ import annotations

import codecs
import datetime as dt
import decimal
import io
import itertools
import re
import types
import typing
import urllib.parse
import zipfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.fs as pafs
import pyarrow.parquet as pq
from pydantic import AwareDatetime, BaseModel, NaiveDatetime

from ledgerflow.actors._checkpoints import resolve_filesystem
from ledgerflow.actors._errors import ConfigurationError
from ledgerflow.actors._pipeline import Validation
from ledgerflow.events import LedgerflowError, UsageError

DEFAULT_NULL_VALUES = ("", "NA", "N/A", "null", "NULL", "NaN")
TIME_RESOLUTIONS = ("raise", "earliest", "latest")
GLOB_CHARACTERS = "*?["

#: The code point that stands for each byte the declared encoding cannot
#: decode. U+FFFF is a Unicode noncharacter, reserved for internal use, so
#: text files should not contain it.
#: NOTE: A value that does contain U+FFFF is rejected as undecodable too.
UNDECODABLE = "\uffff"
_UNDECODABLE_ERRORS = "ledgerflow.mark_undecodable"

#: Record 1 is the header: pyarrow numbers records from 1 and the reader
#: parses the header line as data, so data index = record number - 2.
_FIRST_DATA_RECORD = 2

#: Key suffixes after "#": a range of data records, inclusive, or a row group.
_RANGE = re.compile(r"(?P<first>[0-9]+)-(?P<last>[0-9]+)")
_ROW_GROUP = re.compile(r"row_group=(?P<index>[0-9]+)")

_INTEGER_TEXT = r"^[+-]?[0-9]+$"
_BOOLEAN_WORDS = pa.array(["true", "false"])
_FLOAT_EXACT_INTEGER_LIMIT = 2**53
#: NOTE: A file with a column of one of these names gets two columns of that
#: name in its rejected table; select them by position.
_REJECTED_COLUMNS = ("file", "line", "row_text", "reason")


def _mark_undecodable(error: UnicodeError) -> tuple[str, int]:
    if not isinstance(error, UnicodeDecodeError):
        raise error
    return UNDECODABLE * (error.end - error.start), error.end


codecs.register_error(_UNDECODABLE_ERRORS, _mark_undecodable)


class SourceError(UsageError):
    """Raised when a file source cannot read what it was given.

    Examples are a missing file, a glob that matches nothing, an invalid
    option, an unknown partition key, or a schema naming a column the file
    lacks. ``path`` is the file or pattern concerned.
    """

    def __init__(self, message: str, *, path: str | None = None) -> None:
        super().__init__(message)
        self.path = path


class BadRowError(LedgerflowError):
    """Raised by :meth:`CsvSource.read` with ``fail_on_bad_rows=True`` at the first row it would quarantine."""

    def __init__(self, *, file: str, line: int, reason: str) -> None:
        super().__init__(
            f"{file}, line {line}: {reason}: fix the row, or read with fail_on_bad_rows=False to quarantine it"
        )
        self.file = file
        self.line = line
        self.reason = reason


# Locations: a path or glob on a pyarrow filesystem


def _encode_key(name: str) -> str:
    for character, escaped in (("%", "%25"), ("/", "%2F"), ("\\", "%5C"), ("#", "%23")):
        name = name.replace(character, escaped)
    return name


def _decode_key(key: str) -> str:
    return urllib.parse.unquote(key)


def _glob_regex(pattern: str) -> re.Pattern[str]:
    """Compile a glob: ``*`` and ``?`` stay inside one directory, ``**`` spans any number of them."""
    parts: list[str] = []
    index = 0
    while index < len(pattern):
        character = pattern[index]
        if pattern.startswith("**/", index):
            parts.append("(?:[^/]+/)*")
            index += 3
            continue
        if pattern.startswith("**", index):
            parts.append(".*")
            index += 2
            continue
        if character == "*":
            parts.append("[^/]*")
        elif character == "?":
            parts.append("[^/]")
        elif character == "[" and "]" in pattern[index + 2:]:
            end = pattern.index("]", index + 2)
            members = pattern[index + 1:end]
            members = members.replace("\\", "\\\\")
            if members.startswith("^"):
                members = "\\" + members
            elif members.startswith("!"):
                members = "^" + members[1:]
            parts.append(f"[{members}]")
            index = end
        else:
            parts.append(re.escape(character))
        index += 1
    return re.compile("".join(parts))


@dataclass(frozen=True)
class _Location:
    """The files of a path or glob: a filesystem, the glob's fixed directory and a pattern below it."""

    path_or_glob: str
    filesystem: pafs.FileSystem
    prefix: str  # the fixed directory with its trailing "/", or ""
    pattern: re.Pattern[str] | None  # None when ``path_or_glob`` names one file, called ``single``
    single: str
    scheme: str

    @classmethod
    def parse(cls, path_or_glob: str) -> _Location:
        if not isinstance(path_or_glob, str) or not path_or_glob:
            raise SourceError(f"invalid path {path_or_glob!r}: pass a file path, a glob or a pyarrow.fs URI")
        try:
            filesystem, path = resolve_filesystem(path_or_glob)
        except ConfigurationError as err:
            raise SourceError(
                f"unsupported URI {path_or_glob!r}: use a local path or a URI that "
                f"pyarrow.fs.FileSystem.from_uri accepts, such as s3://bucket/key ({err.__cause__ or err})",
                path=path_or_glob,
            ) from err
        scheme = path_or_glob.split("://", 1)[0] if "://" in path_or_glob else ""
        parts = path.split("/")
        globbed = [index for index, part in enumerate(parts) if any(c in part for c in GLOB_CHARACTERS)]
        fixed = globbed[0] if globbed else len(parts) - 1
        prefix = "".join(f"{part}/" for part in parts[:fixed])
        if not globbed:
            return cls(path_or_glob, filesystem, prefix, None, parts[-1], scheme)
        pattern = _glob_regex("/".join(parts[fixed:]))
        return cls(path_or_glob, filesystem, prefix, pattern, "", scheme)

    def path(self, name: str) -> str:
        return self.prefix + name

    def display(self, name: str) -> str:
        """Return the file's path as users write it: local paths absolute, others with their scheme."""
        return f"{self.scheme}://{self.path(name)}" if self.scheme else self.path(name)

    def names(self) -> list[str]:
        """List the matching files' paths below the fixed directory, sorted.

        Raises:
            SourceError: The file does not exist, is a directory, or the glob matches no file.
        """
        if self.pattern is None:
            self.check_file(self.single)
            return [self.single]
        selector = pafs.FileSelector(self.prefix.rstrip("/") or "/", recursive=True, allow_not_found=True)
        names = sorted(
            info.path.removeprefix(self.prefix) for info in self.filesystem.get_file_info(selector)
            if info.type == pafs.FileType.File and info.path.startswith(self.prefix)
            and self.pattern.fullmatch(info.path.removeprefix(self.prefix))
        )
        if not names:
            raise SourceError(f"no files match {self.path_or_glob!r}: check the pattern and that the files exist",
                              path=self.path_or_glob)
        return names

    def matches(self, name: str) -> bool:
        if self.pattern is None:
            return name == self.single
        return self.pattern.fullmatch(name) is not None

    def check_file(self, name: str) -> None:
        info = self.filesystem.get_file_info(self.path(name))
        if info.type == pafs.FileType.NotFound:
            raise SourceError(f"file not found: {self.display(name)}: check the path", path=self.display(name))
        if info.type == pafs.FileType.Directory:
            raise SourceError(
                f"{self.display(name)} is a directory: name a file, or a glob such as "
                f"{self.display(name).rstrip('/')}/*", path=self.display(name),
            )

    def split_key(self, key: str, *, suffix: re.Pattern[str]) -> tuple[str, re.Match[str] | None]:
        """Split a partition key into a file name and the match of its ``#`` suffix (None: whole file)."""
        if not isinstance(key, str):
            raise SourceError(f"invalid partition {key!r}: partition keys are strings from partitions()",
                              path=self.path_or_glob)
        head, separator, tail = key.rpartition("#")
        if separator:
            match = suffix.fullmatch(tail)
            if match is not None and self.matches(_decode_key(head)):
                return _decode_key(head), match
        name = _decode_key(key)
        if "#" in key or not self.matches(name):
            raise SourceError(
                f"unknown partition {key!r} of {self.path_or_glob!r}: use a key that partitions() returns",
                path=self.path_or_glob,
            )
        return name, None


# Decoding: any encoding in, valid UTF-8 out


class _ZipMember:
    """The one file inside a zip archive, decompressed as it is read.

    pyarrow's streams decompress gzip, bz2 and zstd but not zip archives,
    which many data providers ship.

    Raises:
        SourceError: The archive is invalid, or does not hold exactly one file.
    """

    def __init__(self, filesystem: Any, path: str, name: str) -> None:
        self._file = filesystem.open_input_file(path)
        try:
            self._archive = zipfile.ZipFile(self._file)
            members = [info for info in self._archive.infolist() if not info.is_dir()]
            if len(members) != 1:
                listed = ", ".join(info.filename for info in members[:5]) or "nothing"
                raise SourceError(
                    f"zip archive {name} contains {len(members)} files ({listed}); a CSV source reads an archive "
                    "with exactly one file: extract the files and pass them as a glob"
                )
            self._member = self._archive.open(members[0])
        except (zipfile.BadZipFile, pa.ArrowInvalid) as err:
            # A file shorter than a zip trailer fails in the seek to that trailer, as ArrowInvalid.
            self._file.close()
            raise SourceError(f"{name} is not a valid zip archive ({err}): check the file") from err
        except BaseException:
            self._file.close()
            raise

    def read(self, size: int = -1) -> bytes:
        return self._member.read(size)

    def close(self) -> None:
        self._member.close()
        self._archive.close()
        self._file.close()


class _DecodingStream(io.RawIOBase):
    """A byte stream in ``codec`` read back as UTF-8, with each undecodable byte replaced by ``UNDECODABLE``.

    pyarrow's CSV reader then sees valid UTF-8 only. Passing invalid bytes
    through is not an option: in pyarrow 26 a row with the wrong number of
    fields and an invalid UTF-8 byte makes the ``invalid_row_handler`` call
    fail, which aborts the whole read. UTF-8 input that decodes cleanly is
    passed through unchanged.
    """

    def __init__(self, raw: Any, codec: codecs.CodecInfo, chunk_bytes: int) -> None:
        super().__init__()
        self._raw = raw
        self._chunk_bytes = chunk_bytes
        self._utf8 = codec.name in ("utf-8", "utf-8-sig")
        self._decoder = codec.incrementaldecoder(errors=_UNDECODABLE_ERRORS)
        self._carry = b""  # a UTF-8 sequence cut by the chunk boundary
        self._output = b""
        self._offset = 0
        self._finished = False
        #: Whether the output may contain ``UNDECODABLE``: set when a byte
        #: failed to decode or the input already contained U+FFFF.
        self.marked = False

    def readable(self) -> bool:
        return True

    def read(self, size: int | None = -1) -> bytes:
        """Return ``size`` bytes, fewer only at the end of the stream (the rest of it when ``size`` is negative)."""
        unlimited = size is None or size < 0
        pieces: list[bytes] = []
        count = 0
        while unlimited or count < size:
            available = len(self._output) - self._offset
            if available == 0:
                if self._finished:
                    break
                self._fill()
                continue
            take = available if unlimited else min(available, size - count)
            pieces.append(self._output[self._offset:self._offset + take])
            self._offset += take
            count += take
        return b"".join(pieces)

    def readinto(self, buffer: Any) -> int:
        data = self.read(len(buffer))
        buffer[:len(data)] = data
        return len(data)

    def close(self) -> None:
        if not self.closed:
            self._raw.close()
        super().close()

    def _fill(self) -> None:
        data = self._raw.read(self._chunk_bytes)
        final = not data
        self._finished = final
        self._offset = 0
        if not self._utf8:
            text = self._decoder.decode(data, final)
            self.marked = self.marked or UNDECODABLE in text
            self._output = text.encode("utf-8")
            return
        data = self._carry + data
        if data.isascii():
            self._output, self._carry = data, b""
            return
        try:
            _, used = codecs.utf_8_decode(data, "strict", final)
            self._output = data[:used]
            self.marked = self.marked or UNDECODABLE.encode("utf-8") in self._output
        except UnicodeDecodeError:
            text, used = codecs.utf_8_decode(data, _UNDECODABLE_ERRORS, final)
            self._output = text.encode("utf-8")
            self.marked = True
        self._carry = data[used:]


def _lookup_codec(encoding: str) -> codecs.CodecInfo:
    try:
        return codecs.lookup(encoding)
    except (LookupError, TypeError) as err:
        raise SourceError(f"unknown encoding {encoding!r}: use a Python codec name such as "
                          "'utf-8', 'cp1252' or 'latin-1'") from err


def _readable_text(text: str) -> str:
    return text.replace(UNDECODABLE, "\ufffd")


# Schemas: declared (pydantic or pyarrow) and inferred


_PYTHON_TYPES: dict[Any, pa.DataType] = {
    bool: pa.bool_(),
    int: pa.int64(),
    float: pa.float64(),
    str: pa.string(),
    bytes: pa.binary(),
    dt.date: pa.date32(),
    dt.datetime: pa.timestamp("us"),
    NaiveDatetime: pa.timestamp("us"),
    AwareDatetime: pa.timestamp("us", "UTC"),
}


def _fields_of_model(model: type[BaseModel]) -> list[pa.Field]:
    """Map a pydantic model's fields to Arrow fields. A field is nullable when its annotation allows None."""
    fields = []
    for name, info in model.model_fields.items():
        annotation = info.annotation
        nullable = False
        if typing.get_origin(annotation) in (typing.Union, types.UnionType):
            members = [member for member in typing.get_args(annotation) if member is not type(None)]
            nullable = len(members) < len(typing.get_args(annotation))
            annotation = members[0] if len(members) == 1 else annotation
        if typing.get_origin(annotation) is typing.Annotated:
            annotation = typing.get_args(annotation)[0]
        column = info.alias or name
        if annotation is decimal.Decimal:
            digits = next((m.max_digits for m in info.metadata if getattr(m, "max_digits", None)), 38)
            places = next((m.decimal_places for m in info.metadata
                           if getattr(m, "decimal_places", None) is not None), 9)
            arrow_type: pa.DataType = (pa.decimal128(digits, places) if digits <= 38
                                       else pa.decimal256(digits, places))
        elif annotation in _PYTHON_TYPES:
            arrow_type = _PYTHON_TYPES[annotation]
        else:
            raise SourceError(
                f"field {name!r} of {model.__name__} has type {annotation!r}, which CsvSource cannot map to "
                "an Arrow type: use bool, int, float, str, bytes, Decimal, date or datetime, optionally "
                "with None, or pass a pyarrow.Schema"
            )
        fields.append(pa.field(column, arrow_type, nullable=nullable))
    return fields


def _declared_fields(schema: Any, timezone: str | None) -> list[pa.Field] | None:
    if schema is None:
        return None
    if isinstance(schema, pa.Schema):
        fields = list(schema)
    elif isinstance(schema, type) and issubclass(schema, BaseModel):
        fields = _fields_of_model(schema)
    else:
        raise SourceError(f"invalid schema {schema!r}: pass a pyarrow.Schema or a pydantic model class")
    result = []
    for declared in fields:
        arrow_type = declared.type
        if pa.types.is_timestamp(arrow_type) and arrow_type.tz is None and timezone is not None:
            arrow_type = pa.timestamp(arrow_type.unit, timezone)
        try:
            pc.cast(pa.array([], pa.string()), arrow_type)
        except pa.ArrowNotImplementedError as err:
            raise SourceError(
                f"column {declared.name!r} is declared as {arrow_type}, which pyarrow cannot parse from "
                "text: declare it as a string, number, decimal, boolean, date or timestamp"
            ) from err
        result.append(declared.with_type(arrow_type))
    names = [declared.name for declared in result]
    duplicates = sorted({name for name in names if names.count(name) > 1})
    if duplicates:
        raise SourceError(f"schema declares columns {duplicates} more than once: keep one of each")
    return result


#: Candidate types in the order inference tries them on a batch of text.
_INFERENCE_ORDER = (
    pa.int64(), pa.decimal128(38, 0), pa.float64(), pa.bool_(), pa.date32(),
    pa.timestamp("s"), pa.timestamp("ns"), pa.timestamp("s", "UTC"), pa.timestamp("ns", "UTC"),
)


def _join_types(first: pa.DataType | None, second: pa.DataType) -> pa.DataType:
    """Return the narrowest inferred type that can represent the values of both, or string."""
    if first is None or first == second:
        return second
    pair = {first, second}
    if pair == {pa.int64(), pa.decimal128(38, 0)}:
        return pa.decimal128(38, 0)
    if pair == {pa.int64(), pa.float64()}:
        return pa.float64()
    for zone in (None, "UTC"):
        family = {pa.timestamp("s", zone), pa.timestamp("ns", zone)} | ({pa.date32()} if zone is None else set())
        if pair <= family:
            return pa.timestamp("ns" if pa.timestamp("ns", zone) in pair else "s", zone)
    return pa.string()


def _casts(values: pa.Array, target: pa.DataType) -> bool:
    try:
        pc.cast(values, target)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
        return False
    return True


def _fits(values: pa.Array, candidate: pa.DataType) -> bool:
    """Tell whether every value parses as ``candidate``.

    pyarrow also casts "1.0" to decimal128(38, 0) and "1" to bool, so those
    two take only integer literals and the words true and false. Otherwise
    "1" and "true" would make bool in one batch but string across two.
    """
    if candidate == pa.decimal128(38, 0) and not pc.all(pc.match_substring_regex(values, _INTEGER_TEXT)).as_py():
        return False
    if candidate == pa.bool_() and not pc.all(pc.is_in(pc.utf8_lower(values), value_set=_BOOLEAN_WORDS)).as_py():
        return False
    return _casts(values, candidate)


def _has_inexact_integers(values: pa.Array) -> bool:
    """Tell whether any integer literal in ``values`` is beyond 2**53, where float64 stops being exact."""
    if (pc.max(pc.binary_length(values)).as_py() or 0) < len(str(_FLOAT_EXACT_INTEGER_LIMIT)):
        return False
    integers = values.filter(pc.match_substring_regex(values, _INTEGER_TEXT))
    if len(integers) == 0:
        return False
    try:
        magnitudes = pc.abs_checked(pc.cast(integers, pa.int64()))
    except pa.ArrowInvalid:
        return True
    return pc.max(magnitudes).as_py() > _FLOAT_EXACT_INTEGER_LIMIT


@dataclass
class _ColumnInference:
    """The narrowest type seen so far in one column, over every batch of the file."""

    type: pa.DataType | None = None
    inexact_integers: bool = False

    def update(self, values: pa.Array) -> None:
        """Widen the type to hold ``values`` (text, without nulls)."""
        if len(values) == 0 or self.type == pa.string():
            return
        if self.type is None or not _fits(values, self.type):
            self.type = _join_types(self.type, self._batch_type(values))
        if self.type in (pa.int64(), pa.decimal128(38, 0), pa.float64()) and not self.inexact_integers:
            self.inexact_integers = _has_inexact_integers(values)

    @staticmethod
    def _batch_type(values: pa.Array) -> pa.DataType:
        return next((candidate for candidate in _INFERENCE_ORDER if _fits(values, candidate)), pa.string())

    def result(self, timezone: str | None) -> pa.DataType:
        """Return the column's type: string when nothing fits, and never float64 over inexact integers."""
        if self.type is None or (self.type == pa.float64() and self.inexact_integers):
            return pa.string()
        if pa.types.is_timestamp(self.type) and timezone is not None:
            return pa.timestamp(self.type.unit, timezone)
        return self.type


# Reading: one pass over a CSV file in record order


@dataclass(frozen=True)
class _SkippedRow:
    """A row pyarrow passed to ``invalid_row_handler``: its fields do not match the header's."""

    number: int
    text: str
    expected: int
    actual: int


@dataclass
class _Chunk:
    """Consecutive records of a file: one batch of rows plus the skipped rows among them."""

    rows: pa.RecordBatch  # one string column per header column, in file order
    indexes: np.ndarray  # data index of each row (0 is the first record after the header)
    lines: np.ndarray  # physical line each row starts on, from 1
    skipped: list[tuple[int, int, _SkippedRow]]  # (data index, line, row)
    end: int  # data index after the last record of the chunk


def _line_breaks(text: pa.Array) -> np.ndarray:
    """Count the line breaks (``\\n``, ``\\r\\n`` or ``\\r``) inside each value."""
    data = text.buffers()[2]
    if data is None or not _contains_line_break(data):
        return np.zeros(len(text), dtype=np.int64)
    newlines = pc.count_substring(text, "\n").to_numpy(zero_copy_only=False).astype(np.int64)
    returns = pc.count_substring(text, "\r").to_numpy(zero_copy_only=False)
    if returns.any():
        pairs = pc.count_substring(text, "\r\n").to_numpy(zero_copy_only=False)
        newlines += returns - pairs
    return newlines


def _contains_line_break(data: pa.Buffer) -> bool:
    """Search a whole data buffer, which is much faster than counting per value when most batches have none."""
    content = data.to_pybytes()
    return b"\n" in content or b"\r" in content


def _text_line_breaks(text: str) -> int:
    return text.count("\n") + text.count("\r") - text.count("\r\n")


class _CsvPass:
    """One streaming pass over a CSV file: the header, then chunks of records with their physical lines.

    pyarrow reads every column as text on one thread, because only then does
    it pass record numbers (the header is record 1) to ``invalid_row_handler``.
    It calls the handler while it parses a block, before it returns that
    block's batch, so each batch takes the skipped rows whose numbers fall
    among its rows. A record starts on the line after the previous record
    ends, counting the line breaks inside quoted values.
    """

    def __init__(self, source: CsvSource, location: _Location, name: str) -> None:
        self.display = location.display(name)
        self._source = source
        self._location = location
        self._name = name
        self._skipped: list[_SkippedRow] = []
        self._number = 1  # pyarrow's number of the next record
        self._line = 1  # the physical line that record starts on
        self.width = self._count_fields()
        names = [f"f{index}" for index in range(self.width)]
        self._stream = stream = self._open()
        try:
            self._reader = pacsv.open_csv(
                stream,
                read_options=pacsv.ReadOptions(use_threads=False, block_size=source.block_size, column_names=names),
                parse_options=self._parse_options(self._skip_row),
                convert_options=pacsv.ConvertOptions(
                    column_types={column: pa.string() for column in names}, strings_can_be_null=False,
                    quoted_strings_can_be_null=False,
                ),
            )
        except pa.ArrowInvalid as err:
            stream.close()
            raise self._parse_error(err) from err
        self._batches = iter(self._reader)
        self.header = self._read_header()

    def _open(self) -> _DecodingStream:
        self._location.check_file(self._name)
        path = self._location.path(self._name)
        if path.lower().endswith(".zip"):
            raw: Any = _ZipMember(self._location.filesystem, path, self._name)
        else:
            raw = self._location.filesystem.open_input_stream(path)
        return _DecodingStream(raw, codecs.lookup(self._source.codec_name), self._source.block_size)

    def _parse_options(self, handler: Any) -> pacsv.ParseOptions:
        return pacsv.ParseOptions(delimiter=self._source.delimiter, newlines_in_values=True,
                                  ignore_empty_lines=False, invalid_row_handler=handler)

    def _count_fields(self) -> int:
        """Count the header's fields with a reader that parses only the first block."""
        stream = self._open()
        try:
            reader = pacsv.open_csv(
                stream,
                read_options=pacsv.ReadOptions(use_threads=False, block_size=self._source.block_size,
                                               autogenerate_column_names=True),
                parse_options=self._parse_options(lambda row: "skip"),
            )
            reader.close()
        except pa.ArrowInvalid as err:
            raise self._parse_error(err) from err
        finally:
            stream.close()
        return len(reader.schema)

    def _parse_error(self, error: pa.ArrowInvalid) -> SourceError:
        text = str(error)
        if "Empty CSV file" in text:
            return SourceError(f"{self.display} is empty: a CSV file needs a header row", path=self.display)
        if "straddle" in text:
            return SourceError(
                f"{self.display}: a record near line {self._line} is longer than block_size="
                f"{self._source.block_size} bytes, or a quote is not closed: raise block_size or close the quote",
                path=self.display,
            )
        return SourceError(f"{self.display}: cannot parse as CSV near line {self._line}: {text}",
                           path=self.display)

    def _skip_row(self, row: Any) -> str:
        if row.number is None or row.number < 0:
            raise RuntimeError("pyarrow gave no row number: the CSV reader must run with use_threads=False")
        self._skipped.append(_SkippedRow(row.number, row.text, row.expected_columns, row.actual_columns))
        return "skip"

    def _read_header(self) -> list[str]:
        for chunk in self._raw_chunks():
            if chunk.rows.num_rows == 0:
                continue
            if chunk.indexes[0] != -1:
                raise RuntimeError(f"pyarrow gave the first row of {self.display} the number "
                                   f"{chunk.indexes[0] + _FIRST_DATA_RECORD}, expected 1")
            header = [_readable_text(chunk.rows.column(index)[0].as_py()) for index in range(self.width)]
            # A BOM survives decoding as "utf-16-le", and pyarrow strips only a UTF-8 BOM.
            header[0] = header[0].removeprefix("\ufeff")
            chunk.rows, chunk.indexes, chunk.lines = chunk.rows.slice(1), chunk.indexes[1:], chunk.lines[1:]
            self._first = chunk
            return header
        raise SourceError(f"{self.display} is empty: a CSV file needs a header row", path=self.display)

    def chunks(self) -> Iterator[_Chunk]:
        """Yield the data records in file order. The caller may stop early."""
        yield self._first
        yield from self._raw_chunks()

    def _raw_chunks(self) -> Iterator[_Chunk]:
        while True:
            try:
                batch = next(self._batches)
            except StopIteration:
                break
            except pa.ArrowInvalid as err:
                raise self._parse_error(err) from err
            yield self._number_records(batch)
        if self._skipped:
            # Rows skipped after the last batch (a file ending in bad rows) belong to no batch.
            empty = pa.RecordBatch.from_arrays([pa.array([], pa.string())] * self.width,
                                               names=[f"f{index}" for index in range(self.width)])
            yield self._number_records(empty, final=True)

    def _number_records(self, batch: pa.RecordBatch, *, final: bool = False) -> _Chunk:
        count = batch.num_rows
        # A skipped row falls among this batch's rows when its number is below the number of the
        # batch's last record, which moves one further for every skipped row before it. After the
        # last batch, every remaining skipped row is taken.
        skipped_count = len(self._skipped) if final else 0
        while skipped_count < len(self._skipped):
            if self._skipped[skipped_count].number >= self._number + count + skipped_count:
                break
            skipped_count += 1
        skipped, self._skipped = self._skipped[:skipped_count], self._skipped[skipped_count:]
        total = count + skipped_count

        positions = np.array([row.number - self._number for row in skipped], dtype=np.int64)
        from_batch = np.ones(total, dtype=bool)
        from_batch[positions] = False
        lines_per_record = np.ones(total, dtype=np.int64)
        breaks = np.zeros(count, dtype=np.int64)
        for column in batch.columns:
            breaks += _line_breaks(column)
        lines_per_record[from_batch] += breaks
        lines_per_record[positions] += np.array([_text_line_breaks(row.text) for row in skipped], dtype=np.int64)
        starts = self._line + np.cumsum(lines_per_record) - lines_per_record
        indexes = self._number - _FIRST_DATA_RECORD + np.arange(total)

        self._number += total
        self._line += int(lines_per_record.sum())
        return _Chunk(
            rows=batch, indexes=indexes[from_batch], lines=starts[from_batch],
            skipped=[(int(indexes[p]), int(starts[p]), row) for p, row in zip(positions, skipped, strict=True)],
            end=self._number - _FIRST_DATA_RECORD,
        )

    @property
    def marked(self) -> bool:
        """Whether any value read so far may contain ``UNDECODABLE``."""
        return self._stream.marked

    def close(self) -> None:
        self._reader.close()
        self._stream.close()


def _blank_rows(rows: pa.RecordBatch) -> np.ndarray:
    """Mark rows whose every field is empty: blank lines and lines of delimiters only."""
    blank = np.ones(rows.num_rows, dtype=bool)
    for column in rows.columns:
        blank &= pc.equal(pc.binary_length(column), 0).to_numpy(zero_copy_only=False)
    return blank


def _column_names(header: list[str]) -> tuple[list[str], dict[str, str]]:
    """Make header names unique: ``name``, ``name_2``. An empty name becomes ``column_<position>``.

    Returns the names and a map from each new name to the header text it replaces.
    """
    reserved = {text for text in header if text.strip()}  # names the header itself uses
    names: list[str] = []
    renamed: dict[str, str] = {}
    for position, text in enumerate(header, start=1):
        if text.strip() and text not in names:
            names.append(text)
            continue
        stem = text if text.strip() else f"column_{position}"
        first = [] if text.strip() else [stem]
        options = itertools.chain(first, (f"{stem}_{suffix}" for suffix in itertools.count(2)))
        candidate = next(option for option in options if option not in names and option not in reserved)
        names.append(candidate)
        renamed[candidate] = text
    return names, renamed


# Converting text to typed columns, one reason per rejected value


def _failing_positions(values: pa.Array, target: pa.DataType) -> list[int]:
    """Find the values that do not cast to ``target`` by casting halves of the failing ranges.

    The cost is about two casts per failing value plus a logarithmic search
    for each, so a column that is wrong throughout costs about 2n casts.
    """
    failing: list[int] = []
    ranges = [(0, len(values))]
    while ranges:
        start, stop = ranges.pop()
        if _casts(values.slice(start, stop - start), target):
            continue
        if stop - start == 1:
            failing.append(start)
            continue
        middle = (start + stop) // 2
        ranges.extend([(middle, stop), (start, middle)])
    return sorted(failing)


def _mask(length: int, positions: Sequence[int] | np.ndarray) -> np.ndarray:
    mask = np.zeros(length, dtype=bool)
    mask[np.asarray(positions, dtype=np.int64)] = True
    return mask


def _cast_each(values: pa.Array, target: pa.DataType) -> tuple[pa.Array, np.ndarray]:
    """Cast ``values`` to ``target``. A value that fails becomes null and is marked in the returned mask."""
    try:
        return pc.cast(values, target), np.zeros(len(values), dtype=bool)
    except pa.ArrowInvalid:
        failed = _mask(len(values), _failing_positions(values, target))
    cleaned = pc.if_else(pa.array(failed), pa.scalar(None, values.type), values)
    return pc.cast(cleaned, target), failed


def _undecodable(column: pa.Array) -> np.ndarray:
    return pc.match_substring(column, UNDECODABLE).to_numpy(zero_copy_only=False)


def _rejected_table(header: list[str], text: list[pa.Array], display: str, *, lines: pa.Array, row_text: pa.Array,
                    reasons: pa.Array) -> pa.Table:
    """Assemble rejected rows: every header column as text, then file, line, row_text and reason."""
    columns = [*text, pa.repeat(pa.scalar(display), len(reasons)), lines, row_text, reasons]
    return pa.Table.from_arrays(columns, names=[*header, *_REJECTED_COLUMNS])


def _reasons(length: int, reason: str, mask: np.ndarray) -> pa.Array:
    if not mask.any():
        return pa.nulls(length, pa.string())
    return pc.if_else(pa.array(mask), pa.scalar(reason), pa.nulls(length, pa.string()))


@dataclass
class _Converted:
    """One chunk's rows in range: typed values, readable text and the first reason to reject each row."""

    typed: list[pa.Array]
    text: list[pa.Array]
    reasons: pa.Array
    null_values: dict[str, int]
    resolved: dict[str, dict[str, int]]


@dataclass
class _Plan:
    """The mapping from one file's header columns to the output columns."""

    header: list[str]
    renamed: dict[str, str]
    fields: list[pa.Field]
    positions: list[int]  # header position of each output field
    ignored: list[str]
    inferred: bool


class _Converter:
    """Turns text columns into the plan's types, recording why each rejected row failed."""

    def __init__(self, source: CsvSource, plan: _Plan) -> None:
        self._source = source
        self._plan = plan
        self._null_values = pa.array(list(source.null_values), pa.string())

    def convert(self, rows: pa.RecordBatch, *, marked: bool) -> _Converted:
        """Convert ``rows`` to the plan's types. ``marked`` is true when any value may contain ``UNDECODABLE``."""
        length = rows.num_rows
        undecodable = [_undecodable(column) if marked else np.zeros(length, dtype=bool) for column in rows.columns]
        text = [pc.replace_substring(column, UNDECODABLE, "\ufffd") if bad.any() else column
                for column, bad in zip(rows.columns, undecodable, strict=True)]
        typed: list[pa.Array] = []
        column_reasons: list[pa.Array] = []
        null_values: dict[str, int] = {}
        resolved: dict[str, dict[str, int]] = {}
        for declared, position in zip(self._plan.fields, self._plan.positions, strict=True):
            bad = undecodable[position]
            values = rows.column(position)
            reasons = [_reasons(length, f"invalid {self._source.codec_name} in column {declared.name}", bad)]
            if bad.any():
                values = pc.if_else(pa.array(bad), pa.scalar(None, pa.string()), values)
            if pa.types.is_string(declared.type) or pa.types.is_large_string(declared.type):
                converted = pc.cast(values, declared.type)
            else:
                null_like = pc.is_in(values, value_set=self._null_values).to_numpy(zero_copy_only=False) & ~bad
                if null_like.any():
                    null_values[declared.name] = int(null_like.sum())
                    values = pc.if_else(pa.array(null_like), pa.scalar(None, pa.string()), values)
                converted, type_reasons, counts = self._to_type(values, declared)
                reasons.extend(type_reasons)
                if counts:
                    resolved[declared.name] = counts
            if not declared.nullable:
                missing = pc.is_null(converted).to_numpy(zero_copy_only=False) & ~bad
                reasons.append(_reasons(length, f"missing value in column {declared.name}", missing))
            typed.append(converted)
            column_reasons.append(pc.coalesce(*reasons))
        if column_reasons:
            first_reasons = pc.coalesce(*column_reasons)
        else:
            first_reasons = pa.nulls(length, pa.string())
        return _Converted(typed=typed, text=text, reasons=first_reasons, null_values=null_values,
                          resolved=resolved)

    def _to_type(self, values: pa.Array, declared: pa.Field) -> tuple[pa.Array, list[pa.Array], dict[str, int]]:
        target = declared.type
        zone = self._source.timezone or (target.tz if pa.types.is_timestamp(target) else None)
        if pa.types.is_timestamp(target) and zone is not None:
            return self._to_zoned_timestamp(values, declared, zone)
        converted, failed = _cast_each(values, target)
        return converted, [self._invalid_reasons(values, declared, failed)], {}

    def _invalid_reasons(self, values: pa.Array, declared: pa.Field, failed: np.ndarray) -> pa.Array:
        length = len(values)
        reasons = _reasons(length, f"invalid {declared.type} in column {declared.name}", failed)
        if pa.types.is_integer(declared.type) and failed.any():
            integer_text = pc.fill_null(pc.match_substring_regex(values, _INTEGER_TEXT), False)
            overflow = failed & integer_text.to_numpy(zero_copy_only=False)
            reasons = pc.coalesce(
                _reasons(length, f"integer out of {declared.type} range in column {declared.name}", overflow),
                reasons,
            )
        return reasons

    def _to_zoned_timestamp(self, values: pa.Array, declared: pa.Field,
                            zone: str) -> tuple[pa.Array, list[pa.Array], dict[str, int]]:
        """Parse timestamps with a zone offset as instants, and those without one as local times in ``zone``.

        A local time that a daylight-saving change skips (nonexistent) or
        repeats (ambiguous) is rejected, or resolved to the earliest or latest
        instant when the source's ``nonexistent`` or ``ambiguous`` option requests it.
        """
        target = declared.type
        length = len(values)
        naive, instant = pa.timestamp(target.unit), pa.timestamp(target.unit, "UTC")
        if not _casts(values, naive) and _casts(values, instant):
            return pc.cast(pc.cast(values, instant), target), [], {}
        local, not_local = _cast_each(values, naive)
        with_offset, failed = _cast_each(pc.if_else(pa.array(not_local), values, pa.scalar(None, pa.string())),
                                         instant)
        earliest = pc.assume_timezone(local, zone, ambiguous="earliest", nonexistent="earliest")
        latest = pc.assume_timezone(local, zone, ambiguous="latest", nonexistent="latest")
        differs = pc.fill_null(pc.not_equal(earliest, latest), False).to_numpy(zero_copy_only=False)
        round_trip = pc.fill_null(pc.equal(pc.local_timestamp(earliest), local), True)
        nonexistent = differs & ~round_trip.to_numpy(zero_copy_only=False)
        ambiguous = differs & ~nonexistent

        reasons = [_reasons(length, f"invalid {target} in column {declared.name}", failed)]
        take_latest = np.zeros(length, dtype=bool)
        counts: dict[str, int] = {}
        for kind, mask, choice in (("nonexistent", nonexistent, self._source.nonexistent),
                                   ("ambiguous", ambiguous, self._source.ambiguous)):
            if not mask.any():
                continue
            if choice == "raise":
                reasons.append(_reasons(length, f"{kind} local time in column {declared.name} ({zone})", mask))
                continue
            counts[kind] = int(mask.sum())
            if choice == "latest":
                take_latest |= mask
        localized = pc.if_else(pa.array(take_latest), latest, earliest)
        combined = pc.coalesce(pc.cast(localized, target), pc.cast(with_offset, target))
        return combined, reasons, counts


# Sources


class CsvSource:
    """CSV files read into typed tables, with the rows that do not fit quarantined.

    Each :meth:`read` returns a :class:`~ledgerflow.actors.Validation`:

    - ``valid``: the rows that fit, typed by ``schema`` or by inference;
    - ``rejected``: the rows that do not. Every file column comes as text, with
      undecodable bytes shown as U+FFFD. Then come ``file``, ``line`` (the
      physical line the row starts on, from 1), ``row_text`` (the raw text of
      a row with the wrong number of fields, else null) and ``reason`` (the
      first problem, in column order);
    - ``report``: the counts ``rows_in``, ``valid``, ``rejected`` and
      ``rejected_by_reason``, and ``blank_rows`` (records whose fields are all
      empty, which are skipped). Then the columns: ``columns``,
      ``columns_renamed`` (new name to header text), ``columns_ignored``,
      ``types`` and ``types_source`` (``inferred`` or ``declared``). Then
      ``null_values_found`` (per typed column, the values read as null) and
      ``resolved_local_times`` (per column, the nonexistent and ambiguous
      local times that the options resolved). Last come ``file``,
      ``partition`` and ``encoding``.

    Args:
        path_or_glob: A file, a glob (``*`` and ``?`` within a directory,
            ``**`` across directories) or a ``pyarrow.fs`` URI of either.
            Compressed files (``.gz``, ``.bz2``, ``.zst``...) are detected by
            their extension, and a ``.zip`` archive holding one file is read
            as that file.
        schema: A ``pyarrow.Schema`` or a pydantic model class naming the
            columns to keep, in order, with their types. Other columns are
            dropped and listed in the report. A non-nullable field (a pydantic
            field whose annotation does not allow None) rejects a row without a
            value. A pydantic field is named by its alias if it has one, and
            ``Decimal`` maps to ``decimal128(max_digits, decimal_places)``, by
            default (38, 9). Pydantic constraints beyond the type are not
            checked. Without a schema, every column is kept and typed by
            inference.
        encoding: A Python codec name. Bytes it cannot decode reject the row.
        delimiter: The one-character field separator.
        timezone: The IANA zone of timestamps written without an offset. Every
            timestamp column whose type has no zone gets this zone. Values
            written with an offset are read as the instant they name.
        ambiguous: How to read a local time that occurs twice when clocks go
            back: ``"raise"`` rejects the row, ``"earliest"`` or ``"latest"``
            picks that instant.
        nonexistent: How to read a local time skipped when clocks go forward:
            ``"raise"`` rejects the row, ``"earliest"`` takes the last instant
            before the gap and ``"latest"`` the first instant after it.
        null_values: Texts read as null in typed columns. Text columns keep
            them as written.
        max_rows_per_partition: Split each file into ranges of this many data
            records (``file.csv#0-99999``). None: one partition per file.
        fail_on_bad_rows: Raise :class:`BadRowError` at the first row that
            would be quarantined.
        block_size: Bytes parsed at a time. A single record must fit in one
            block, and the reader's memory grows with the block size. Reading
            two partitions of 250,000 rows from a 449 MB file grew RSS by
            about 110 MB with 256 KiB blocks. With 1 MiB blocks (the default)
            it grew by about 70 MB more (pyarrow 26, 2-core Linux VM).

    Inference reads the whole file once, with every column as text, so a
    column's type does not depend on where blocks end. Each column gets the
    first type in this list that can represent every value: int64,
    decimal128(38, 0) (integers beyond int64), float64, bool (the words true
    and false, in any case), date32,
    timestamp (without zone, or with UTC when the values carry offsets) and
    string. Integers beyond 2**53 never become float64: mixed with fractions
    they make the column string.

    NOTE: Types are inferred per file, so two files of one glob may get
    different types. Pass ``schema=`` (for example from :meth:`infer_schema`)
    to fix them, which also saves the inference pass on every read.

    NOTE: pyarrow reads a quote that is never closed up to the end of the
    file as one value. The row is then kept with that long value (or the
    read fails once the value is longer than ``block_size``).
    """

    def __init__(
        self,
        path_or_glob: str,
        *,
        schema: type[BaseModel] | pa.Schema | None = None,
        encoding: str = "utf-8",
        delimiter: str = ",",
        timezone: str | None = None,
        ambiguous: str = "raise",
        nonexistent: str = "raise",
        null_values: Sequence[str] = DEFAULT_NULL_VALUES,
        max_rows_per_partition: int | None = None,
        fail_on_bad_rows: bool = False,
        block_size: int = 1 << 20,
    ) -> None:
        self.path_or_glob = path_or_glob
        self.encoding = encoding
        self.delimiter = delimiter
        self.timezone = timezone
        self.ambiguous = ambiguous
        self.nonexistent = nonexistent
        if isinstance(null_values, str):
            raise SourceError(f"invalid null_values {null_values!r}: use a sequence of strings, such as ('', 'NA')")
        self.null_values = tuple(null_values)
        self.max_rows_per_partition = max_rows_per_partition
        self.fail_on_bad_rows = fail_on_bad_rows
        self.block_size = block_size
        # The name, because a codecs.CodecInfo does not survive pickling (Ray pickles sources).
        self.codec_name = _lookup_codec(encoding).name
        self._check_options()
        self._declared = _declared_fields(schema, timezone)
        self._location_cache: _Location | None = None
        self._scans: dict[str, _FileScan] = {}

    def __repr__(self) -> str:
        return f"CsvSource({self.path_or_glob!r})"

    def _check_options(self) -> None:
        if not isinstance(self.delimiter, str) or len(self.delimiter) != 1:
            raise SourceError(f"invalid delimiter {self.delimiter!r}: use one character, such as ',' or '\\t'")
        for name, value in (("ambiguous", self.ambiguous), ("nonexistent", self.nonexistent)):
            if value not in TIME_RESOLUTIONS:
                raise SourceError(f"invalid {name}={value!r}: use one of {', '.join(TIME_RESOLUTIONS)}")
        if self.timezone is not None:
            try:
                pc.assume_timezone(pa.array([0], pa.timestamp("s")), self.timezone)
            except (pa.ArrowInvalid, TypeError) as err:
                raise SourceError(f"unknown timezone {self.timezone!r}: use an IANA name such as "
                                  "'America/New_York' or 'UTC'") from err
        if not all(isinstance(value, str) for value in self.null_values):
            raise SourceError(f"invalid null_values {self.null_values!r}: use a sequence of strings")
        limit = self.max_rows_per_partition
        if limit is not None and (not isinstance(limit, int) or limit < 1):
            raise SourceError(f"invalid max_rows_per_partition={limit!r}: use a positive integer or None")
        if not isinstance(self.block_size, int) or self.block_size < 1:
            raise SourceError(f"invalid block_size={self.block_size!r}: use a positive number of bytes")

    def _location(self) -> _Location:
        if self._location_cache is None:
            self._location_cache = _Location.parse(self.path_or_glob)
        return self._location_cache

    def partitions(self) -> list[str]:
        """Return the partition keys: one per file, or per range of data records.

        With ``max_rows_per_partition``, each file is read once to count its
        records (and, without a schema, to infer its types). A key such as
        ``orders.csv#0-99999`` covers data records 0 to 99999 inclusive,
        counting rows that end up rejected. A file without data records
        gets one key without a range.
        """
        location = self._location()
        keys = []
        for name in location.names():
            key = _encode_key(name)
            limit = self.max_rows_per_partition
            records = self._scan(name).records if limit is not None else 0
            if records == 0:
                keys.append(key)
                continue
            for start in range(0, records, limit):
                keys.append(f"{key}#{start}-{min(start + limit, records) - 1}")
        return keys

    def infer_schema(self, partition: str | None = None) -> pa.Schema:
        """Return the schema of the valid rows of ``partition``'s file (default: the first file).

        Without a declared schema this infers the types, so a pipeline can
        pass the result back as ``schema=`` and skip the inference pass.
        """
        if self._declared is not None:
            return pa.schema(self._declared)
        location = self._location()
        name = location.names()[0] if partition is None else location.split_key(partition, suffix=_RANGE)[0]
        return pa.schema(self._plan(name, self._scan(name).header).fields)

    def read(self, partition: str) -> Validation:
        """Read one partition into valid rows, rejected rows and a report, in bounded memory.

        The file is streamed from its start and only the partition's records
        are kept, so memory grows with the partition, not the file. Time
        grows with the partition's end, because records before its start are
        parsed and skipped. Without a schema, the first read of each file
        runs the inference pass first.

        Raises:
            SourceError: Unknown partition key, missing file, unparsable CSV,
                or a schema column the header lacks.
            BadRowError: With ``fail_on_bad_rows=True``, at the first bad row.
        """
        location = self._location()
        name, match = location.split_key(partition, suffix=_RANGE)
        first, last = (int(match["first"]), int(match["last"])) if match else (0, None)
        if last is not None and last < first:
            raise SourceError(f"invalid partition {partition!r}: the range ends before it starts",
                              path=location.display(name))
        if self._declared is None:
            self._scan(name)  # infer the types first, in a pass of its own
        reading = _CsvPass(self, location, name)
        try:
            plan = self._plan(name, reading.header)
            return self._collect(reading, plan, partition, first, last)
        finally:
            reading.close()

    def _collect(self, reading: _CsvPass, plan: _Plan, partition: str, first: int,
                 last: int | None) -> Validation:
        converter = _Converter(self, plan)
        valid: list[pa.RecordBatch] = []
        rejected: list[pa.Table] = []
        blank_rows = 0
        null_values: dict[str, int] = {}
        resolved: dict[str, dict[str, int]] = {}
        schema = pa.schema(plan.fields)
        for chunk in reading.chunks():
            if chunk.end <= first:
                continue
            in_range = (chunk.indexes >= first) & (chunk.indexes <= (last if last is not None else chunk.end))
            blank = _blank_rows(chunk.rows) & in_range
            blank_rows += int(blank.sum())
            keep = in_range & ~blank
            rows = chunk.rows.filter(pa.array(keep))
            lines = chunk.lines[keep]
            converted = converter.convert(rows, marked=reading.marked)
            accepted = pc.is_null(converted.reasons)
            valid.append(pa.RecordBatch.from_arrays([pc.filter(a, accepted) for a in converted.typed], schema=schema))
            pieces = self._rejected_rows(reading.display, plan, converted, lines, chunk, first, last)
            if pieces.num_rows and self.fail_on_bad_rows:
                width = len(plan.header)  # the rows are sorted by line, so row 0 comes first
                raise BadRowError(file=reading.display, line=pieces.column(width + 1)[0].as_py(),
                                  reason=pieces.column(width + 3)[0].as_py())
            rejected.append(pieces)
            for column, count in converted.null_values.items():
                null_values[column] = null_values.get(column, 0) + count
            for column, counts in converted.resolved.items():
                for kind, count in counts.items():
                    resolved.setdefault(column, {}).setdefault(kind, 0)
                    resolved[column][kind] += count
            if last is not None and chunk.end > last:
                break
        return self._validation(plan, reading.display, partition, valid, rejected, schema, {
            "blank_rows": blank_rows, "null_values_found": null_values, "resolved_local_times": resolved,
        })

    def _rejected_rows(self, display: str, plan: _Plan, converted: _Converted, lines: np.ndarray,
                       chunk: _Chunk, first: int, last: int | None) -> pa.Table:
        """Build the chunk's rejected rows within the partition's range, sorted by line."""
        has_reason = pc.is_valid(converted.reasons)
        rejected_mask = has_reason.to_numpy(zero_copy_only=False)
        from_values = _rejected_table(
            plan.header, [pc.filter(column, has_reason) for column in converted.text], display,
            lines=pa.array(lines[rejected_mask], pa.int64()),
            row_text=pa.nulls(int(rejected_mask.sum()), pa.string()),
            reasons=pc.filter(converted.reasons, has_reason),
        )
        skipped = [(line, row) for index, line, row in chunk.skipped
                   if index >= first and (last is None or index <= last)]
        from_skipped = _rejected_table(
            plan.header, [pa.nulls(len(skipped), pa.string())] * len(plan.header), display,
            lines=pa.array([line for line, _ in skipped], pa.int64()),
            row_text=pa.array([_readable_text(row.text) for _, row in skipped], pa.string()),
            reasons=pa.array([f"expected {row.expected} fields, found {row.actual}" for _, row in skipped],
                             pa.string()),
        )
        rows = pa.concat_tables([from_values, from_skipped])
        return rows.take(pc.sort_indices(rows.column(len(plan.header) + 1)))

    def _validation(self, plan: _Plan, display: str, partition: str, valid: list[pa.RecordBatch],
                    rejected: list[pa.Table], schema: pa.Schema, counts: dict[str, Any]) -> Validation:
        valid_table = pa.Table.from_batches(valid, schema=schema)
        if rejected:
            rejected_table = pa.concat_tables(rejected)
        else:
            empty = pa.array([], pa.string())
            rejected_table = _rejected_table(plan.header, [empty] * len(plan.header), display,
                                             lines=pa.array([], pa.int64()), row_text=empty, reasons=empty)
        by_reason: dict[str, int] = {}
        for item in pc.value_counts(rejected_table.column(rejected_table.num_columns - 1)).to_pylist():
            by_reason[str(item["values"])] = int(item["counts"])
        report = {
            "rows_in": valid_table.num_rows + rejected_table.num_rows,
            "valid": valid_table.num_rows,
            "rejected": rejected_table.num_rows,
            "rejected_by_reason": by_reason,
            **counts,
            "columns": plan.header,
            "columns_renamed": plan.renamed,
            "columns_ignored": plan.ignored,
            "types": {declared.name: str(declared.type) for declared in plan.fields},
            "types_source": "inferred" if plan.inferred else "declared",
            "file": display,
            "partition": partition,
            "encoding": self.codec_name,
        }
        return Validation(valid=valid_table, rejected=rejected_table, report=report)

    def _plan(self, name: str, header: list[str]) -> _Plan:
        names, renamed = _column_names(header)
        display = self._location().display(name)
        if self._declared is None:
            types = self._scan(name).types
            fields = [pa.field(column, types[column]) for column in names]
            return _Plan(header=names, renamed=renamed, fields=fields, positions=list(range(len(names))),
                         ignored=[], inferred=True)
        missing = [declared.name for declared in self._declared if declared.name not in names]
        if missing:
            raise SourceError(
                f"{display} has no column {', '.join(map(repr, missing))}, which the schema declares: its "
                f"columns are {names} (duplicate header names get _2, _3 and empty ones column_<position>). "
                "Rename the schema's fields to match, or fix the header", path=display,
            )
        declared_names = {declared.name for declared in self._declared}
        return _Plan(header=names, renamed=renamed, fields=list(self._declared),
                     positions=[names.index(declared.name) for declared in self._declared],
                     ignored=[column for column in names if column not in declared_names], inferred=False)

    def _scan(self, name: str) -> _FileScan:
        """Count the file's data records and, without a declared schema, infer its column types."""
        if name in self._scans:
            return self._scans[name]
        reading = _CsvPass(self, self._location(), name)
        try:
            names, _ = _column_names(reading.header)
            inference = [_ColumnInference() for _ in names] if self._declared is None else []
            null_values = pa.array(list(self.null_values), pa.string())
            end = 0
            for chunk in reading.chunks():
                end = chunk.end
                if not inference or chunk.rows.num_rows == 0:
                    continue
                rows = chunk.rows.filter(pa.array(~_blank_rows(chunk.rows)))
                for column, state in zip(rows.columns, inference, strict=True):
                    if state.type == pa.string():
                        continue  # the widest type: nothing can change it
                    usable = ~pc.is_in(column, value_set=null_values).to_numpy(zero_copy_only=False)
                    if reading.marked:
                        usable &= ~_undecodable(column)
                    state.update(column.filter(pa.array(usable)))
        finally:
            reading.close()
        types = {column: state.result(self.timezone) for column, state in zip(names, inference, strict=True)}
        scan = _FileScan(header=reading.header, records=end, types=types)
        self._scans[name] = scan
        return scan



@dataclass(frozen=True)
class _FileScan:
    """The results of one pass over a whole CSV file: its header, record count and inferred types."""

    header: list[str]
    records: int
    types: dict[str, pa.DataType] = field(default_factory=dict)



class ParquetSource:
    """Parquet files read one partition at a time: a whole file or one row group.

    Args:
        path_or_glob: A file, a glob (``*`` and ``?`` within a directory,
            ``**`` across directories) or a ``pyarrow.fs`` URI of either.
        columns: The columns to read, in order (None: all).
        batch_rows: Rows decoded at a time, which bounds the memory of
            :meth:`iter_batches`. :meth:`read` still returns the whole partition.
        by_row_group: One partition per row group (``data.parquet#row_group=3``)
            instead of one per file.
    """

    def __init__(self, path_or_glob: str, *, columns: Sequence[str] | None = None, batch_rows: int = 65_536,
                 by_row_group: bool = False) -> None:
        if columns is not None and (isinstance(columns, str) or not all(isinstance(c, str) for c in columns)):
            raise SourceError(f"invalid columns {columns!r}: use a list of column names or None")
        if not isinstance(batch_rows, int) or batch_rows < 1:
            raise SourceError(f"invalid batch_rows={batch_rows!r}: use a positive number of rows")
        self.path_or_glob = path_or_glob
        self.columns = list(columns) if columns is not None else None
        self.batch_rows = batch_rows
        self.by_row_group = by_row_group
        self._location_cache: _Location | None = None

    def __repr__(self) -> str:
        return f"ParquetSource({self.path_or_glob!r})"

    def _location(self) -> _Location:
        if self._location_cache is None:
            self._location_cache = _Location.parse(self.path_or_glob)
        return self._location_cache

    def partitions(self) -> list[str]:
        """Return one key per file, or with ``by_row_group`` one per row group (a file without any gets one)."""
        location = self._location()
        keys = []
        for name in location.names():
            key = _encode_key(name)
            groups = 0
            if self.by_row_group:
                with self._open(name) as parquet:
                    groups = parquet.num_row_groups
            if groups == 0:
                keys.append(key)
            else:
                keys.extend(f"{key}#row_group={index}" for index in range(groups))
        return keys

    def iter_batches(self, partition: str) -> Iterator[pa.RecordBatch]:
        """Yield the partition's rows in batches of at most ``batch_rows``.

        Raises:
            SourceError: Unknown partition key, missing file, row group out of
                range, or a selected column the file lacks.
        """
        name, match = self._location().split_key(partition, suffix=_ROW_GROUP)
        with self._open(name) as parquet:
            groups = self._row_groups(parquet, partition, name, match)
            yield from parquet.iter_batches(batch_size=self.batch_rows, row_groups=groups, columns=self.columns)

    def read(self, partition: str) -> pa.Table:
        """Read one partition into a table with the selected columns."""
        name, match = self._location().split_key(partition, suffix=_ROW_GROUP)
        with self._open(name) as parquet:
            groups = self._row_groups(parquet, partition, name, match)
            batches = list(parquet.iter_batches(batch_size=self.batch_rows, row_groups=groups,
                                                columns=self.columns))
            if batches:
                return pa.Table.from_batches(batches)
            schema = parquet.schema_arrow
            if self.columns is not None:
                schema = pa.schema([schema.field(column) for column in self.columns])
            return schema.empty_table()

    def _row_groups(self, parquet: pq.ParquetFile, partition: str, name: str,
                    match: re.Match[str] | None) -> list[int] | None:
        if match is None:
            return None
        index = int(match["index"])
        if index >= parquet.num_row_groups:
            display = self._location().display(name)
            raise SourceError(
                f"invalid partition {partition!r}: {display} has {parquet.num_row_groups} row groups: "
                "use a key that partitions() returns", path=display,
            )
        return [index]

    def _open(self, name: str) -> pq.ParquetFile:
        """Open a Parquet file and check the selected columns. The caller closes it."""
        location = self._location()
        location.check_file(name)
        display = location.display(name)
        try:
            parquet = pq.ParquetFile(location.path(name), filesystem=location.filesystem)
        except pa.ArrowInvalid as err:
            raise SourceError(f"{display} is not a Parquet file: {err}", path=display) from err
        if self.columns is not None:
            available = parquet.schema_arrow.names
            missing = [column for column in self.columns if column not in available]
            if missing:
                parquet.close()
                raise SourceError(
                    f"{display} has no column {', '.join(map(repr, missing))}: its columns are {available}. "
                    "Fix columns=", path=display,
                )
        return parquet
