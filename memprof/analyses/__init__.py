"""The analyses: one module per question memprof answers, each a library function returning a plain
result (memprof.results). `memprof.footprint`, `memprof.plan`, ... are these functions; the modules
live here so that the package's names and its modules' names never shadow each other."""
