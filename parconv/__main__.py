import sys

from parconv.cli import main

sys.exit(main())
