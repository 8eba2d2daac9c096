# Record format v1 (docs/record-format.md): the numbers both native modules share. The
# encoder (producer/_codec.pyx) and the transcoder (agent/transcode/_transcode.pyx)
# cimport them; the Python names in emp_fastbuf.records carry the same values, and
# tests/records/test_record_format_doc.py checks this file, those names and the doc agree.

cdef enum:
    FORMAT_VERSION = 1

    # kind (byte 1); RESOURCE is the lane's resource blob, never a ring record
    K_LOG = 1
    K_EVENT = 2
    K_SPAN = 3
    K_METRIC = 4
    K_RESOURCE = 5

    # flags (byte 2)
    F_HAS_TRACE = 1
    F_HAS_LIMITS = 2
    F_HAS_TRACE_FLAGS = 4
    F_KNOWN = 7

    # attribute value tags
    T_NONE = 0
    T_STR = 1
    T_INT = 2
    T_DOUBLE = 3
    T_BOOL = 4
    T_BYTES = 5
    T_ARRAY = 6

    # metric instruments
    I_COUNTER = 1
    I_UPDOWNCOUNTER = 2
    I_GAUGE = 3
    I_HISTOGRAM = 4

    # severity numbers (OpenTelemetry numbering; byte 0 of a LOG body)
    SEVERITY_TRACE = 1
    SEVERITY_DEBUG = 5
    SEVERITY_INFO = 9
    SEVERITY_WARN = 13
    SEVERITY_ERROR = 17
    SEVERITY_FATAL = 21

    # span status codes (OTLP numbering)
    STATUS_UNSET = 0
    STATUS_OK = 1
    STATUS_ERROR = 2

    # span kinds (OTLP numbering)
    SPAN_KIND_UNSPECIFIED = 0
    SPAN_KIND_INTERNAL = 1
    SPAN_KIND_SERVER = 2
    SPAN_KIND_CLIENT = 3
    SPAN_KIND_PRODUCER = 4
    SPAN_KIND_CONSUMER = 5

    # what the format itself bounds (the decoder enforces these)
    MAX_SEVERITY = 24
    MAX_STATUS_CODE = 2
    MAX_SPAN_KIND = 5
    MAX_HISTOGRAM_VALUES = 1048576
