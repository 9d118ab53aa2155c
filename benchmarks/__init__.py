"""ozbulk's benchmarks: ``python -m benchmarks`` (``--help`` for options).

Every figure is measured against local servers in separate processes, each comparison runs both
sides alternately in the same run, and results land in ``bench_results/`` (JSON, markdown, PNG).

=============  ===================================================================================
``overhead``   ``ozbulk delete`` vs a hand-written aiohttp loop (``hand_loop.py``), same server
``latency``    50 ms server latency, 64 in flight: achieved ÷ ideal requests/s
``rate``       a strict 50 requests/s server: ``--rate 50`` and ``--rate 100``
``scale``      numbers/s and peak RSS for 100k, 1M, 10M rows
``producer``   read + normalize + dedupe + chunk, no network, one core
``resume``     start → first request when resuming a 10M-row run stopped at 50 %
``nginx``      ozbulk ÷ hand loop against nginx and the Python server, 200k and 2M rows; start-up
=============  ===================================================================================

Modules: ``servers.py`` (the local servers), ``nginx.py`` (nginx as a server, where installed),
``hand_loop.py`` (the baseline), ``data.py`` (input generation), ``producer_run.py`` (one producer
measurement), ``harness.py`` (machine, spreads, measured processes), ``suite.py`` (the
benchmarks), ``output.py`` (JSON, markdown, plots).
"""
