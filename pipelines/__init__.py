"""Assembly of the qdedup Beam pipeline, its options and its command line."""
import os as _os
import sys as _sys

from transforms import logs as _logs

if "--verbose" in _sys.argv[1:]:  # before Beam and transformers are imported: they speak on import
    _os.environ[_logs.VERBOSE] = "1"
_logs.quiet_libraries()
