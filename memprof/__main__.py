from memprof.cli import run

# Guarded: measurement processes (multiprocessing fork server) import the parent's __main__.
if __name__ == "__main__":
    run()
