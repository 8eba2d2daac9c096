"""Bulk transcoding: raw records (docs/record-format.md) -> serialized OTLP protobuf
``ExportLogsServiceRequest`` / ``ExportTraceServiceRequest``, without decoding to Python
objects.

The output means exactly what ``agent.otlp.build_logs_request`` /
``build_traces_request`` build from ``reference``-decoded records (tests/agent/test_transcode.py
parses both and compares): same resource grouping (equal attribute sets share one
resource, first-seen order), one scope per (scope_name, scope_version), context
attributes first with ``job_id`` renamed ``emp.job_id`` and the record's own attributes
winning on a conflict.

Input is untrusted: every read is bounds-checked and the accept/reject rules are those of
``reference.decode_record``. A malformed record is skipped and counted; a malformed
resource blob becomes ``{"emp.resource_corrupt": True}``, like ``agent.batch.resource_of``.

The protobuf wire format is written by hand into growable buffers. A nested message's
length is not known before its content is written, so two bytes are reserved for it and
the content is moved when the length needs one or three-plus bytes (``begin``/``finish``).

``store_rows`` reuses the same parsing to build the embedded store's row tuples (what
``store.store_row`` builds from a ``reference``-decoded record), attribute JSON included,
and ``metric_points`` to give the agent's metrics aggregation its METRIC records.

With a ``Redactor`` (``redactor=``), secrets are replaced on the way: attribute values of
secret-like keys, URL credentials, Authorization values in log bodies (_redact.pxi).

One extension module, its source split by topic into include files (in this order, each
using only those before it): _protobuf.pxi (the output buffer and protobuf's wire
format), _redact.pxi (the redaction rules), _parse.pxi (the parser of untrusted records),
_otlp.pxi (the logs and traces requests), _metrics.pxi (the METRIC parser and the metric
points), _rows.pxi (the store's rows; its float formatter is floatfmt.h).
"""

from cpython.bytes cimport (
    PyBytes_AS_STRING,
    PyBytes_Check,
    PyBytes_FromStringAndSize,
    PyBytes_GET_SIZE,
)
from cpython.buffer cimport PyBUF_SIMPLE, PyBuffer_Release, PyObject_GetBuffer
from cpython.conversion cimport Py_DTSF_ADD_DOT_0
from cpython.exc cimport PyErr_Clear
from cpython.mem cimport PyMem_Free
from cpython.unicode cimport (
    Py_UCS1,
    PyUnicode_1BYTE_DATA,
    PyUnicode_AsUTF8AndSize,
    PyUnicode_DecodeUTF8,
    PyUnicode_New,
)
from libc.math cimport isfinite, signbit
from libc.stdint cimport int32_t, int64_t, uint8_t, uint16_t, uint32_t, uint64_t
from libc.stdlib cimport calloc, free, realloc
from libc.string cimport memchr, memcmp, memcpy, memmove, memset, strlen

from emp_fastbuf.records._format cimport (
    F_HAS_LIMITS,
    F_HAS_TRACE,
    F_HAS_TRACE_FLAGS,
    F_KNOWN,
    FORMAT_VERSION,
    I_COUNTER,
    I_HISTOGRAM,
    K_EVENT,
    K_LOG,
    K_METRIC,
    K_RESOURCE,
    K_SPAN,
    MAX_HISTOGRAM_VALUES,
    MAX_SEVERITY,
    MAX_SPAN_KIND,
    MAX_STATUS_CODE,
    T_ARRAY,
    T_BOOL,
    T_BYTES,
    T_DOUBLE,
    T_INT,
    T_NONE,
    T_STR,
)

from emp_fastbuf.records import value_sum as _value_sum

include "_protobuf.pxi"
include "_redact.pxi"
include "_parse.pxi"
include "_otlp.pxi"
include "_metrics.pxi"
include "_rows.pxi"
