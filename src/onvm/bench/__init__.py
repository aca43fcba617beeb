"""Benchmark scenarios: what ``onvm bench`` runs, ``benchmarks/run.py`` repeats and
``benchmarks/RESULTS.md`` reports.

Each scenario is described once, by a :class:`Scenario`: its name, what runs,
the figure it is judged by (``key``, a field of its result), the target that
figure should reach, how a result is shown in one line, the options it takes
and the function that runs it.  ``onvm bench`` builds its command line from
these descriptions (``onvm bench --list``, ``onvm bench NAME --help``);
``benchmarks/run.py`` runs the ones marked ``default``, keeps the median of
``key`` over ``--repeat`` runs and writes ``results.json`` and RESULTS.md from
``show`` and ``target``.  Nothing about a scenario is written anywhere else.

Adding a scenario
-----------------
1. Write a module in this package (``onvm/bench/overload.py``) with the function
   that runs it: ``run(seconds: float, verbose: bool, **options) -> dict``.  It
   starts what it needs under unique names (``onvm._deploy.Deployment`` starts a
   manager and NFs as child processes and always stops them), measures over
   ``seconds`` and returns flat JSON-able figures, ``key`` among them.  Keep the
   module's top-level imports light: ``onvm bench`` imports every module here.
2. In the same module, describe it::

       SCENARIOS = [
           Scenario("overload", "gen at rising rates through five simple_forward NFs",
                    key="mpps", target=">= 3 Mpps at every offered rate", run=run,
                    show=lambda r: f"{r['mpps']:.2f} Mpps at {r['offered_mpps']} offered",
                    options=(Option("--nfs", 5, "NFs in the chain"),)),
       ]

   Every module of the package that defines ``SCENARIOS`` is found on its own;
   no list elsewhere needs an edit.  A variant with fixed options is another
   description sharing ``run``, with ``preset={"nfs": 3}``; ``default=False``
   keeps a scenario out of ``benchmarks/run.py``'s default set (it still runs
   when named).
3. Run it: ``onvm bench overload --seconds 2 --json``; add its figures to
   RESULTS.md with ``python benchmarks/run.py overload``.
"""

from __future__ import annotations

from onvm.bench._scenario import Option, Scenario, get, scenarios

__all__ = ["Option", "Scenario", "get", "scenarios"]
