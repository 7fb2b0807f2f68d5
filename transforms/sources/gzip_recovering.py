"""A gzip reader that gives back every byte decompressed before a corruption.

gzip.GzipFile decompresses in 128 KiB steps and loses a step's output when zlib fails inside it,
so the intact records just before a corrupt spot would vanish with it. This reader feeds zlib
16 KiB at a time and, when a piece fails, replays it byte by byte from a copy of the decompressor
taken before it: the output stops exactly at the corrupt byte. The error is raised only when a
read needs bytes beyond that point, so TFRecord framing above it reports the right offset.
Memory stays bounded: a 16 KiB piece decompresses to at most about 16 MiB (deflate's ratio is at
most 1032:1), and only what a read asks for is buffered.
"""

import zlib
from typing import BinaryIO, Optional

_PIECE = 16 * 1024
_GZIP = 16 + zlib.MAX_WBITS


class GzipRecoveringReader:
    def __init__(self, raw: BinaryIO):
        self._raw = raw
        self._decompressor = zlib.decompressobj(_GZIP)
        self._in_member = False  # bytes of the current gzip member have been fed
        self._buffer = bytearray()
        self._pos = 0  # bytes of _buffer already read
        self._error: Optional[Exception] = None
        self._done = False

    def _fill(self) -> None:
        """Decompresses the next piece into the buffer; sets _done or _error at the end."""
        piece = self._raw.read(_PIECE)
        if not piece:
            if self._in_member:
                self._error = EOFError("compressed file ended before the end-of-stream marker")
            self._done = True
            return
        while piece:
            self._in_member = True
            saved = self._decompressor.copy()
            try:
                self._buffer += self._decompressor.decompress(piece)
            except zlib.error as e:
                self._buffer += self._replay(saved, piece)
                self._error, self._done = e, True
                return
            if not self._decompressor.eof:
                return
            piece = self._decompressor.unused_data  # a further gzip member may follow
            self._decompressor = zlib.decompressobj(_GZIP)
            self._in_member = False

    @staticmethod
    def _replay(decompressor, piece: bytes) -> bytes:
        out = bytearray()
        for i in range(len(piece)):
            try:
                out += decompressor.decompress(piece[i:i + 1])
            except zlib.error:
                break
        return bytes(out)

    def read(self, size: int) -> bytes:
        """Exactly size bytes, fewer only at a clean end; raises the stream's error if it cut
        this read short."""
        while len(self._buffer) - self._pos < size and not self._done:
            self._fill()
        if len(self._buffer) - self._pos < size and self._error is not None:
            raise self._error
        with memoryview(self._buffer) as view:  # one copy, not two
            data = bytes(view[self._pos:self._pos + size])
        self._pos += len(data)
        if self._pos > (1 << 20) and 2 * self._pos > len(self._buffer):  # drop what was read, now and then
            del self._buffer[:self._pos]
            self._pos = 0
        return data

    def read_some(self, size: int) -> bytes:
        """Up to size bytes: fewer at the end of the stream or just before a corrupt spot; raises
        the stream's error only when no byte is left before it."""
        while len(self._buffer) - self._pos < size and not self._done:
            self._fill()
        available = len(self._buffer) - self._pos
        if not available and self._error is not None:
            raise self._error
        return self.read(min(size, available))

    def close(self) -> None:
        self._buffer = bytearray()
        self._pos = 0
