import sys

from pear_bench.cli import main

sys.exit(main())
