"""``python -m customnn``: the same as the ``customnn`` command."""

import os
import sys

from customnn.commands.cli import main

if __name__ == "__main__":
    code = main()
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        # A process of a torchrun job leaves without the interpreter's shutdown: everything is
        # written and closed by now, and gloo's threads can otherwise free a collective's work
        # while the interpreter is torn down, which aborts the process (SIGABRT) after a run
        # that ended well.
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code if isinstance(code, int) else 1)
    raise SystemExit(code)
