import sys

from musicgen.cli import main

sys.exit(main())
