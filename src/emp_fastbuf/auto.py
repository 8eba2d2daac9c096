"""``import emp_fastbuf.auto``: attach to the ring from the environment now (and, unless
``EMP_FASTBUF_AGENT=external``, make sure a drainer runs), instead of on the first call."""

from emp_fastbuf.producer import api

api.auto_attach()
