"""`python -m urdar [flags]`: see urdar/net/main.py."""
import sys

from urdar.net.main import main

sys.exit(main())
