"""Files for the attachment tests, made here rather than stored: images (with EXIF), a PDF with
a text layer, a PNG whose header claims a huge size, PDFs of a few KB that cost pypdf minutes."""

from __future__ import annotations

import io
import struct
import zlib

from PIL import Image


def jpeg_with_exif(width: int, height: int) -> bytes:
    """A JPEG photo with EXIF the upload must strip: a camera make and GPS coordinates."""
    image = Image.new("RGB", (width, height), (200, 80, 40))
    for x in range(0, width, 16):  # some detail, so that resampling has work to do
        image.putpixel((x, x * height // width), (0, 0, 255))
    exif = Image.Exif()
    exif[0x010F] = "SlipstreamCam"  # Make
    exif[0x8825] = {1: "N", 2: (51.0, 30.0, 0.0)}  # GPSInfo
    out = io.BytesIO()
    image.save(out, "JPEG", exif=exif, quality=95)
    return out.getvalue()


def png(width: int, height: int, color: tuple[int, int, int] = (10, 120, 200)) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (width, height), color).save(out, "PNG")
    return out.getvalue()


def png_claiming(width: int, height: int) -> bytes:
    """A small PNG whose header says ``width`` by ``height``: a decompression bomb's header."""
    data = bytearray(png(8, 8))
    # IHDR is the first chunk: 8-byte signature, length, "IHDR", width, height, …, CRC.
    data[16:24] = struct.pack(">II", width, height)
    crc = zlib.crc32(bytes(data[12:29]))
    data[29:33] = struct.pack(">I", crc)
    return bytes(data)


def pdf_with_text(lines: list[str]) -> bytes:
    """A one-page PDF whose text layer holds ``lines`` (ASCII), built by hand: PDF 1.4 with the
    standard Helvetica font, so that no font file is needed."""
    stream_lines = ["BT", "/F1 12 Tf", "72 720 Td", "14 TL"]
    for line in lines:
        escaped = line.replace("\\", "\\\\").replace("(", "\\(").replace(")", "\\)")
        stream_lines.append(f"({escaped}) Tj T*")
    stream_lines.append("ET")
    content = "\n".join(stream_lines).encode("ascii")
    return _pdf(
        [
            b"<< /Type /Catalog /Pages 2 0 R >>",
            b"<< /Type /Pages /Kids [3 0 R] /Count 1 >>",
            b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] "
            b"/Resources << /Font << /F1 5 0 R >> >> /Contents 4 0 R >>",
            b"<< /Length %d >>\nstream\n" % len(content) + content + b"\nendstream",
            HELVETICA,
        ]
    )


HELVETICA = b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica >>"


def pdf_inflating_to(size: int) -> bytes:
    """A one-page PDF of a few KB whose content stream inflates (FlateDecode) to ``size`` bytes
    of ``(x) Tj`` text operators: the upload of issue 33, finding 4 (5 MB in 8 KB)."""
    operators = b"BT /F1 12 Tf 72 720 Td " + b"(x) Tj " * (size // 7) + b"ET"
    return _pdf(
        [
            b"<< /Type /Catalog /Pages 2 0 R >>",
            b"<< /Type /Pages /Kids [3 0 R] /Count 1 >>",
            b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] "
            b"/Resources << /Font << /F1 5 0 R >> >> /Contents 4 0 R >>",
            _deflated(b"", operators),
            HELVETICA,
        ]
    )


def pdf_endless(
    pages: int = 50, calls: int = 900, operators: int = 20_000, *, preface: str = ""
) -> bytes:
    """A PDF of a few KB that no reader finishes: each of ``pages`` pages draws one form
    XObject ``calls`` times, and the form holds ``operators`` no-op ``cm`` operators, so
    extracting the text walks ``pages * calls * operators`` operators (900 million by default),
    each within pypdf's limits (its stream parsed once, under 250,000 tokens; under 1,000
    forms a page). ``preface`` (ASCII): the text of an ordinary first page before them."""
    font = 5 + pages
    numbers = [5 + n for n in range(pages)]
    if preface:
        numbers.insert(0, font + 2)
    kids = b" ".join(b"%d 0 R" % n for n in numbers)
    form = _deflated(
        b"/Type /XObject /Subtype /Form /BBox [0 0 612 792] /Resources << /Font << /F1 %d 0 R >> >>"
        % font,
        # An empty string shown: pypdf reads only streams with a text operator in them.
        b"BT /F1 12 Tf " + b"1 0 0 1 0 0 cm " * operators + b"() Tj ET",
    )
    objects = [
        b"<< /Type /Catalog /Pages 2 0 R >>",
        b"<< /Type /Pages /Kids [%s] /Count %d >>" % (kids, len(numbers)),
        form,
        _deflated(b"", b"/X0 Do " * calls),
    ]
    objects += [
        b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] "
        b"/Resources << /XObject << /X0 3 0 R >> >> /Contents 4 0 R >>"
    ] * pages
    objects.append(HELVETICA)
    if preface:
        shown = b"BT /F1 12 Tf 72 720 Td (%s) Tj ET" % preface.encode("ascii")
        objects += [
            b"<< /Length %d >>\nstream\n" % len(shown) + shown + b"\nendstream",
            b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] "
            b"/Resources << /Font << /F1 %d 0 R >> >> /Contents %d 0 R >>" % (font, font + 1),
        ]
    return _pdf(objects)


def _deflated(entries: bytes, data: bytes) -> bytes:
    packed = zlib.compress(data, 9)
    return (
        b"<< %s /Length %d /Filter /FlateDecode >>\nstream\n" % (entries, len(packed))
        + packed
        + b"\nendstream"
    )


def _pdf(objects: list[bytes]) -> bytes:
    """A PDF 1.4 file of ``objects`` (numbered from 1, the first the catalog) and its xref."""
    out = io.BytesIO()
    out.write(b"%PDF-1.4\n")
    offsets = []
    for number, body in enumerate(objects, start=1):
        offsets.append(out.tell())
        out.write(b"%d 0 obj\n" % number + body + b"\nendobj\n")
    xref = out.tell()
    out.write(b"xref\n0 %d\n0000000000 65535 f \n" % (len(objects) + 1))
    for offset in offsets:
        out.write(b"%010d 00000 n \n" % offset)
    out.write(
        b"trailer\n<< /Size %d /Root 1 0 R >>\nstartxref\n%d\n%%%%EOF\n" % (len(objects) + 1, xref)
    )
    return out.getvalue()
