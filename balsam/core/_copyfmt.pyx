# cython: language_level=3, boundscheck=False, wraparound=False
"""Cython kernel of balsam.core.copyfmt: COPY text encoding, identical to encode_rows_py."""


cdef inline str _escape(str s):
    if ("\\" not in s and "\t" not in s and "\n" not in s and "\r" not in s):
        return s
    return (s.replace("\\", "\\\\").replace("\t", "\\t")
             .replace("\n", "\\n").replace("\r", "\\r"))


cdef inline str _encode(object v):
    if v is None:
        return "\\N"
    if v is True:
        return "t"
    if v is False:
        return "f"
    if type(v) is str:
        return _escape(<str>v)
    return _escape(str(v))


def encode_rows(list rows):
    """Encode a list of row tuples to COPY text, one line per row."""
    cdef list out = []
    cdef list fields
    cdef object row, v
    for row in rows:
        fields = [_encode(v) for v in row]
        out.append("\t".join(fields))
        out.append("\n")
    return "".join(out)
