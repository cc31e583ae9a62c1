import sys

from appliance.cli.main import main

if __name__ == "__main__":   # python -m appliance; not on import (pytest --doctest-modules imports it)
    sys.exit(main())
