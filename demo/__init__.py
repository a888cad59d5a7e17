"""Demo-only code: tiny random pipelines (`tiny.py`), the demo's models and worker (`stack.py`), and the
process helpers the demo, the benchmarks and the tests share (`processes.py`). Imports `backends` only."""
