"""``vitmsn bench``: latency and throughput per backend, precision and batch size, against PyTorch.

    from vitmsn.bench.suite import BenchOptions, run_bench
    from vitmsn.bench.report import markdown
    report = run_bench("artifacts/demo", BenchOptions(batch_sizes=(1, 8)))
    print(markdown(report))

Modules: ``suite`` (the run), ``backends`` (PyTorch, ONNX Runtime, TensorRT rows), ``timing``
(interleaved rounds, percentiles), ``tensorrt_timing`` (CUDA events and graphs; unverified),
``correctness`` (the spot check), ``machine`` (CPU/GPU/versions/GEMM ceiling), ``inputs``
(synthetic JPEGs), ``report`` (Markdown). Importing this package imports nothing heavy.
"""
