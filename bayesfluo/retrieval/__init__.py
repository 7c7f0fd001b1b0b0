"""Whole-scene retrieval with a trained guide: posterior maps.

Modules, lower first: :mod:`~bayesfluo.retrieval.result` (the result's variables, flags
and attributes), :mod:`~bayesfluo.retrieval.chunk` (the plan that cuts a scene into
chunks of patch rows, and the compiled per-chunk function),
:mod:`~bayesfluo.retrieval.streaming` (chunk by chunk to disk),
:mod:`~bayesfluo.retrieval.executors` (chunks on a dask cluster),
:mod:`~bayesfluo.retrieval.api` (:func:`~bayesfluo.retrieval.api.retrieve`,
:func:`~bayesfluo.retrieval.api.retrieve_file`), :mod:`~bayesfluo.retrieval.batch` (many
files).
"""
