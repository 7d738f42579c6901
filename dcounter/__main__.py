import sys

from dcounter.cli import main

sys.exit(main(sys.argv[1:]))
