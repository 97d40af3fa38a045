import os
import sys

from flatness.cli import main
from flatness.cli.commands import INTERRUPTED

code = main()
if code == INTERRUPTED:
    # the same Ctrl-C can kill a chapter's kernel first, and the executor's pending task then
    # reports "DeadKernelError: Kernel died" as the interpreter exits, after the line that says
    # the command was interrupted, which is the whole story: that noise goes nowhere
    sys.stderr.flush()
    os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stderr.fileno())
sys.exit(code)
