"""Scoring and filtering whole image datasets: ``creward score-dataset``.

Inputs (``inputs``) are folders or globs of images, Parquet/CSV lists of paths, and WebDataset
tar shards; they are cut into *parts* (a shard, or up to ``part_size`` listed files), and every
finished part becomes one Parquet file of the output folder (``output``), written atomically and
recorded in a manifest, so a rerun resumes. Two engines score the parts with the same
preprocessing and the same batched model code as ``creward score``
(``creward.models.file_scoring``): ``local_engine`` (this process, no Ray) and ``ray_engine``
(Ray Data: decoding in CPU tasks, CREward in an actor pool). ``filtering`` turns scores into a
keep/drop decision per row and ``kept`` writes what was kept; with a reference set,
``calibrated`` adds percentile and win-probability columns. ``job`` ties these together.

Nothing here imports Ray or pyarrow at import time.
"""
