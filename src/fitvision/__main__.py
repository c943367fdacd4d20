import sys

from fitvision.cli import main

sys.exit(main())
