"""`python -m urdar [flags]`: see urdar/app/main.py."""
import sys

from urdar.app.main import main

sys.exit(main())
