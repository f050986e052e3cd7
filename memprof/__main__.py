import sys

from memprof.cli import main

# Guarded: measurement processes (multiprocessing fork server) import the parent's __main__.
if __name__ == "__main__":
    sys.exit(main())
