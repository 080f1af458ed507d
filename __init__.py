"""rys: find and build reasoning circuits in LLMs by layer duplication (RYS), over llama.cpp.

Everything installs under this one name; the modules are the repository's top-level files:

* ``rys.layer_path``: the layer-path language (parse, format, constructors);
* ``rys.gguf_surgery``: read a GGUF once, write it following a layer path; rys-surgery, rys-path;
* ``rys.llama_server``: find, start, health-check and stop one llama-server; the demo model;
* ``rys.engine``: serve a path (physical rewrite, virtual switch in place, or a recorded replay);
* ``rys.sweep_record``: the results record ``rys.sweep/1``, its files, noise floor, significance;
* ``rys.plans``: plans, successive halving, the adaptive search (Optuna) and its statistics;
* ``rys.sweep``: the runner and the rys-sweep command;
* ``rys.probes``: probe data, scorers, the HTTP runner; rys-probes;
* ``rys.compare_eval``: lm-eval against a circuit, comparing results; rys-eval;
* ``rys.visualize``: tables, heatmaps, the HTML report; rys-plot;
* ``rys.cli``: the exit protocol every command shares.

Importing ``rys`` imports none of them (commands start fast); import the module you need.
"""

from __future__ import annotations
