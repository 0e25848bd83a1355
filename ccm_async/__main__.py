"""``python -m ccm_async``: the ``ccm-async`` command (needs the ``cli`` extra)."""

from ccm_async._command import main

main()
